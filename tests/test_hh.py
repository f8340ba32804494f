"""The real-data track (`track="hh"`): hub datasets loaded from small local files in the hub's
exact schema (tests/fixtures/hh_rlhf/{train,test}.jsonl are hand-written HH-RLHF records; the
no_robots and Dolly fixtures are shared with test_data.py), turned into demonstrations, rankings
and PPO prompts, and wired into the stages. Nothing here reaches the hub."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from rlhf_course import hh
from rlhf_course.config import TRACKS, PPOConfig, RewardConfig, SFTConfig
from rlhf_course.data import load_demonstrations, validate_conversation
from rlhf_course.jsonl import read_jsonl, write_jsonl
from rlhf_course.rankings import load_comparisons, validate_comparison
from rlhf_course.world import Task

FIXTURES = Path(__file__).parent / "fixtures"
HH_FOLDER = FIXTURES / "hh_rlhf"  # train.jsonl and test.jsonl, as the hub splits HH-RLHF
NO_ROBOTS = FIXTURES / "no_robots.jsonl"  # 4 records, 2 usable
DOLLY = FIXTURES / "dolly.jsonl"  # 5 records, 4 usable


@pytest.fixture
def cache(tmp_path):
    """A datasets cache of the test's own, so the user's ~/.cache stays clean."""
    return tmp_path / "cache"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The same for code that passes no cache_dir (the stages): datasets reads this at call time."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


# --------------------------------------------------------------------------- the configs


@pytest.mark.parametrize("cls", [SFTConfig, RewardConfig, PPOConfig], ids=lambda c: c.__name__)
def test_track_follows_seed_defaults_to_toy_and_hh_is_accepted(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[names.index("seed") + 1] == "track"
    assert cls().track == "toy" and cls.preset("cpu") == cls()
    assert cls.preset("t4", track="hh").track == "hh"
    assert TRACKS == ("toy", "hh")


@pytest.mark.parametrize("cls", [SFTConfig, RewardConfig, PPOConfig], ids=lambda c: c.__name__)
def test_unknown_track_names_the_valid_ones(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.track = 'real': unknown track; valid tracks are 'toy', 'hh'"):
        cls.preset("cpu", track="real")


@pytest.mark.parametrize("cls, field, value, message", [
    (SFTConfig, "hh_demo_count", -1, "whole number >= 0"),
    (SFTConfig, "hh_demo_count", 2.5, "whole number >= 0"),
    (SFTConfig, "hh_demos", "", "hub dataset id"),
    (SFTConfig, "hh_instructions", "  ", "hub dataset id"),
    (RewardConfig, "hh_pairs", -3, "whole number >= 0"),
    (RewardConfig, "hh_heldout_pairs", True, "whole number >= 0"),
    (RewardConfig, "hh_preferences", "", "hub dataset id"),
    (PPOConfig, "hh_prompt_fraction", 1.0, r"share in \[0, 1\)"),
    (PPOConfig, "hh_prompt_fraction", -0.1, r"share in \[0, 1\)"),
    (PPOConfig, "hh_prompts", "", "hub dataset id"),
])
def test_hh_fields_are_checked(cls, field, value, message):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field} = .*{message}"):
        cls.preset("cpu", **{field: value})


# --------------------------------------------------------------------------- sampling and demonstrations


def test_subsample_is_seeded_without_replacement_and_refuses_too_many():
    items = list(range(50))
    a = hh.subsample(items, 10, seed=1, what="items")
    assert a == hh.subsample(items, 10, seed=1, what="items")
    assert len(set(a)) == 10 and set(a) <= set(items)
    assert a != hh.subsample(items, 10, seed=2, what="items")
    assert hh.subsample(items, 0, seed=1) == []
    with pytest.raises(hh.HubDataError, match="asked for 51 items, but only 50 are usable"):
        hh.subsample(items, 51, seed=1, what="items")
    with pytest.raises(hh.HubDataError, match="n = -1"):
        hh.subsample(items, -1, seed=1)


def test_real_demonstrations_mix_both_datasets_by_instruction_fraction(cache):
    records, skipped = hh.real_demonstrations(NO_ROBOTS, DOLLY, n=4, instruction_fraction=0.5, seed=0,
                                              cache_dir=cache)
    assert Counter(r["source"] for r in records) == {hh.DIALOGUE_SOURCE: 2, hh.INSTRUCTION_SOURCE: 2}
    for r in records:
        assert validate_conversation(r["messages"]) == r["messages"]  # ends on the assistant
        assert r["dataset"] == str(NO_ROBOTS if r["source"] == hh.DIALOGUE_SOURCE else DOLLY)
    # What each dataset dropped, by reason (the converters' own counts).
    assert skipped == {hh.DIALOGUE_SOURCE: {"ends on a user turn": 1, "roles do not alternate": 1},
                       hh.INSTRUCTION_SOURCE: {"empty response": 1}}
    # The system turn of the no_robots conversation survives; Dolly's context joins the user turn.
    dialogues = [r["messages"] for r in records if r["source"] == hh.DIALOGUE_SOURCE]
    assert any(m[0]["role"] == "system" for m in dialogues)
    again, _ = hh.real_demonstrations(NO_ROBOTS, DOLLY, n=4, instruction_fraction=0.5, seed=0, cache_dir=cache)
    assert again == records


def test_real_demonstrations_errors_name_the_field_and_what_to_do(tmp_path, cache):
    with pytest.raises(hh.HubDataError, match=r"SFTConfig\.hh_demos = .*3 demonstrations wanted from it, but only 2 are usable \(skipped: "
                                              r".*\); lower SFTConfig\.hh_demo_count"):
        hh.real_demonstrations(NO_ROBOTS, DOLLY, n=3, instruction_fraction=0.0, cache_dir=cache)
    with pytest.raises(hh.HubDataError, match=r"SFTConfig\.hh_instructions = .*missing\.jsonl.*local copy"):
        hh.real_demonstrations(NO_ROBOTS, tmp_path / "missing.jsonl", n=2, instruction_fraction=0.5,
                               cache_dir=cache)
    # A dataset in the wrong schema: the loader's column check, under the field's name.
    with pytest.raises(hh.HubDataError, match=r"SFTConfig\.hh_demos = .*dolly\.jsonl.*lacks the column"):
        hh.real_demonstrations(DOLLY, DOLLY, n=2, instruction_fraction=0.5, cache_dir=cache)
    # A dataset nothing is wanted from is not even opened.
    records, skipped = hh.real_demonstrations(NO_ROBOTS, tmp_path / "missing.jsonl", n=2,
                                              instruction_fraction=0.0, cache_dir=cache)
    assert len(records) == 2 and set(skipped) == {hh.DIALOGUE_SOURCE}


def test_mix_in_keeps_every_record_in_a_seeded_order():
    toy = [{"messages": [], "source": "trainer", "i": i} for i in range(20)]
    real = [{"messages": [], "source": hh.DIALOGUE_SOURCE, "i": i} for i in range(5)]
    mixed = hh.mix_in(toy, real, seed=3)
    assert sorted(map(json.dumps, mixed)) == sorted(map(json.dumps, toy + real))
    assert mixed == hh.mix_in(toy, real, seed=3) and mixed != toy + real


# --------------------------------------------------------------------------- comparisons


def test_hh_pairs_become_ranking_records_of_two_chosen_first(cache):
    train, heldout, skipped = hh.hh_comparisons(HH_FOLDER, n_train=7, n_heldout=4, seed=0, cache_dir=cache)
    assert len(train) == 7 and len(heldout) == 4
    # 9 training records: one pair with identical replies (convert_hh drops it) and one whose
    # replies differ only in spacing (a ranking cannot hold them).
    assert skipped == {"chosen equals rejected": 1, "replies differ only in spacing": 1}
    raw = {json.dumps(r, sort_keys=True) for r in read_jsonl(HH_FOLDER / "train.jsonl")}
    for rec in train + heldout:
        assert validate_comparison(rec) == rec
        assert rec["ranking"] == [0, 1] and len(rec["replies"]) == 2
        assert rec["source"] == hh.HH_SOURCE and rec["ranker"] == hh.HH_RANKER
        assert rec["task"] is None and rec["ranked_at"] is None
        assert rec["context"][-1]["role"] == "user"
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in heldout} == {"heldout"}
    assert len({r["id"] for r in train + heldout}) == 11
    # One record checked against its transcript: the chosen reply is ranked first.
    run = next(r for r in train if r["context"][0]["content"] == "I want to start running.")
    assert [m["role"] for m in run["context"]] == ["user", "assistant", "user"]
    assert run["replies"][0].startswith("Start with run-walk intervals")
    assert run["replies"][1] == "Just sign up for a marathon next month."
    assert any(json.loads(x)["chosen"].endswith(run["replies"][0]) for x in raw)
    # The held-out set is HH's test split: none of its conversations is a training one.
    train_contexts = {json.dumps(r["context"]) for r in train}
    assert not any(json.dumps(r["context"]) in train_contexts for r in heldout)
    assert {r["context"][0]["content"] for r in heldout} >= {"What is 15% of 80?"}
    # Seeded: the same sample and order again; another seed orders them differently.
    again = hh.hh_comparisons(HH_FOLDER, 7, 4, seed=0, cache_dir=cache)
    assert again == (train, heldout, skipped)
    assert [r["id"] for r in hh.hh_comparisons(HH_FOLDER, 7, 0, seed=5, cache_dir=cache)[0]] != [r["id"] for r in train]


def test_ranking_records_round_trip_through_a_comparisons_file(tmp_path, cache):
    train, heldout, _ = hh.hh_comparisons(HH_FOLDER, 3, 2, seed=0, cache_dir=cache)
    write_jsonl(tmp_path / "hh.jsonl", train)
    assert load_comparisons(tmp_path / "hh.jsonl") == train


def test_hh_comparison_errors(tmp_path, cache):
    with pytest.raises(hh.HubDataError, match=r"RewardConfig\.hh_preferences = .*asked for 8 pairs from split "
                                              r"'train', but only 7 are usable \(skipped: 1 chosen equals"):
        hh.hh_comparisons(HH_FOLDER, 8, 0, cache_dir=cache)
    single = HH_FOLDER / "train.jsonl"
    with pytest.raises(hh.HubDataError, match="is a single file.*train and a test file.*hh_heldout_pairs=0"):
        hh.hh_comparisons(single, 2, 1, cache_dir=cache)
    assert len(hh.hh_comparisons(single, 2, 0, cache_dir=cache)[0]) == 2  # no held-out pairs: fine
    with pytest.raises(hh.HubDataError, match=r"lacks the column\(s\) \['chosen', 'rejected'\]"):
        hh.hh_comparisons(DOLLY, 2, 0, cache_dir=cache)


def test_an_unreadable_transcript_is_named_by_record_and_line(tmp_path, cache):
    good = read_jsonl(HH_FOLDER / "train.jsonl")[0]
    bad = {"chosen": "\n\nAssistant: Welcome back.\n\nHuman: hi\n\nAssistant: hello", "rejected": good["rejected"]}
    path = tmp_path / "hh.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(hh.HubDataError, match=r"hh_preferences = .*split 'train', record 1 \(line 3 of hh\.jsonl\): "
                                              r"HH record field 'chosen': HH transcript does not start with a Human turn"):
        hh.hh_comparisons(path, 1, 0, cache_dir=cache)


def test_preference_accuracy_against_hand_counted_pairs(cache):
    _, heldout, _ = hh.hh_comparisons(HH_FOLDER, 0, 4, seed=0, cache_dir=cache)

    def by_length(contexts, replies):
        assert len(contexts) == len(replies) == 8
        return [float(len(r)) for r in replies]

    # The chosen reply is the longer one in three pairs; "12." and "15." tie, which counts half.
    assert hh.preference_accuracy(by_length, heldout) == (pytest.approx(3.5 / 4), 4)
    assert hh.preference_accuracy(lambda c, r: [-float(len(x)) for x in r], heldout)[0] == pytest.approx(0.5 / 4)
    assert hh.preference_accuracy(by_length, []) == (None, 0)


# --------------------------------------------------------------------------- PPO prompts


def test_hh_prompts_end_on_a_user_turn_without_duplicates(cache):
    prompts = hh.hh_prompts(HH_FOLDER, 7, seed=0, cache_dir=cache)
    # 8 usable training records; two share the question about Australia's capital.
    assert len({json.dumps(p.prompt) for p in prompts}) == 7
    for p in prompts:
        assert isinstance(p, hh.PromptTask) and p.source == hh.HH_SOURCE
        assert validate_conversation(p.prompt, ends_with="user") == p.prompt
    assert any(len(p.prompt) == 3 for p in prompts)  # the multi-turn one keeps its history
    # More than there are: every prompt again, each pass in a new order.
    many = hh.hh_prompts(HH_FOLDER, 16, seed=0, cache_dir=cache)
    counts = Counter(json.dumps(p.prompt) for p in many)
    assert len(counts) == 7 and set(counts.values()) == {2, 3}
    assert [p.prompt for p in many] == [p.prompt for p in hh.hh_prompts(HH_FOLDER, 16, seed=0, cache_dir=cache)]
    assert hh.hh_prompts(HH_FOLDER / "nowhere", 0) == []  # nothing wanted, nothing opened


def test_a_prompt_task_must_end_on_the_user():
    with pytest.raises(hh.HubDataError, match="ends on an assistant turn.*up to the user's last turn"):
        hh.PromptTask(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}))
    task = hh.PromptTask(({"role": "user", "content": "  hi  "},))
    assert task.prompt == [{"role": "user", "content": "  hi  "}] and task.family == "hh"


def test_mix_batches_puts_the_same_share_in_every_batch():
    toy = [f"t{i}" for i in range(9)]
    real = [f"h{i}" for i in range(3)]
    out = hh.mix_batches(toy, real, batch_size=4, n_real=1, seed=0)
    batches = [out[i : i + 4] for i in range(0, 12, 4)]
    for b, batch in enumerate(batches):
        assert set(batch) == {*toy[3 * b : 3 * b + 3], real[b]}
    assert out == hh.mix_batches(toy, real, 4, 1, seed=0)
    assert hh.mix_batches(toy[:8], [], 4, 0) == toy[:8]  # no HH share: the toy order untouched
    with pytest.raises(ValueError, match="do not fill whole batches"):
        hh.mix_batches(toy, real[:2], 4, 1)
    with pytest.raises(ValueError, match="must be in"):
        hh.mix_batches(toy, real, 4, 4)


def test_hh_per_batch_keeps_a_toy_prompt_in_every_batch():
    assert hh.hh_per_batch(32, 0.5) == 16 and hh.hh_per_batch(8, 0.0) == 0 and hh.hh_per_batch(8, 0.25) == 2
    with pytest.raises(ValueError, match="no toy-world prompt"):
        hh.hh_per_batch(2, 0.9)


def test_training_prompts_with_no_hh_share_are_the_toy_tracks(cache):
    from rlhf_course.ppo_train import _training_tasks

    toy = PPOConfig.preset("cpu", steps=2, batch_size=8, minibatch_size=4)
    zero = dataclasses.replace(toy, track="hh", hh_prompts=str(HH_FOLDER / "nowhere"), hh_prompt_fraction=0.05)
    assert hh.hh_per_batch(8, 0.05) == 0
    assert _training_tasks(zero, 1, 11) == _training_tasks(toy, 1, 11)


def test_training_prompts_mix_toy_tasks_and_hh_prompts(cache):
    cfg = PPOConfig.preset("cpu", track="hh", hh_prompts=str(HH_FOLDER), steps=3, batch_size=8,
                           minibatch_size=4, hh_prompt_fraction=0.25)
    tasks = hh.training_prompts(cfg, processes=2, prompt_seed=11, cache_dir=cache)
    assert len(tasks) == 3 * 2 * 8
    for b in range(0, len(tasks), 8):
        batch = tasks[b : b + 8]
        assert sum(isinstance(t, hh.PromptTask) for t in batch) == 2
        assert sum(isinstance(t, Task) and t.split == "train" for t in batch) == 6
    assert [t.prompt for t in tasks] == [t.prompt for t in hh.training_prompts(cfg, 2, 11, cache_dir=cache)]


# --------------------------------------------------------------------------- wiring into the stages


def test_build_demonstrations_on_track_hh_adds_the_real_ones(tmp_path, hub_cache):
    from rlhf_course.sft import SFT_DATA, run_demos

    toy_cfg = SFTConfig.preset("cpu", dialogues=30)
    hh_cfg = dataclasses.replace(toy_cfg, track="hh", hh_demos=str(NO_ROBOTS), hh_instructions=str(DOLLY),
                                 hh_demo_count=3)
    toy = run_demos(toy_cfg, tmp_path / "toy")
    real = run_demos(hh_cfg, tmp_path / "hh")
    assert "hh_skipped" not in toy and "track" not in toy
    # round(0.25 * 3) = 1 instruction from Dolly, 2 conversations from no_robots.
    assert real["by_source"] == {**toy["by_source"], hh.DIALOGUE_SOURCE: 2, hh.INSTRUCTION_SOURCE: 1}
    assert real["count"] == toy["count"] + 3
    assert real["hh_skipped"][hh.INSTRUCTION_SOURCE] == {"empty response": 1}
    assert {k: real[k] for k in ("by_family", "trainer_gold")} == {k: toy[k] for k in ("by_family", "trainer_gold")}
    records = load_demonstrations(tmp_path / "hh" / "demos" / SFT_DATA)
    # The toy records are exactly the toy track's; the hub ones come on top.
    toy_records = read_jsonl(tmp_path / "toy" / "demos" / SFT_DATA)
    kept = [r for r in records if r["source"] not in (hh.DIALOGUE_SOURCE, hh.INSTRUCTION_SOURCE)]
    assert sorted(map(json.dumps, kept)) == sorted(map(json.dumps, toy_records))


def test_reward_model_on_track_hh_needs_the_hh_rankings(tmp_path):
    from rlhf_course.rankings import COMPARISONS, HELDOUT_COMPARISONS
    from rlhf_course.reward import _load_hh
    from rlhf_course.runs import MissingStageOutput

    (tmp_path / "comparisons").mkdir()
    for name in (COMPARISONS, HELDOUT_COMPARISONS):
        (tmp_path / "comparisons" / name).write_text("")
    with pytest.raises(MissingStageOutput, match=r"(?s)hh\.jsonl.*only on track 'hh'.*track='hh'"):
        _load_hh(tmp_path, RewardConfig.preset("cpu", track="hh"))


@pytest.mark.slow
def test_comparisons_reward_model_and_ppo_on_track_hh(tmp_path, hub_cache):
    """The three later stages on a tiny run (seconds): HH rankings written beside the toy ones,
    the reward model measured on the HH held-out pairs, PPO batches holding HH prompts."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _runs import TINY_PPO, TINY_RM, tiny_run

    from rlhf_course.comparisons import run_comparisons
    from rlhf_course.ppo import run_ppo
    from rlhf_course.ppo_train import HISTORY
    from rlhf_course.rankings import COMPARISONS, HH_COMPARISONS, HH_HELDOUT_COMPARISONS
    from rlhf_course.reward import run_rm

    run = tiny_run(tmp_path / "run")
    toy_rankings = load_comparisons(run / "comparisons" / COMPARISONS)
    cfg = RewardConfig.preset("cpu", **TINY_RM, track="hh", hh_preferences=str(HH_FOLDER), hh_pairs=6,
                              hh_heldout_pairs=4)
    report = run_comparisons(cfg, run, progress=False)
    assert (report["hh_count"], report["hh_heldout_count"]) == (6, 4)
    assert report["hh_skipped"]["chosen equals rejected"] == 1
    hh_train = load_comparisons(run / "comparisons" / HH_COMPARISONS)
    assert len(hh_train) == 6 and {r["source"] for r in hh_train} == {hh.HH_SOURCE}
    assert len(load_comparisons(run / "comparisons" / HH_HELDOUT_COMPARISONS)) == 4
    # The toy rankings are the same prompts and replies as on the toy track.
    again = load_comparisons(run / "comparisons" / COMPARISONS)
    assert [(r["context"], r["replies"], r["ranking"]) for r in again] == [
        (r["context"], r["replies"], r["ranking"]) for r in toy_rankings]

    rm = run_rm(cfg, run, progress=False)
    assert rm["hh_train_rankings"] == 6 and rm["hh_heldout_pairs"] == 4
    assert 0.0 <= rm["accuracy_hh_heldout"] <= 1.0
    assert rm["train_rankings"] == len(toy_rankings)  # the toy figures keep their meaning

    ppo_cfg = PPOConfig.preset("cpu", **TINY_PPO, track="hh", hh_prompts=str(HH_FOLDER), hh_prompt_fraction=0.25)
    result = run_ppo(ppo_cfg, run, progress=False)
    assert result["hh_prompts_per_batch"] == 2
    history = [json.loads(line) for line in (run / "ppo" / HISTORY).read_text().splitlines()]
    assert len(history) == TINY_PPO["steps"]
    for h in history:  # gold is watched on the 6 toy prompts of each batch only
        assert 0.0 <= h["gold"] <= 1.0 and "proxy_reward_hh" in h and "proxy_reward_toy" in h
    assert result["eval_prompts"] == TINY_PPO["eval_prompts"]  # held-out evaluation: toy prompts
