"""The run-level plots of `plots.py`: each returns a Figure drawing exactly the data given."""

import math
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure

from rlhf_course import plots

OVEROPT = {
    "bon": {
        "points": [
            {"n": 1, "kl": 0.0, "d": 0.0, "gold": 0.5, "proxy": 0.0},
            {"n": 4, "kl": 0.64, "d": 0.8, "gold": 0.6, "proxy": 1.0},
            {"n": 16, "kl": 1.83, "d": 1.35, "gold": 0.57, "proxy": 1.6},
        ],
        "fit": {"alpha": 0.3, "beta": 0.15, "peak_d": 1.0},
        "gold_peak": {"n": 4, "kl": 0.64, "d": 0.8, "gold": 0.6, "proxy": 1.0},
    },
    "rl": {
        "points": [
            {"step": 0, "kl": 0.0, "d": 0.0, "gold": 0.52, "proxy": 0.3},
            {"step": 5, "kl": 1.0, "d": 1.0, "gold": 0.58, "proxy": 0.9},
            {"step": 10, "kl": 4.0, "d": 2.0, "gold": 0.55, "proxy": None},
        ],
        "fit": {"alpha": 0.1, "beta": 0.05, "peak_d": None},
        "gold_peak": {"step": 5, "kl": 1.0, "d": 1.0, "gold": 0.58, "proxy": 0.9},
    },
}

ROUNDS = [
    {"round": 1, "gold": 0.47, "proxy_reward": 0.5, "kl_to_sft": 1.9, "reply_words": 14.2,
     "rm_accuracy_fresh_before": 0.55, "rm_accuracy_fresh": 0.6},
    {"round": 2, "gold": 0.51, "proxy_reward": 0.7, "kl_to_sft": 2.4, "reply_words": None,
     "rm_accuracy_fresh_before": 0.57, "rm_accuracy_fresh": 0.63},
]


def _lines(fig: Figure, label: str) -> list:
    return [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == label]


def _panel(fig: Figure, title: str):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_overopt_plot_draws_measured_points_fits_and_peaks():
    fig = plots.overopt_plot(OVEROPT, show=False)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # two panels, each with a twin axis for the proxy
    bon_gold, rl_gold = _lines(fig, "gold (measured)")
    assert list(bon_gold.get_ydata()) == [0.5, 0.6, 0.57]
    assert list(rl_gold.get_xdata()) == [0.0, 1.0, 2.0]
    bon_proxy, rl_proxy = _lines(fig, "proxy (RM)")
    assert list(bon_proxy.get_ydata()) == [0.0, 1.0, 1.6]
    assert list(rl_proxy.get_ydata()) == [0.3, 0.9]  # the None proxy is left out
    # The proxy is on its own axis, not the gold one.
    assert bon_proxy.axes is not bon_gold.axes
    bon_fit, rl_fit = _lines(fig, "gold fit")
    xs, ys = bon_fit.get_xdata(), bon_fit.get_ydata()
    assert xs[0] == 0.0 and xs[-1] == pytest.approx(1.35)
    assert ys[0] == pytest.approx(0.5)
    assert ys[-1] == pytest.approx(0.5 + 1.35 * (0.3 - 0.15 * 1.35))
    assert rl_fit.get_ydata()[-1] == pytest.approx(0.52 + 2.0 * (0.1 - 0.05 * math.log(2.0)))
    peaks = _lines(fig, "gold peak")
    assert [(p.get_xdata()[0], p.get_ydata()[0]) for p in peaks] == [(0.8, 0.6), (1.0, 0.58)]
    assert [p.get_marker() for p in peaks] == ["*", "*"]


def test_overopt_plot_with_one_method_or_none():
    fig = plots.overopt_plot({"rl": OVEROPT["rl"], "bon": None}, show=False)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title() == "RL (PPO checkpoints)"
    # No fit: the measured points are still drawn, the curve is not.
    fig = plots.overopt_plot({"bon": {**OVEROPT["bon"], "fit": None, "gold_peak": None}}, show=False)
    assert len(_lines(fig, "gold (measured)")) == 1
    assert _lines(fig, "gold fit") == [] and _lines(fig, "gold peak") == []
    empty = plots.overopt_plot({}, show=False)
    assert len(empty.axes) == 1 and empty.axes[0].get_lines() == []


def test_overopt_gold_fit_matches_the_formulas():
    d = np.array([0.0, 0.5, 2.0])
    assert plots.overopt_gold_fit("bon", 0.4, 0.3, 0.1, d) == pytest.approx(0.4 + d * (0.3 - 0.1 * d))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # d = 0 must not take the log of 0
        rl = plots.overopt_gold_fit("rl", 0.4, 0.3, 0.1, d)
    assert rl == pytest.approx([0.4, 0.4 + 0.5 * (0.3 - 0.1 * math.log(0.5)), 0.4 + 2 * (0.3 - 0.1 * math.log(2))])


def test_rounds_plot_has_one_panel_per_figure():
    fig = plots.rounds_plot(ROUNDS, show=False)
    assert len(fig.axes) == len(plots.ROUND_PANELS) == 5
    (gold,) = _panel(fig, "gold score").get_lines()
    assert list(gold.get_xdata()) == [1, 2] and list(gold.get_ydata()) == [0.47, 0.51]
    (words,) = _panel(fig, "reply length (words)").get_lines()
    assert list(words.get_ydata()) == [14.2]  # round 2's None is a gap
    before, after = _panel(fig, "RM accuracy on fresh comparisons").get_lines()
    assert (before.get_label(), list(before.get_ydata())) == ("before retraining", [0.55, 0.57])
    assert (after.get_label(), list(after.get_ydata())) == ("after retraining", [0.6, 0.63])


def test_behaviour_plot_bars_match_the_rates_and_skip_none():
    ev = {
        "stages": ["base", "sft", "ppo"],
        "refusal_rate": {"base": 0.1, "sft": 0.6, "ppo": 0.7},
        "overrefusal_rate": {"base": 0.0, "sft": 0.2, "ppo": None},
        "phrasing_consistency": {"base": 0.3, "sft": 0.5, "ppo": 0.55},
    }
    fig = plots.behaviour_plot(ev, show=False)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "sft", "ppo"]
    heights = {c.get_label(): [round(p.get_height(), 6) for p in c] for c in ax.containers}
    assert heights == {"base": [0.1, 0.0, 0.3], "sft": [0.6, 0.2, 0.5], "ppo": [0.7, 0.55]}
    assert len(ax.get_xticklabels()) == 3  # only the behaviours present


def test_verbosity_plot_with_and_without_length_bias():
    words = {"base": 9.5, "sft": 12.0, "ppo": 15.25, "round 1": None}
    fig = plots.verbosity_plot(words, show=False)
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.containers[0]] == [9.5, 12.0, 15.25]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "sft", "ppo"]
    fig = plots.verbosity_plot(words, {"rm": 0.004, "round 1": 0.006}, show=False)
    assert len(fig.axes) == 2
    assert [p.get_height() for p in fig.axes[1].containers[0]] == [0.004, 0.006]


def test_plots_show_by_default_outside_a_notebook_without_error():
    # show=True displays only inside a notebook; here it must still return the figure.
    assert isinstance(plots.verbosity_plot({"sft": 10.0}), Figure)


def test_ladder_plot_draws_the_rungs_the_report_has():
    from rlhf_course.plots import ladder_plot

    fig = ladder_plot({"sft_gold": 0.7, "oracle_gold": 0.8, "annotator_oracle_gold": 0.78, "gold": 0.74}, show=False)
    ax = fig.axes[0]
    assert [round(p.get_height(), 3) for p in ax.patches] == [0.7, 0.8, 0.78, 0.74]
    # A run without the ladder (ladder=False) shows SFT and the learned reward model only.
    assert len(ladder_plot({"sft_gold": 0.7, "gold": 0.74, "oracle_gold": None}, show=False).axes[0].patches) == 2
