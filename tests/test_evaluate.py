"""Gold evaluation helpers: win rate with ties counted half, the ideal ceiling, saved samples."""

import json

import pytest

from rlhf_course.evaluate import GoldEval, best_possible, side_by_side, win_rate
from rlhf_course.world import World, gold_score


def _eval(tasks, replies):
    return GoldEval(tasks, replies, [gold_score(t, r) for t, r in zip(tasks, replies, strict=True)])


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 0.5, 0.2, 0.0], [0.0, 0.5, 0.3, 0.0]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    with pytest.raises(ValueError, match="equally long"):
        win_rate([1.0], [1.0, 0.0])


def test_gold_eval_mean_family_rows_and_save(tmp_path):
    tasks = World(0).tasks("heldout", 20, seed=1)
    ideal = _eval(tasks, [t.ideal for t in tasks])
    filler = _eval(tasks, [t.flawed["filler"] for t in tasks])
    assert ideal.mean == pytest.approx(best_possible(tasks)) == pytest.approx(1.0)
    assert win_rate(ideal, filler) == 1.0
    assert set(ideal.by_family()) == {t.family for t in tasks}
    rows = filler.rows()
    assert len(rows) == 20 and all("stock phrase" in r["why"] for r in rows)
    lines = ideal.save(tmp_path / "s.jsonl").read_text().splitlines()
    assert len(lines) == 20 and json.loads(lines[0])["gold"]["total"] == 1.0


def test_side_by_side_lines_up_policies_on_the_same_tasks():
    tasks = World(0).tasks("heldout", 4, seed=2)
    rows = side_by_side({"sft": _eval(tasks, [t.flawed["filler"] for t in tasks]),
                         "rlhf": _eval(tasks, [t.ideal for t in tasks])})
    assert [r["user"] for r in rows] == [t.messages[-1]["content"] for t in tasks]
    assert all(r["rlhf gold"] > r["sft gold"] for r in rows)
    with pytest.raises(ValueError, match="other tasks"):
        side_by_side({"a": _eval(tasks, [t.ideal for t in tasks]),
                      "b": _eval(tasks[::-1], [t.ideal for t in tasks[::-1]])})
