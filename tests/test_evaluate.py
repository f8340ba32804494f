"""Gold evaluation helpers: win rate with ties counted half, the ideal ceiling, saved samples."""

import json

import pytest

from rlhf_course.evaluate import GoldEval, best_possible, win_rate
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
