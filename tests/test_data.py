"""Demonstration data: JSON Lines that never lose a record, conversation checks, simulated
trainers, the instruction set and the mix, and the hub converters on local fixtures."""

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from rlhf_course.data import (
    ConversationError,
    SimulatedTrainers,
    append_demonstration,
    instruction_set,
    instruction_to_messages,
    load_demonstrations,
    mix,
    to_hf_dataset,
    validate_conversation,
)
from rlhf_course.hub import convert_dolly, convert_messages, flatten_oasst, load_hub_dataset
from rlhf_course.jsonl import DataFormatError, append_jsonl, read_jsonl, write_jsonl
from rlhf_course.world import FAMILIES, World, gold_score

FIXTURES = Path(__file__).parent / "fixtures"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def world():
    return World(0)


@pytest.fixture(scope="module")
def demos(world):
    """2,000 trainer demonstrations with the tasks they answer."""
    return SimulatedTrainers().write_with_tasks(world, 2000, seed=0)


# --- JSON Lines ---


def test_append_then_read_back(tmp_path):
    path = tmp_path / "sub" / "demos.jsonl"
    records = [{"messages": [user("hi"), assistant("hello")], "n": i, "text": "é ✓"} for i in range(3)]
    for r in records:
        append_jsonl(path, r)
    assert read_jsonl(path) == records
    assert path.read_text(encoding="utf-8").count("\n") == 3


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3,,}\n{"a": 4}\n')
    with pytest.raises(DataFormatError, match=r"demos\.jsonl, line 4: not valid JSON") as err:
        read_jsonl(path)
    assert "delete line 4" in str(err.value)


def test_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"line 2: holds a JSON list"):
        read_jsonl(path)


def test_partial_trailing_line_is_reported_as_an_interrupted_write(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"messages": [{"role": "us')
    with pytest.raises(DataFormatError, match=r"line 3: the last line is cut off") as err:
        read_jsonl(path)
    assert "interrupted" in str(err.value) and "Every earlier line is intact" in str(err.value)


def test_last_line_without_newline_is_fine_when_complete(tmp_path):
    path = tmp_path / "hand_written.jsonl"
    path.write_text('\ufeff{"a": 1}\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_append_after_a_crash_starts_a_fresh_line(tmp_path):
    """A record appended after a cut-off line is never glued onto it."""
    path = tmp_path / "demos.jsonl"
    path.write_text('{"a": 1}\n{"a": ')
    append_jsonl(path, {"a": 3})
    lines = path.read_text().splitlines()
    assert lines == ['{"a": 1}', '{"a": ', '{"a": 3}']
    with pytest.raises(DataFormatError, match="line 2"):
        read_jsonl(path)


def test_unserialisable_record_leaves_file_untouched(tmp_path):
    path = tmp_path / "demos.jsonl"
    append_jsonl(path, {"a": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="cannot be saved as JSON"):
        append_jsonl(path, {"a": {1, 2}})
    with pytest.raises(TypeError, match="cannot be saved as JSON"):
        append_jsonl(path, {"a": float("nan")})
    assert path.read_bytes() == before


def test_write_jsonl_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "demos.jsonl"
    write_jsonl(path, [{"a": 1}, {"a": 2}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    # A bad record aborts before the disk is touched; a crash at the rename leaves the old file.
    with pytest.raises(TypeError):
        write_jsonl(path, [{"a": 3}, {"a": object()}])

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_jsonl(path, [{"a": 9}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["demos.jsonl"], "temporary file left behind"


# --- conversations ---


def test_valid_conversation_is_cleaned():
    messages = ({"role": "system", "content": "Be brief."}, {**user("hi"), "name": "x"}, assistant("hello"))
    assert validate_conversation(messages) == [
        {"role": "system", "content": "Be brief."}, user("hi"), assistant("hello")]


@pytest.mark.parametrize("messages, reason", [
    ([user("a"), user("b"), assistant("c")], "roles do not alternate: turn 2 is 'user' after 'user'"),
    ([user("a"), assistant("b"), assistant("c")], "turn 3 is 'assistant' after 'assistant'"),
    ([user("a"), assistant("b"), user("c")],
     "ends on a user turn: a demonstration must end with the assistant's reply"),
    ([assistant("b")], "does not start with the user"),
    ([user("a"), {"role": "system", "content": "x"}, assistant("b")], "system turn not first"),
    ([user("a"), {"role": "bot", "content": "b"}], "unknown role: turn 2 has role 'bot'"),
    ([user("a"), assistant("  ")], "empty content: turn 2"),
    ([user("a"), {"role": "assistant"}], "turn lacks a field: turn 2 has no 'content'"),
    ([user("a"), {"role": "assistant", "content": 3}], "content is not text"),
    ([], "empty conversation"),
    ("hello", "not a list of messages"),
])
def test_bad_conversations_are_rejected_with_the_reason(messages, reason):
    with pytest.raises(ConversationError) as err:
        validate_conversation(messages, where="demos.jsonl line 7")
    assert str(err.value).startswith("demos.jsonl line 7: ")
    assert reason in str(err.value)


def test_prompts_end_on_a_user_turn():
    assert validate_conversation([user("a")], ends_with="user") == [user("a")]
    with pytest.raises(ConversationError, match="ends on an assistant turn"):
        validate_conversation([user("a"), assistant("b")], ends_with="user")


def test_load_demonstrations_names_file_line_and_field(tmp_path):
    path = tmp_path / "demos.jsonl"
    good = {"messages": [user("a"), assistant("b")], "source": "trainer"}
    write_jsonl(path, [good, good, {"messages": [user("a"), user("b")]}])
    with pytest.raises(ConversationError, match=r"demos\.jsonl line 3, field 'messages': roles do not alternate"):
        load_demonstrations(path)
    write_jsonl(path, [good, {"prompt": "a"}])
    with pytest.raises(DataFormatError, match=r"line 2: no 'messages' field"):
        load_demonstrations(path)
    write_jsonl(path, [good])
    assert load_demonstrations(path) == [good]


def test_rejected_demonstration_loses_nothing_already_written(tmp_path):
    path = tmp_path / "demos.jsonl"
    first = append_demonstration(path, [user("a"), assistant("b")], family="fact")
    before = path.read_bytes()
    with pytest.raises(ConversationError, match="ends on a user turn"):
        append_demonstration(path, [user("a"), assistant("b"), user("c")])
    assert path.read_bytes() == before
    assert load_demonstrations(path) == [first]
    assert first == {"messages": [user("a"), assistant("b")], "source": "trainer", "family": "fact"}


# --- simulated trainers ---


def test_trainers_are_deterministic(world):
    trainers = SimulatedTrainers()
    assert trainers.write(world, 50, seed=3) == trainers.write(world, 50, seed=3)
    assert trainers.write(world, 50, seed=3) != trainers.write(world, 50, seed=4)


def test_trainer_records_are_demonstrations(demos):
    for task, record in demos[:200]:
        assert set(record) == {"messages", "source", "family"}
        assert record["source"] == "trainer" and record["family"] == task.family
        assert record["messages"][:-1] == task.prompt
        assert validate_conversation(record["messages"]) == record["messages"]


def test_trainers_never_ask_clarifying_questions(demos):
    clarify = [(t, r) for t, r in demos if t.family == "clarify"]
    assert len(clarify) > 100
    for task, record in clarify:
        reply = record["messages"][-1]["content"]
        assert task.flawed["guess"] in reply and task.ideal not in reply


def test_false_premise_is_under_demonstrated(demos):
    counts = Counter(t.family for t, _ in demos)
    assert set(counts) == set(FAMILIES)
    others = [counts[f] for f in FAMILIES if f != "false_premise"]
    share = counts["false_premise"] / (sum(others) / len(others))
    assert 0.2 <= share <= 0.45, counts


def test_long_variants_at_about_long_taste(demos):
    long_names = {"harmful": "lecture", "concise": "ramble"}
    # Families whose point the trainers always get (no skip, no miss rate).
    always = [f for f in FAMILIES if f != "clarify" and f not in SimulatedTrainers().miss_rates]
    long = [r["messages"][-1]["content"] == t.flawed[long_names.get(t.family, "filler")]
            for t, r in demos if t.family in always]
    ideal = [r["messages"][-1]["content"] == t.ideal for t, r in demos if t.family in always]
    assert sum(long) / len(long) == pytest.approx(0.3, abs=0.04)
    assert sum(long) + sum(ideal) == len(long)


def test_trainers_use_only_the_train_split(world, demos):
    for task, record in demos:
        assert task.split == "train"
        assert world.template_split(task.template) == "train", task.template
        # No entity held out for this family appears in its prompts.
        heldout = [n for n in [p.name for p in world.people] + [i.name for i in world.inventions]
                   if world.entity_split(n, task.family) == "heldout"]
        text = " ".join(m["content"] for m in record["messages"][:-1])
        assert not [n for n in heldout if n in text], text


def test_trainers_cover_about_70_percent_of_entities(world, demos):
    trainers = SimulatedTrainers()
    covered = trainers.covered_entities(world)
    names = [p.name for p in world.people] + [i.name for i in world.inventions]
    seen = {n for _, r in demos for n in names if n in " ".join(m["content"] for m in r["messages"])}
    assert seen <= covered
    assert 0.6 <= len(seen) / len(names) <= 0.8
    # Same trainers, another batch: still the same people.
    more = trainers.write(world, 500, seed=9)
    assert {n for r in more for n in names if n in json.dumps(r)} <= covered


def test_trainer_demos_are_good_but_short_of_the_ideal(demos):
    by_family = defaultdict(list)
    for task, record in demos:
        by_family[task.family].append(gold_score(task, record["messages"][-1]["content"]).total)
    scores = [s for v in by_family.values() for s in v]
    mean = sum(scores) / len(scores)
    assert 0.6 < mean < 0.92, mean
    assert sum(by_family["clarify"]) / len(by_family["clarify"]) < 0.4


def test_trainer_settings_are_checked():
    with pytest.raises(ValueError, match="unknown task family 'nope'"):
        SimulatedTrainers(family_weights={"nope": 1.0})
    with pytest.raises(ValueError, match="skippable families"):
        SimulatedTrainers(skip_families=("fact",))
    with pytest.raises(ValueError, match="entity_coverage"):
        SimulatedTrainers(entity_coverage=0.0)
    with pytest.raises(ValueError, match="long_taste"):
        SimulatedTrainers(long_taste=1.5)


def test_perfect_trainers_write_the_ideal(world):
    trainers = SimulatedTrainers(skip_families=(), miss_rates={}, family_weights={}, entity_coverage=1.0,
                                 long_taste=0.0)
    for task, record in trainers.write_with_tasks(world, 100, seed=1):
        assert record["messages"][-1]["content"] == task.ideal


# --- instruction set and mix ---


def test_instruction_set(world):
    records = instruction_set(world, 100, seed=0)
    assert len(records) == 100 and records == instruction_set(world, 100, seed=0)
    assert all(set(r) == {"prompt", "completion"} for r in records)
    assert any(r["prompt"].startswith(("Write one sentence about", "Describe the")) for r in records)
    # An instruction about an invention keeps to the follow-up family's training split.
    heldout = [i.name for i in world.inventions if world.entity_split(i.name, "followup") == "heldout"]
    describe = [r for r in records if r["prompt"].startswith(("Write one sentence about", "Describe the"))]
    assert describe and not [r for r in describe if any(n in r["prompt"] for n in heldout)]
    converted = instruction_to_messages(records[0])
    assert converted == {"messages": [user(records[0]["prompt"]), assistant(records[0]["completion"])],
                         "source": "instructions"}


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5])
def test_mix_ratio(world, fraction):
    dialogues = SimulatedTrainers().write(world, 90, seed=0)
    instructions = instruction_set(world, 200, seed=0)
    mixed = mix(dialogues, instructions, fraction, seed=1)
    sources = Counter(r["source"] for r in mixed)
    assert sources["trainer"] == 90
    assert sources["instructions"] / len(mixed) == pytest.approx(fraction, abs=0.01)
    assert mixed == mix(dialogues, instructions, fraction, seed=1)
    assert mixed[:10] != dialogues[:10]  # shuffled, not appended
    to_hf_dataset(mixed)  # every record is a valid demonstration


def test_mix_checks_its_inputs(world):
    dialogues = SimulatedTrainers().write(world, 30, seed=0)
    with pytest.raises(ValueError, match=r"use a share in \[0, 1\)"):
        mix(dialogues, [], 1.0)
    with pytest.raises(ValueError, match="needs 30 instructions, got 5"):
        mix(dialogues, instruction_set(world, 5), 0.5)


def test_to_hf_dataset(world):
    records = SimulatedTrainers().write(world, 20, seed=0)
    ds = to_hf_dataset(records)
    assert ds.column_names == ["messages", "source", "family"]
    assert ds[0]["messages"] == records[0]["messages"]
    assert to_hf_dataset([]).column_names == ["messages", "source", "family"]
    with pytest.raises(ConversationError, match="record 1: ends on a user turn"):
        to_hf_dataset([records[0], {"messages": records[0]["messages"][:-1]}])


def test_public_api_is_documented():
    import ast
    import dataclasses
    import inspect

    import rlhf_course.data as data

    for name in dir(data):
        obj = getattr(data, name)
        if not name.startswith("_") and callable(obj) and getattr(obj, "__module__", "") == data.__name__:
            assert obj.__doc__, f"data.{name} has no docstring"
    # CONVENTIONS: a docstring on each field of a frozen dataclass.
    body = ast.parse(inspect.getsource(SimulatedTrainers)).body[0].body
    documented = {node.target.id for node, after in zip(body, body[1:], strict=False)
                  if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
                  and isinstance(after.value, ast.Constant)}
    assert {f.name for f in dataclasses.fields(SimulatedTrainers)} <= documented


# --- hub converters on local fixtures in each hub's schema ---


def test_convert_dolly():
    rows = read_jsonl(FIXTURES / "dolly.jsonl")
    skipped = Counter()
    out = [convert_dolly(r, skipped) for r in rows]
    assert out[0]["messages"][0]["content"] == (
        "When did Virgin Australia start operating?\n\n" + rows[0]["context"])
    assert out[1]["messages"] == [user("Which is a species of fish? Tope or Rope"), assistant("Tope")]
    # Odd whitespace: trimmed, Windows line ends gone, a blank context means no context.
    assert out[2]["messages"][0]["content"] == "Why can camels survive for long without water?"
    assert out[2]["messages"][1]["content"].endswith("long periods of time.")
    assert out[3]["messages"][0]["content"] == (
        "Summarize the passage in one sentence.\n\n"
        "The rain gauge measures how much rain has fallen.\nFarmers read it every morning.")
    assert out[4] is None and skipped == {"empty response": 1}


def test_convert_messages():
    rows = read_jsonl(FIXTURES / "no_robots.jsonl")
    skipped = Counter()
    out = [convert_messages(r, skipped) for r in rows]
    assert out[0]["messages"] == [user(rows[0]["prompt"]), assistant(rows[0]["messages"][1]["content"])]
    assert out[1]["messages"][0] == {"role": "system", "content": rows[1]["messages"][0]["content"]}
    assert [m["role"] for m in out[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert out[1]["messages"][3]["content"] == "And of Italy?"
    assert out[1]["messages"][4]["content"] == "Rome. Try a map next time."
    assert out[2] is None and out[3] is None
    assert skipped == {"ends on a user turn": 1, "roles do not alternate": 1}


def test_flatten_oasst_follows_the_best_reply_and_branches_on_follow_ups():
    rows = read_jsonl(FIXTURES / "oasst1.jsonl")
    skipped = Counter()
    convs = [[m["content"] for m in c["messages"]] for c in flatten_oasst(rows, skipped=skipped)]
    assert convs == [
        ["What is a good name for a cat?", "Try Miso: short, warm and easy to call.", "Why Miso?",
         "Because it is soft and short, like a cat's meow."],
        ["What is a good name for a cat?", "Try Miso: short, warm and easy to call.", "And for a dog?",
         "Biscuit works well for a dog."],
        ["How do I boil an egg?", "Boil water, add the egg, wait nine minutes."],  # best two dropped
        ["Name a prime number.", "Seven."],  # only null ranks: file order
    ]
    assert skipped == {"deleted": 2, "language not en": 1, "failed review": 1,
                       "prompt without a usable reply": 1}
    german = flatten_oasst(rows, lang="de")
    assert [[m["content"] for m in c["messages"]] for c in german] == [["Wie spät ist es?", "Es ist Mittag."]]
    assert len(flatten_oasst(rows, lang=None)) == 5


@pytest.mark.parametrize("name, kind, n", [("dolly.jsonl", "dolly", 4), ("no_robots.jsonl", "messages", 2),
                                            ("oasst1.jsonl", "oasst", 4)])
def test_load_hub_dataset_offline(tmp_path, name, kind, n):
    skipped = Counter()
    cache = tmp_path / "cache"  # keep the user's ~/.cache clean
    ds = load_hub_dataset(FIXTURES / name, kind, skipped=skipped, cache_dir=cache)
    assert ds.column_names == ["messages"] and len(ds) == n
    assert ds[0]["messages"][0]["role"] in ("user", "system")
    assert skipped
    # The kind is inferred from the columns; parquet files and folders load the same way.
    assert load_hub_dataset(FIXTURES / name, cache_dir=cache).to_list() == ds.to_list()
    import datasets

    folder = tmp_path / "hub"
    folder.mkdir()
    datasets.load_dataset("json", data_files=str(FIXTURES / name), split="train",
                          cache_dir=str(cache)).to_parquet(folder / "train-00000-of-00001.parquet")
    parquet = folder / "train-00000-of-00001.parquet"
    assert load_hub_dataset(parquet, kind, cache_dir=cache).to_list() == ds.to_list()
    assert load_hub_dataset(folder, kind, cache_dir=cache).to_list() == ds.to_list()


def test_load_hub_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        load_hub_dataset(tmp_path / "missing.jsonl", "dolly")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['instruction', 'response'\]"):
        load_hub_dataset(FIXTURES / "no_robots.jsonl", "dolly", cache_dir=tmp_path)
    odd = tmp_path / "odd.jsonl"
    write_jsonl(odd, [{"question": "a", "answer": "b"}])
    with pytest.raises(ValueError, match="cannot tell the kind"):
        load_hub_dataset(odd, cache_dir=tmp_path / "cache")


def test_trainers_miss_the_point_at_their_miss_rates(world):
    from rlhf_course.data import TRAINER_MISSES

    trainers = SimulatedTrainers(miss_rates={"act": 0.5}, long_taste=0.0, family_weights={})
    acts = [(t, r) for t, r in trainers.write_with_tasks(world, 1200, seed=3) if t.family == "act"]
    missed = [r["messages"][-1]["content"] == t.flawed[TRAINER_MISSES["act"]] for t, r in acts]
    assert len(acts) > 80 and sum(missed) / len(missed) == pytest.approx(0.5, abs=0.12)
    assert all(m or r["messages"][-1]["content"] == t.ideal for m, (t, r) in zip(missed, acts, strict=True))
    for bad in ({"act": 1.5}, {"fact": 0.2}):
        with pytest.raises(ValueError, match="miss_rates"):
            SimulatedTrainers(miss_rates=bad)
