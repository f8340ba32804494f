"""Gold evaluation helpers: win rate with ties counted half, the ideal ceiling, saved samples."""

import itertools
import json
import math
import random
from collections import Counter

import numpy as np
import pytest

from rlhf_course.evaluate import (
    behaviour_rates,
    behaviour_tasks,
    best_of_n,
    fit_overopt,
    gold_peak,
    phrasing_consistency,
)
from rlhf_course.heldout import GoldEval, best_possible, side_by_side, win_rate, win_rates_by_family
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
    assert all(r["rlhf verdict"] == "meets the rubric" for r in rows)
    assert all("stock phrase" in r["sft verdict"] for r in rows)
    assert list(rows[0]) == ["family", "user", "sft", "sft gold", "sft verdict",
                             "rlhf", "rlhf gold", "rlhf verdict"]
    with pytest.raises(ValueError, match="other tasks"):
        side_by_side({"a": _eval(tasks, [t.ideal for t in tasks]),
                      "b": _eval(tasks[::-1], [t.ideal for t in tasks[::-1]])})


def test_win_rates_by_family_splits_the_overall_rate():
    tasks = World(0).tasks("heldout", 6, seed=3, families=["harmful", "fact"])
    a = _eval(tasks, [t.ideal for t in tasks])
    b = _eval(tasks, [t.ideal if t.family == "harmful" else t.flawed["filler"] for t in tasks])
    # Harmful: three ties (0.5 each); fact: three wins; overall (1.5 + 3) / 6.
    assert win_rates_by_family(a, b) == {"all": 0.75, "harmful": 0.5, "fact": 1.0}
    with pytest.raises(ValueError, match="different tasks"):
        win_rates_by_family(a, _eval(tasks[::-1], [t.ideal for t in tasks[::-1]]))


# The post's limitations as rates, judged by gold on hand-picked replies.
def _family(family, n=4):
    return World(0).tasks("heldout", n, seed=1, families=[family])


def test_refusal_rate_counts_refusals_without_harmful_help():
    tasks = _family("harmful")
    replies = [tasks[0].ideal, tasks[1].flawed["comply"], tasks[2].flawed["lecture"],
               tasks[3].flawed["dodge"]]
    rates = behaviour_rates(tasks, replies)
    assert rates["refusal_rate"] == 0.5 and rates["n_harmful"] == 4  # ideal and lecture refuse
    # Refusing, then helping anyway, is not a refusal.
    both = f"I can't help with that. But: {tasks[0].flawed['comply']}"
    assert behaviour_rates(tasks[:1], [both])["refusal_rate"] == 0.0


def test_overrefusal_false_premise_and_clarifying_rates():
    benign, premise, clarify = _family("benign"), _family("false_premise"), _family("clarify")
    tasks = benign + premise + clarify
    a, b = clarify[3].facts["candidates"]
    replies = (
        [benign[0].flawed["over_refusal"], benign[1].ideal, benign[2].flawed["vague"], benign[3].ideal]
        + [premise[0].ideal, premise[1].flawed["play_along"], premise[2].flawed["wrong_year"],
           premise[3].flawed["ignore"]]
        + [clarify[0].ideal, clarify[1].flawed["guess"], clarify[2].flawed["wrong_guess"],
           f"Do you mean the one called {a}?"]
    )
    assert b not in replies[-1]
    assert behaviour_rates(tasks, replies) == {
        "refusal_rate": None, "overrefusal_rate": 0.25, "false_premise_corrected": 0.25,
        "clarifying_rate": 0.5, "n_harmful": 0, "n_benign": 4, "n_false_premise": 4, "n_clarify": 4,
    }
    assert behaviour_rates(clarify[:3], [t.ideal for t in clarify[:1]] + ["No idea."] * 2)[
        "clarifying_rate"] == round(1 / 3, 4)
    with pytest.raises(ValueError, match="3 tasks but 2 replies"):
        behaviour_rates(clarify[:3], ["?", "?"])


def test_behaviour_tasks_are_n_of_each_family_and_seeded():
    world = World(0)
    tasks = behaviour_tasks(world, 3, seed=5)
    assert Counter(t.family for t in tasks) == {"harmful": 3, "benign": 3, "false_premise": 3,
                                                "clarify": 3}
    assert all(t.split == "main" and world.reserved(t.messages) for t in tasks)
    assert tasks == behaviour_tasks(World(0), 3, seed=5) != behaviour_tasks(world, 3, seed=6)
    assert behaviour_rates(tasks, [t.ideal for t in tasks]) == {
        "refusal_rate": 1.0, "overrefusal_rate": 0.0, "false_premise_corrected": 1.0,
        "clarifying_rate": 1.0, "n_harmful": 3, "n_benign": 3, "n_false_premise": 3, "n_clarify": 3,
    }


def test_phrasing_consistency():
    # Usable groups: the first three; all-pass and all-fail agree, the mixed one does not.
    assert phrasing_consistency([[0.9, 0.8], [0.9, 0.1], [0.2, 0.3, 0.0], [1.0]]) == pytest.approx(2 / 3)
    assert phrasing_consistency([[0.6, 0.4]], threshold=0.3) == 1.0
    assert phrasing_consistency([[0.6, 0.4]]) == 0.0
    assert phrasing_consistency([[0.5, 0.9]]) == 1.0  # gold == threshold passes
    for bad in ([], [[1.0], [0.0]]):
        with pytest.raises(ValueError, match="2 or more phrasings"):
            phrasing_consistency(bad)


# Best-of-n and the over-optimisation fits.
def _brute_best_of_n(proxy, gold, n):
    """Enumerate every n-subset; the pick is the highest proxy, later sample on ties."""
    gold_m, proxy_m = [], []
    for p, g in zip(proxy, gold, strict=True):
        picks = [max(sub, key=lambda j: (p[j], j)) for sub in itertools.combinations(range(len(p)), n)]
        gold_m.append(sum(g[j] for j in picks) / len(picks))
        proxy_m.append(sum(p[j] for j in picks) / len(picks))
    return sum(gold_m) / len(gold_m), sum(proxy_m) / len(proxy_m)


def test_best_of_n_matches_enumerating_every_subset():
    rng = random.Random(0)
    proxy = [[rng.gauss(0, 1) for _ in range(7)] for _ in range(4)]
    gold = [[rng.random() for _ in range(7)] for _ in range(4)]
    rows = best_of_n(proxy, gold, range(1, 8))
    for row in rows:
        g, p = _brute_best_of_n(proxy, gold, row["n"])
        assert row["gold"] == pytest.approx(g, abs=6e-5) and row["proxy"] == pytest.approx(p, abs=6e-5)
        kl = math.log(row["n"]) - (row["n"] - 1) / row["n"]
        assert row["kl"] == round(kl, 4) and row["d"] == round(math.sqrt(kl), 4)
    # n = 1 is a random sample: the plain mean; n = N always picks the argmax.
    assert rows[0]["gold"] == round(float(np.mean(gold)), 4) and rows[0]["kl"] == 0.0
    assert rows[-1]["gold"] == round(float(np.mean([g[int(np.argmax(p))] for p, g in
                                                    zip(proxy, gold, strict=True)])), 4)
    assert rows[-1]["proxy"] == round(float(np.mean(np.max(proxy, axis=1))), 4)


def test_best_of_n_ties_and_bad_n():
    proxy, gold = [[1.0, 1.0, 0.0]], [[0.2, 0.8, 0.5]]
    # n=2: subsets {0,1}, {0,2}, {1,2} pick samples 1, 0, 1 (ties to the later sample).
    assert [r["gold"] for r in best_of_n(proxy, gold, [2, 3])] == [0.6, 0.8]
    assert _brute_best_of_n(proxy, gold, 2)[0] == pytest.approx(0.6)
    for n in (0, 4):
        with pytest.raises(ValueError, match=f"n={n}.*N=3"):
            best_of_n(proxy, gold, [n])


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_overopt_recovers_known_coefficients_and_peak(form):
    alpha, beta = 1.3, 0.4
    d = [0.0, 0.3, 0.7, 1.1, 1.6, 2.2]
    curve = (lambda x: x * (alpha - beta * x)) if form == "bon" else (
        lambda x: x * (alpha - beta * math.log(x)) if x > 0 else 0.0)
    fit = fit_overopt(d, [curve(x) for x in d], form)
    assert fit["alpha"] == pytest.approx(alpha, abs=1e-9) and fit["beta"] == pytest.approx(beta, abs=1e-9)
    grid = np.linspace(0.0, 40.0, 400001)
    best = grid[int(np.argmax([curve(x) for x in grid]))]
    assert fit["peak_d"] == pytest.approx(best, abs=1e-3)
    assert fit["peak_d"] == pytest.approx(alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1))


def test_fit_overopt_without_a_peak_and_errors():
    d = [0.5, 1.0, 1.5]
    assert fit_overopt(d, [x * (1 + 0.2 * x) for x in d], "bon")["peak_d"] is None  # beta = -0.2
    assert fit_overopt(d, [x * (-1 - x) for x in d], "bon")["peak_d"] == 0.0  # falls from d = 0
    with pytest.raises(ValueError, match="2 points with d > 0"):
        fit_overopt([0.0, 1.0], [0.0, 0.5], "rl")
    with pytest.raises(ValueError, match="unknown form"):
        fit_overopt(d, [0.1, 0.2, 0.3], "ppo")


def test_gold_peak_takes_the_first_highest():
    points = [{"n": 1, "gold": 0.5}, {"n": 2, "gold": 0.7}, {"n": 4, "gold": 0.7}, {"n": 8, "gold": 0.6}]
    assert gold_peak(points) == {"n": 2, "gold": 0.7}
    with pytest.raises(ValueError, match="at least one point"):
        gold_peak([])


# --------------------------------------------------------------------------- stage eval


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from _runs import TINY_PPO, tiny_run

    from rlhf_course.config import EvalConfig, PPOConfig
    from rlhf_course.evaluate import run_eval
    from rlhf_course.ppo import run_ppo

    run = tiny_run(tmp_path_factory.mktemp("eval_run"))
    run_ppo(PPOConfig.preset("cpu", **TINY_PPO), run, progress=False)
    cfg = EvalConfig.preset("cpu", behaviour_prompts=3, phrasing_questions=1, bon_prompts=4, bon_samples=4,
                            weak_kl_steps=2, curve_every=1, curve_prompts=6, max_new_tokens=8,
                            eval_batch_size=100, eval_prompts=200)
    seen = []
    result = run_eval(cfg, run, progress=False, live_plot=lambda step, m: seen.append(step),
                      ppo_cfg=PPOConfig.preset("cpu", **TINY_PPO))
    return run, cfg, result, seen


@pytest.mark.slow
def test_eval_stage_measures_every_policy_of_the_run(evaluated):
    import json
    import math

    from rlhf_course.world import FAMILIES

    run, cfg, result, _ = evaluated
    json.dumps(result)  # report.json can hold it
    assert result["stages"] == ["base", "sft", "ppo"] and result["rlhf_stage"] == "ppo"
    assert result["behaviour_prompts"] == {"harmful": 3, "benign": 3, "false_premise": 3, "clarify": 3}
    assert result["phrasing_questions"] == len(FAMILIES)  # one question per family, in every phrasing
    for key in ("refusal_rate", "overrefusal_rate", "false_premise_corrected", "clarifying_rate",
                "phrasing_consistency", "gold", "reply_words", "showcase_gold"):
        assert set(result[key]) == {"base", "sft", "ppo"}, key
        assert all(0.0 <= v <= (1.0 if key != "reply_words" else math.inf) for v in result[key].values()), key
    assert set(result["win_rate_vs_sft"]) == {"base", "ppo"}
    assert set(result["win_rate_vs_previous"]) == {"sft", "ppo"}
    # In the tiny run SFT *is* base (a link): against each other every reply ties.
    assert result["win_rate_vs_previous"]["sft"]["all"] == 0.5
    assert len(result["side_by_side"]) == 9 and {"sft verdict", "rlhf verdict"} <= set(result["side_by_side"][0])


@pytest.mark.slow
def test_eval_stage_measures_over_optimisation_both_ways(evaluated):
    import math

    run, cfg, result, seen = evaluated
    bon, rl = result["overopt"]["bon"], result["overopt"]["rl"]
    assert [p["n"] for p in bon["points"]] == [1, 2, 4]
    assert [p["kl"] for p in bon["points"]] == [round(math.log(n) - (n - 1) / n, 4) for n in (1, 2, 4)]
    # best-of-n can only raise the proxy it selects by
    assert bon["points"][0]["proxy"] <= bon["points"][1]["proxy"] <= bon["points"][2]["proxy"]
    assert bon["gold_peak"] in bon["points"] and set(bon["fit"]) >= {"alpha", "beta", "peak_d"}
    assert [p["step"] for p in rl["points"]] == [0, 1, 2] and rl["end"] == rl["points"][-1]
    assert rl["points"][0]["kl"] == 0.0  # measured before the first update: the SFT policy itself
    assert rl["gold_peak"] in rl["points"] and rl["init_kl_coef"] == cfg.weak_kl_coef
    assert seen == [1, 2]
    curve = (run / "eval" / "weak_kl" / "curve.jsonl").read_text().splitlines()
    assert len(curve) == 3
