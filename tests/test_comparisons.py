"""Comparisons: checking, saving and undoing rankings, pairs for TRL, sampling K replies, and the
`comparisons` + `rm` stages on a shrunken run."""

import json

import numpy as np
import pytest

from rlhf_course.comparisons import (
    distinct_replies,
    pick_turn,
    rank_with_annotators,
    training_contexts,
)
from rlhf_course.jsonl import DataFormatError
from rlhf_course.rankings import (
    COMPARISONS,
    HELDOUT_COMPARISONS,
    ComparisonError,
    RankItem,
    append_comparison,
    load_comparisons,
    preference_rows,
    ranking_pairs,
    rankings_dataset,
    undo_last_comparison,
    validate_ranking,
)
from rlhf_course.world import Annotators, World


@pytest.fixture(scope="module")
def world():
    return World(0)


def _item(task, n=3, turn=None):
    replies = list(dict.fromkeys(task.replies().values()))[:n]
    return RankItem(task.prompt, replies, task, "policy", turn, f"t-{task.template}")


def test_ranking_pairs_are_all_k_choose_2_in_preference_order():
    assert ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]
    assert len(ranking_pairs(list(range(9)))) == 36


@pytest.mark.parametrize("replies, ranking, message", [
    (["a"], [0], "1 replies: a ranking needs between 2 and 9"),
    ([f"r{i}" for i in range(10)], list(range(10)), "10 replies"),
    (["same", "other", " same "], [0, 1, 2], "replies 0 and 2 are the same text"),
    (["a", "b", "c"], [0, 0, 1], "reply 0 appears 2 times.*ties are not allowed"),
    (["a", "b", "c"], [[0, 1], 2], "holds a group.*ties are not allowed"),
    (["a", "b", "c"], [0, 1, 3], r"not an order of all 3 replies.*missing \[2\].*no reply has index \[3\]"),
    (["a", "b", "c"], [0, 1], r"missing \[2\]"),
    (["a", "b"], [0.0, 1.0], "not a reply index"),
    (["a", ""], [0, 1], "reply 1 is empty"),
])
def test_bad_rankings_are_clear_errors(replies, ranking, message):
    with pytest.raises(ComparisonError, match=message):
        validate_ranking(replies, ranking)


def test_numpy_indices_are_accepted():
    assert validate_ranking(["a", "b", "c"], np.argsort([3, 1, 2])) == [1, 2, 0]


def test_append_load_undo_round_trip_and_nothing_lost_on_bad_input(world, tmp_path):
    path = tmp_path / "c.jsonl"
    tasks = world.tasks("train", 3, seed=1)
    first = append_comparison(path, _item(tasks[0]).record([1, 0, 2], "person:test"))
    append_comparison(path, _item(tasks[1]).record([0, 1, 2], "person:test"))
    before = path.read_bytes()
    with pytest.raises(ComparisonError, match="ties"):
        append_comparison(path, {**first, "ranking": [1, 1, 2]})
    assert path.read_bytes() == before
    records = load_comparisons(path)
    assert [r["ranking"] for r in records] == [[1, 0, 2], [0, 1, 2]]
    assert records[0]["turn"] == len(tasks[0].messages)  # the reply to the last user turn
    assert records[0]["task"]["family"] == tasks[0].family and records[0]["ranked_at"]
    assert undo_last_comparison(path)["ranking"] == [0, 1, 2]
    assert [r["ranking"] for r in load_comparisons(path)] == [[1, 0, 2]]
    assert undo_last_comparison(path) is not None and undo_last_comparison(path) is None
    assert undo_last_comparison(tmp_path / "absent.jsonl") is None


def test_a_bad_line_names_file_and_line(world, tmp_path):
    path = tmp_path / "c.jsonl"
    rec = _item(world.tasks("train", 1)[0]).record([0, 1, 2], "annotators")
    path.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "ranking": [0, 2]}) + "\n")
    with pytest.raises(DataFormatError, match=r"c\.jsonl, line 2: .*missing \[1\]"):
        load_comparisons(path)
    path.write_text(json.dumps({**rec, "context": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(DataFormatError, match="line 1: context"):
        load_comparisons(path)


def test_preference_rows_and_trl_dataset(world):
    task = world.tasks("train", 1, seed=2)[0]
    rec = _item(task, n=4).record([3, 1, 0, 2], "annotators")
    rows = preference_rows([rec])
    assert len(rows) == 6 and all(r["k"] == 4 for r in rows)
    assert rows[0]["chosen"] == [{"role": "assistant", "content": rec["replies"][3]}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": rec["replies"][1]}]
    assert rows[0]["prompt"] == task.prompt
    ds = rankings_dataset([rec])
    assert ds.column_names == ["prompt", "chosen", "rejected"] and len(ds) == 6
    assert ds[5]["chosen"][0]["content"] == rec["replies"][0]


def test_distinct_replies_and_pick_turn():
    assert distinct_replies(["a b", "a  b", "", "c", "d"], 2) == ["a b", "c"]
    import random

    msgs = [{"role": r, "content": "x"} for r in ("user", "assistant", "user", "assistant")]
    assert {pick_turn(msgs, random.Random(s)) for s in range(20)} == {1, 3}
    assert pick_turn(msgs, random.Random(0), judged=[3]) == 3
    with pytest.raises(ComparisonError, match="no assistant message"):
        pick_turn(msgs[:1], random.Random(0))


def test_training_contexts_mix_demonstrations_and_chats(world):
    ctx = training_contexts(world, 40, 0.25, seed=0)
    sources = [s for _, _, s, _ in ctx]
    assert sources.count("demonstration") == 10 and sources.count("policy") == 30
    for task, context, _source, turn in ctx:
        assert task.split == "train" and context[-1]["role"] == "user" and turn == len(context)
        assert context == task.prompt  # in the toy world the judged turn is the last one


def test_annotator_rankings_are_reproducible_and_prefer_gold(world):
    items = [_item(t, n=4) for t in world.tasks("train", 60, seed=3)
             if len(set(t.replies().values())) >= 4]
    ann = Annotators(seed=0)
    a, b = rank_with_annotators(items, ann), rank_with_annotators(items, ann)
    assert [r["ranking"] for r in a] == [r["ranking"] for r in b]
    # the ideal reply (index 0) comes first far more often than chance (1/4)
    assert sum(r["ranking"][0] == 0 for r in a) / len(a) > 0.4
    assert a[0]["ranker"].startswith("annotators(sharpness=8.0")


# --------------------------------------------------------------------------- the two stages


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder with a tiny base model standing in for the SFT model (any causal LM will do)."""
    from rlhf_course.config import BaseConfig
    from rlhf_course.pretrain import run_base

    run = tmp_path_factory.mktemp("run")
    base = {"steps": 12, "corpus_docs": 400, "d_model": 64, "n_heads": 2, "d_ff": 128, "n_layers": 1,
            "vocab_size": 320, "batch_size": 8, "eval_prompts": 200, "max_new_tokens": 8}
    run_base(BaseConfig.preset("cpu", **base), run, progress=False)
    (run / "sft").mkdir()
    (run / "sft" / "model").symlink_to(run / "base" / "model")
    return run


SMALL = {"prompts": 24, "k": 3, "eval_prompts": 200, "max_new_tokens": 12, "batch_size": 4,
         "epochs": 1.0, "sample_batch_size": 100, "score_batch_size": 100}


def test_stages_need_their_inputs_and_say_which_stage_makes_them(tmp_path):
    from rlhf_course.comparisons import run_comparisons
    from rlhf_course.config import RewardConfig
    from rlhf_course.reward import run_rm
    from rlhf_course.runs import MissingStageOutput

    cfg = RewardConfig.preset("cpu", **SMALL)
    with pytest.raises(MissingStageOutput, match="--stages base,demos,sft\n"):
        run_comparisons(cfg, tmp_path, progress=False)
    (tmp_path / "sft" / "model").mkdir(parents=True)
    with pytest.raises(MissingStageOutput, match="produced by stage 'comparisons'"):
        run_rm(cfg, tmp_path, progress=False)


@pytest.mark.slow
def test_comparisons_then_reward_model_on_a_tiny_run(tiny_run):
    from rlhf_course.comparisons import run_comparisons
    from rlhf_course.config import RewardConfig
    from rlhf_course.rankings import HUMAN_COMPARISONS
    from rlhf_course.reward import (
        HELDOUT_SCORES,
        NORMALISATION,
        load_reward_model,
        run_rm,
    )

    cfg = RewardConfig.preset("cpu", **SMALL)
    # A learner's own ranking joins the training data.
    world = World(0)
    task = world.tasks("train", 1, seed=9)[0]
    append_comparison(tiny_run / "comparisons" / HUMAN_COMPARISONS,
                      _item(task).record([2, 0, 1], "person:test"))
    report = run_comparisons(cfg, tiny_run, progress=False)
    assert report["count"] + report["dropped_contexts"] == 24
    assert report["heldout_count"] + report["heldout_dropped"] == 200
    records = load_comparisons(tiny_run / "comparisons" / COMPARISONS)
    assert all(2 <= len(r["replies"]) <= 3 and r["split"] == "train" for r in records)
    assert {r["split"] for r in load_comparisons(tiny_run / "comparisons" / HELDOUT_COMPARISONS)} == {"main"}
    # the human file is left as it was
    assert len(load_comparisons(tiny_run / "comparisons" / HUMAN_COMPARISONS)) == 1

    rm = run_rm(cfg, tiny_run, progress=False)
    assert rm["train_rankings"] == report["count"] + 1
    # A 1-layer model trained for 12 steps: its replies may all score 0 with gold, leaving no
    # pair gold tells apart (null); every figure that exists is a proportion.
    for key in ("accuracy_gold", "accuracy_gold_all", "accuracy_annotator"):
        assert rm[key] is None or 0.0 <= rm[key] <= 1.0
    assert rm["accuracy_annotator"] is not None
    norm = json.loads((tiny_run / "rm" / NORMALISATION).read_text())
    assert norm["scale"] > 0
    # Normalised: the SFT replies it was fitted on score mean 0, std 1.
    reward = load_reward_model(tiny_run)
    train = records + load_comparisons(tiny_run / "comparisons" / HUMAN_COMPARISONS)
    scores = reward.score([r["context"] for r in train for _ in r["replies"]],
                          [x for r in train for x in r["replies"]])
    assert np.mean(scores) == pytest.approx(0.0, abs=1e-3)
    assert np.std(scores) == pytest.approx(1.0, abs=1e-3)
    rows = [json.loads(line) for line in (tiny_run / "rm" / HELDOUT_SCORES).read_text().splitlines()]
    assert len(rows) == sum(len(r["replies"]) for r in load_comparisons(tiny_run / "comparisons" / HELDOUT_COMPARISONS))


@pytest.mark.slow
def test_reward_model_with_lora_trains_the_head_and_saves_a_merged_model(tiny_run, tmp_path):
    import shutil

    from rlhf_course.config import RewardConfig
    from rlhf_course.reward import load_reward_model, run_rm

    run = tmp_path / "run"
    run.mkdir()
    for stage in ("base", "sft"):
        (run / stage).symlink_to(tiny_run / stage)
    # Reuse the rankings of the test above when it ran, else make them.
    if (tiny_run / "comparisons" / COMPARISONS).exists():
        shutil.copytree(tiny_run / "comparisons", run / "comparisons")
    else:
        from rlhf_course.comparisons import run_comparisons

        run_comparisons(RewardConfig.preset("cpu", **SMALL), run, progress=False)
    rm = run_rm(RewardConfig.preset("cpu", **SMALL, lora=True), run, progress=False)
    assert rm["train_rankings"] > 0
    reward = load_reward_model(run)
    assert not any("lora" in name for name, _ in reward.model.named_parameters())
    assert len(reward.score([[{"role": "user", "content": "Hi"}]], ["Hello."])) == 1
