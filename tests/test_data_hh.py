"""The HH-RLHF converter: transcripts parsed into turns, records into TRL's conversational
preference format, on hand-written edge cases and on a real sample read from ../shared.

The real sample is red-team data under its own license, so it is never copied into the repo:
the tests that need it read it in place and are skipped where it is absent.
"""

from collections import Counter
from pathlib import Path

import pytest

from rlhf_course.data import to_preference_dataset, validate_conversation
from rlhf_course.hub import convert_hh, load_hub_dataset, parse_hh_transcript
from rlhf_course.jsonl import DataFormatError, read_jsonl, write_jsonl

HH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf"
HH_SAMPLE = HH_DIR / "harmless-base-test-sample.jsonl"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def transcript(*turns):
    """HH's string form from (label, text) pairs, written the way the dataset writes it."""
    return "".join(f"\n\n{label}: {text}" for label, text in turns)


@pytest.fixture(scope="module")
def sample():
    if not HH_SAMPLE.is_file():
        pytest.skip(f"HH-RLHF sample not found at {HH_SAMPLE}")
    return read_jsonl(HH_SAMPLE)


@pytest.fixture(scope="module")
def converted(sample):
    skipped = Counter()
    out = [convert_hh(r, skipped) for r in sample]
    return out, skipped


# --- parse_hh_transcript on hand-written transcripts ---


def test_parse_multi_turn():
    text = transcript(("Human", "Is the river cold?"), ("Assistant", "Yes, in spring."),
                      ("Human", "And in August?"), ("Assistant", "Mild enough to swim."))
    assert parse_hh_transcript(text) == [user("Is the river cold?"), assistant("Yes, in spring."),
                                         user("And in August?"), assistant("Mild enough to swim.")]


def test_parse_odd_whitespace_is_trimmed_but_inner_spacing_kept():
    text = "  \n\nHuman:   Pack  two  tents  \n\n\nAssistant:Fine.   \n \n  Human: ok\n\n\n\n"
    assert parse_hh_transcript(text) == [user("Pack  two  tents"), assistant("Fine."), user("ok")]
    # Windows line ends mark the same boundaries.
    assert parse_hh_transcript("\r\n\r\nHuman: a\r\n\r\nAssistant: b\r\n") == [user("a"), assistant("b")]


def test_parse_blank_lines_inside_a_turn_stay_in_that_turn():
    text = transcript(("Human", "Two things.\n\nFirst, the map.\n\nSecond, the tide table."),
                      ("Assistant", "Here is the map.\n\n- north\n- south"))
    assert parse_hh_transcript(text) == [
        user("Two things.\n\nFirst, the map.\n\nSecond, the tide table."),
        assistant("Here is the map.\n\n- north\n- south")]


def test_parse_without_the_leading_blank_line():
    assert parse_hh_transcript("Human: hello\n\nAssistant: hi") == [user("hello"), assistant("hi")]
    assert parse_hh_transcript("\nHuman: hello\n\nAssistant: hi") == [user("hello"), assistant("hi")]


def test_labels_count_only_at_a_turn_boundary():
    text = ("\n\nHuman: In the script, a line reads Human: where are we? Then Assistant: nowhere."
            "\n\nAssistant: So Human: and Assistant: are only speaker tags there.\nHuman: not a turn"
            " either, after a single line break.")
    assert parse_hh_transcript(text) == [
        user("In the script, a line reads Human: where are we? Then Assistant: nowhere."),
        assistant("So Human: and Assistant: are only speaker tags there.\nHuman: not a turn"
                  " either, after a single line break.")]
    # Lower case is not a label either.
    assert len(parse_hh_transcript("\n\nHuman: a\n\nhuman: b\n\nAssistant: c")) == 2


def test_parse_keeps_an_empty_last_reply():
    assert parse_hh_transcript("\n\nHuman: Anyone there?\n\nAssistant:") == [
        user("Anyone there?"), assistant("")]
    assert parse_hh_transcript("\n\nHuman: Anyone there?\n\nAssistant:  \n") == [
        user("Anyone there?"), assistant("")]


@pytest.mark.parametrize("text, message", [
    ("\n\nAssistant: Welcome back.\n\nHuman: thanks",
     r"does not start with a Human turn.*It starts '\\n\\nAssistant: Welcome back"),
    ("A preamble line.\n\nHuman: hi\n\nAssistant: hello",
     r"does not start with a Human turn.*It starts 'A preamble line"),
    ("just some text, no speakers", r"has no turns.*It starts 'just some text, no speakers'"),
    ("", r"has no turns.*It starts ''"),
])
def test_parse_rejects_transcripts_not_starting_with_a_human_turn(text, message):
    with pytest.raises(DataFormatError, match=message):
        parse_hh_transcript(text)


def test_parse_quotes_only_the_start_of_a_long_text():
    with pytest.raises(DataFormatError) as info:
        parse_hh_transcript("Assistant: " + "x" * 500)
    assert "x" * 49 + "'..." in str(info.value) and "x" * 100 not in str(info.value)


# --- convert_hh on hand-written records ---


def test_convert_multi_turn_record():
    prompt = [("Human", "Is the river cold?"), ("Assistant", "Yes, in spring."),
              ("Human", "And in August?")]
    record = {"chosen": transcript(*prompt, ("Assistant", "Mild enough to swim.")),
              "rejected": transcript(*prompt, ("Assistant", "Rivers are water."))}
    assert convert_hh(record) == {
        "prompt": [user("Is the river cold?"), assistant("Yes, in spring."), user("And in August?")],
        "chosen": [assistant("Mild enough to swim.")],
        "rejected": [assistant("Rivers are water.")]}


def test_convert_ignores_padding_differences_between_the_two_transcripts():
    record = {"chosen": "Human: Name a colour.\n\nAssistant: Teal.",
              "rejected": "\n\nHuman:  Name a colour.  \n\n\nAssistant: I would rather not.\n\n"}
    assert convert_hh(record) == {"prompt": [user("Name a colour.")], "chosen": [assistant("Teal.")],
                                  "rejected": [assistant("I would rather not.")]}


@pytest.mark.parametrize("chosen, rejected, reason", [
    (transcript(("Human", "Hi"), ("Assistant", "")), transcript(("Human", "Hi"), ("Assistant", "Hello!")),
     "empty reply"),
    (transcript(("Human", "Hi"), ("Assistant", "Hello!")), "\n\nHuman: Hi\n\nAssistant:  \n\n",
     "empty reply"),
    (transcript(("Human", "Hi"), ("Assistant", "Hello!")),
     transcript(("Human", "Hi"), ("Assistant", "Hello!  \n")), "chosen equals rejected"),
    (transcript(("Human", "Hi"), ("Assistant", "Hello!")),
     transcript(("Human", "Hey"), ("Assistant", "Go away.")), "prompts differ"),
    (transcript(("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "Bye")),
     transcript(("Human", "Hi"), ("Assistant", "Hey.")), "final turn is not the assistant's"),
    (transcript(("Human", "Hi"), ("Human", "Anyone?"), ("Assistant", "Yes, hello.")),
     transcript(("Human", "Hi"), ("Human", "Anyone?"), ("Assistant", "No.")), "roles do not alternate"),
    (transcript(("Human", "Hi"), ("Assistant", ""), ("Human", "Hello?"), ("Assistant", "Sorry, yes.")),
     transcript(("Human", "Hi"), ("Assistant", ""), ("Human", "Hello?"), ("Assistant", "What?")),
     "empty content"),
])
def test_convert_skips_unusable_pairs_with_the_reason(chosen, rejected, reason):
    skipped = Counter()
    assert convert_hh({"chosen": chosen, "rejected": rejected}, skipped) is None
    assert skipped == {reason: 1}
    assert convert_hh({"chosen": chosen, "rejected": rejected}) is None  # counting is optional


@pytest.mark.parametrize("record, message", [
    ({"chosen": "\n\nHuman: a\n\nAssistant: b"}, r"no 'rejected' field \(found \['chosen'\]\)"),
    ({"rejected": "\n\nHuman: a\n\nAssistant: b"}, r"no 'chosen' field"),
    ({"chosen": [user("a"), assistant("b")], "rejected": "\n\nHuman: a\n\nAssistant: c"},
     r"field 'chosen' is a list, not a string"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": None}, r"field 'rejected' is a NoneType"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nAssistant: c"},
     r"field 'rejected': HH transcript does not start with a Human turn"),
])
def test_convert_errors_name_the_field(record, message):
    with pytest.raises(DataFormatError, match=message):
        convert_hh(record)


# --- the real sample (read from ../shared, never copied) ---


def test_real_sample_converts_to_valid_preference_records(sample, converted):
    out, skipped = converted
    kept = [r for r in out if r is not None]
    assert len(sample) == 300
    assert len(kept) + sum(skipped.values()) == 300
    # The sample is fixed (seed 7); one record's chosen transcript has an extra assistant turn
    # that the rejected one lacks, so its two prompts differ.
    assert skipped == {"prompts differ": 1}
    for r in kept:
        assert set(r) == {"prompt", "chosen", "rejected"}
        assert validate_conversation(r["prompt"], ends_with="user") == r["prompt"]
        for side in ("chosen", "rejected"):
            assert len(r[side]) == 1 and r[side][0]["role"] == "assistant"
            assert r[side][0]["content"] and r[side][0]["content"] == r[side][0]["content"].strip()
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]


def test_real_sample_turns_match_a_hand_split_of_the_raw_text(sample, converted):
    out, _ = converted
    pairs = [(raw, r) for raw, r in zip(sample, out, strict=True) if r is not None]
    multi = [(raw, r) for raw, r in pairs if len(r["prompt"]) >= 3]
    assert len(multi) >= 100  # most of the sample is multi-turn
    for raw, r in pairs:
        text = raw["chosen"]
        first_user = text[text.index("Human:") + len("Human:"):text.index("\n\nAssistant:")]
        assert r["prompt"][0]["content"] == first_user.strip()
        last = text.rindex("\n\nAssistant:")
        assert r["chosen"][0]["content"] == text[last + len("\n\nAssistant:"):].strip()
        rej = raw["rejected"]
        assert r["rejected"][0]["content"] == rej[rej.rindex("\n\nAssistant:") + len("\n\nAssistant:"):].strip()
        assert len(r["prompt"]) + 1 == text.count("\n\nHuman:") + text.count("\n\nAssistant:")
    # One multi-turn record checked turn by turn against a plain split on the boundaries.
    raw, r = multi[0]
    pieces = raw["chosen"].split("\n\n")
    turns, current = [], None
    for piece in pieces:
        if piece.startswith(("Human:", "Assistant:")):
            label, _, rest = piece.partition(":")
            current = ["user" if label == "Human" else "assistant", rest]
            turns.append(current)
        elif current is not None:
            current[1] += "\n\n" + piece
    expected = [{"role": role, "content": content.strip()} for role, content in turns]
    assert r["prompt"] + r["chosen"] == expected


def test_real_sample_loads_into_a_dataset(sample, converted, tmp_path):
    import datasets

    out, _ = converted
    kept = [r for r in out if r is not None]
    ds = datasets.Dataset.from_list(kept)
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == len(kept)
    assert ds[0] == kept[0]
    # The loader on the file in place: kind inferred from the string columns, same records.
    skipped = Counter()
    loaded = load_hub_dataset(HH_SAMPLE, skipped=skipped, cache_dir=tmp_path / "cache")
    assert loaded.to_list() == kept and skipped == {"prompts differ": 1}


# --- load_hub_dataset on a small local file in the HH schema ---


def hh_rows():
    shared = [("Human", "Which bird sings at dawn?"), ("Assistant", "The blackbird, often."),
              ("Human", "And at dusk?")]
    return [
        {"chosen": transcript(*shared, ("Assistant", "The robin keeps singing late.")),
         "rejected": transcript(*shared, ("Assistant", "Birds sleep."))},
        {"chosen": "Human: Say hi.\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi.\n\nAssistant: No."},
        {"chosen": transcript(("Human", "Same?"), ("Assistant", "Same.")),
         "rejected": transcript(("Human", "Same?"), ("Assistant", "Same."))},
    ]


def test_load_hub_dataset_hh_kind_given_and_inferred(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_rows())
    cache = tmp_path / "cache"
    skipped = Counter()
    ds = load_hub_dataset(path, "hh", skipped=skipped, cache_dir=cache)
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 2
    assert skipped == {"chosen equals rejected": 1}
    assert ds[0] == {"prompt": [user("Which bird sings at dawn?"), assistant("The blackbird, often."),
                                user("And at dusk?")],
                     "chosen": [assistant("The robin keeps singing late.")],
                     "rejected": [assistant("Birds sleep.")]}
    assert ds[1] == {"prompt": [user("Say hi.")], "chosen": [assistant("Hi!")], "rejected": [assistant("No.")]}
    inferred = Counter()
    assert load_hub_dataset(path, skipped=inferred, cache_dir=cache).to_list() == ds.to_list()
    assert inferred == skipped
    # A folder holding the file loads the same way.
    folder = tmp_path / "hub"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", hh_rows())
    assert load_hub_dataset(folder, cache_dir=cache).to_list() == ds.to_list()


def test_load_hub_dataset_hh_when_nothing_survives(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", hh_rows()[2:])
    ds = load_hub_dataset(path, "hh", cache_dir=tmp_path / "cache")
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 0
    assert to_preference_dataset([]).column_names == ["prompt", "chosen", "rejected"]


def test_preference_data_already_in_messages_form_is_not_taken_for_hh(tmp_path):
    path = write_jsonl(tmp_path / "pref.jsonl", [
        {"chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("Go away.")]}])
    with pytest.raises(ValueError, match="cannot tell the kind"):
        load_hub_dataset(path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataFormatError, match="field 'chosen' is a list"):
        load_hub_dataset(path, "hh", cache_dir=tmp_path / "cache")
