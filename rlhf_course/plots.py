"""Plots for the notebooks: a live training curve, redrawn in place while a cell runs.

Figures are built with matplotlib's object API (no pyplot, no global backend), so they draw the
same in JupyterLab, Colab, papermill and a plain script with `MPLBACKEND=agg`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def in_notebook() -> bool:
    """True inside a running IPython kernel (JupyterLab, Colab, papermill), else False."""
    try:
        from IPython import get_ipython  # IPython only inside a notebook
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def display_figure(fig: Figure) -> None:
    """Show `fig` as a PNG in a notebook (every frontend renders one); nothing outside one."""
    if not in_notebook():
        return
    from IPython.display import Image, display  # IPython only inside a notebook

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    display(Image(buf.getvalue()))


class _LiveFigure:
    """Shared machinery of the live plots: an off-screen figure shown as one PNG output that
    each redraw replaces (in a notebook), or only recorded (elsewhere), and saved on request."""

    figsize = (6.4, 3.6)

    def __init__(self):
        self.figure = Figure(figsize=self.figsize, layout="constrained")
        FigureCanvasAgg(self.figure)  # render off-screen: no GUI backend is ever needed
        self._handle = None
        self._show = in_notebook()

    def draw(self) -> Figure:
        raise NotImplementedError

    def png(self) -> bytes:
        """The current plot as PNG bytes."""
        buf = io.BytesIO()
        self.draw().savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    def show(self) -> None:
        """Display the plot, replacing the image this object displayed before (notebooks only)."""
        from IPython.display import Image, display  # IPython only inside a notebook

        # An Image, not the Figure: every frontend renders a PNG without a matplotlib backend.
        image = Image(self.png())
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plot as a PNG to `path` (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.png())
        return path


class LiveLossPlot(_LiveFigure):
    """A line plot of one or more named series that redraws itself in place in a notebook.

    Call it as `plot(step, value)` (or `plot(step, value, name="gold")` for another series);
    pass it as `live_plot=` to a training loop. In a notebook each call replaces the previous
    image (one output, not a growing stack); outside a notebook it only records the points,
    and `save(path)` writes the PNG either way.
    """

    def __init__(self, title: str = "training loss", xlabel: str = "step", ylabel: str = "loss"):
        super().__init__()
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.ax = self.figure.add_subplot()
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel

    def __call__(self, step: float, value: float, name: str = "loss") -> None:
        """Add the point (step, value) to the series `name` and redraw in a notebook."""
        xs, ys = self.series.setdefault(name, ([], []))
        xs.append(float(step))
        ys.append(float(value))
        if self._show:
            self.show()

    def draw(self) -> Figure:
        """Redraw the axes from the recorded points; returns the matplotlib figure."""
        ax = self.ax
        ax.clear()
        for name, (xs, ys) in self.series.items():
            ax.plot(xs, ys, label=name, linewidth=1.5)
        ax.set(title=self.title, xlabel=self.xlabel, ylabel=self.ylabel)
        ax.grid(alpha=0.3)
        if len(self.series) > 1:
            ax.legend()
        return self.figure


PPO_PANELS = {
    "proxy_reward": "proxy reward (RM, normalised)",
    "gold": "gold score (never trained on)",
    "kl": "KL to SFT (nats per reply)",
    "length": "reply length (tokens)",
    "entropy": "entropy (nats per token)",
    "clipfrac": "clip fraction",
}
"""The panels of PPO's live view: metric name in the step's metrics -> panel title."""


class LivePanels(_LiveFigure):
    """A grid of small line plots, one per metric, redrawn in place as training runs.

    Call it as `plot(step, metrics)` with a dict holding (at least) the panels' metrics; pass
    it as `live_plot=` to `ppo.run_ppo`. Missing metrics leave a gap; `history` keeps every
    call's values.
    """

    figsize = (10.0, 5.2)

    def __init__(self, panels: dict[str, str] | None = None, title: str = "PPO, live", every: int = 1):
        super().__init__()
        self.panels = dict(panels or PPO_PANELS)
        self.title, self.every = title, max(1, every)
        self.history: list[tuple[float, dict]] = []
        cols = 3
        rows = -(-len(self.panels) // cols)
        self.axes = [self.figure.add_subplot(rows, cols, i + 1) for i in range(len(self.panels))]

    def __call__(self, step: float, metrics: dict) -> None:
        """Record `metrics` at `step` and redraw (every `every` calls) in a notebook."""
        self.history.append((float(step), dict(metrics)))
        if self._show and len(self.history) % self.every == 0:
            self.show()

    def draw(self) -> Figure:
        """Redraw every panel from the recorded metrics; returns the matplotlib figure."""
        for ax, (key, label) in zip(self.axes, self.panels.items(), strict=True):
            ax.clear()
            points = [(s, m[key]) for s, m in self.history if m.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), linewidth=1.5, color="tab:blue" if key != "gold" else "tab:green")
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        self.figure.suptitle(self.title)
        return self.figure


def bar_by_family(stages: dict[str, dict[str, float]], title: str = "gold score by task family",
                  show: bool = True) -> Figure:
    """Grouped bars of a score per task family, one colour per stage.

    `stages` maps a stage name ('base', 'sft', ...) to its `{family: score}` (as from
    `GoldEval.by_family()`); families are shown in the order of the first stage.
    """
    families = list(next(iter(stages.values()), {}))
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(stages))
    for k, (name, scores) in enumerate(stages.items()):
        xs = [i + (k - (len(stages) - 1) / 2) * width for i in range(len(families))]
        ax.bar(xs, [scores.get(f, 0.0) for f in families], width=width, label=name)
    ax.set_xticks(range(len(families)), [f.replace("_", "\n") for f in families], fontsize=8)
    ax.set(title=title, ylabel="mean gold (0-1)", ylim=(0, 1.2))  # headroom for the legend
    ax.grid(axis="y", alpha=0.3)
    if len(stages) > 1:
        ax.legend(loc="upper center", ncol=len(stages), frameon=False)
    if show:
        display_figure(fig)
    return fig


def reward_vs_length(rows: list[dict], slope: float | None = None, show: bool = True) -> Figure:
    """Reward-model score against reply length, one colour per band of gold score, with the
    pooled within-band trend: at equal gold, a rising line is a bias the RM learned from its
    labelers. `rows` hold `score`, `tokens` and `gold` (as in RUN_DIR/rm/heldout_scores.jsonl)."""
    bands = [(0.0, 0.3, "gold < 0.3"), (0.3, 0.7, "0.3 ≤ gold < 0.7"), (0.7, 1.01, "gold ≥ 0.7")]
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for lo, hi, label in bands:
        pts = [(r["tokens"], r["score"]) for r in rows if lo <= r["gold"] < hi]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        dots = ax.scatter(xs, ys, s=8, alpha=0.35, label=f"{label} ({len(pts)})")
        if slope is not None and len(pts) > 1:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            x0, x1 = min(xs), max(xs)
            ax.plot([x0, x1], [my + slope * (x0 - mx), my + slope * (x1 - mx)],
                    color=dots.get_facecolor()[0], alpha=1.0, linewidth=2)
    title = "reward vs reply length at equal gold"
    if slope is not None:
        title += f": {slope:+.3f} per token"
    ax.set(title=title, xlabel="reply length (tokens)", ylabel="RM score (SFT replies: mean 0, std 1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if show:
        display_figure(fig)
    return fig


# --- figures of a finished run (the eval stage's measurements; also embedded by report.py) ----


def _number(x: object) -> bool:
    """True for an int or float that can be plotted (None, NaN and bools are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # render off-screen: no GUI backend is ever needed
    return fig


def overopt_gold_fit(kind: str, gold0: float, alpha: float, beta: float, d):
    """Gao, Schulman & Hilton (2022)'s gold-score curves against d = sqrt(KL): best-of-n
    `gold0 + d(alpha - beta d)`, RL `gold0 + d(alpha - beta ln d)` (0 at d = 0). `d` is a
    float or a numpy array; the result has the same shape."""
    d = np.asarray(d, dtype=float)
    if kind == "bon":
        return gold0 + d * (alpha - beta * d)
    # d ln d -> 0 as d -> 0; clip before the log so d = 0 gives no warning.
    return gold0 + alpha * d - beta * np.where(d > 0, d * np.log(np.maximum(d, 1e-12)), 0.0)


OVEROPT_PANELS = {"bon": "best-of-n", "rl": "RL (PPO checkpoints)"}
"""The over-optimisation plot's panels: key in the eval's `overopt` -> panel title."""


def overopt_plot(overopt: dict, show: bool = True) -> Figure:
    """Gold and proxy score against d = sqrt(KL to SFT), as in Gao, Schulman & Hilton (2022):
    one panel for best-of-n, one for the PPO checkpoints (those present in `overopt`).

    Measured gold is drawn as solid markers with its fitted curve, the proxy (the RM's score,
    on its own scale: SFT replies mean 0, std 1) as hollow markers on a twin y axis, and the
    highest measured gold as a star. Gold peaking and falling while the proxy keeps rising is
    over-optimisation of the reward model.
    """
    kinds = [k for k in OVEROPT_PANELS if isinstance(overopt.get(k), dict) and overopt[k].get("points")]
    fig = _new_figure((5.2 * max(1, len(kinds)), 3.8))
    if not kinds:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no over-optimisation measurements", ha="center", va="center")
        ax.set_axis_off()
        if show:
            display_figure(fig)
        return fig
    axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
    twins = []
    for ax, kind in zip(axes, kinds, strict=True):
        data = overopt[kind]
        points = [p for p in data["points"] if _number(p.get("d"))]
        gold_pts = [(p["d"], p["gold"]) for p in points if _number(p.get("gold"))]
        proxy_pts = [(p["d"], p["proxy"]) for p in points if _number(p.get("proxy"))]
        twin = ax.twinx()
        if twins:
            twin.sharey(twins[0])  # proxies share one scale, as the gold panels do
        twins.append(twin)
        if gold_pts:
            ax.plot(*zip(*gold_pts, strict=True), "o", color="tab:green", label="gold (measured)")
        if proxy_pts:
            twin.plot(*zip(*proxy_pts, strict=True), "o:", color="tab:blue", markerfacecolor="none",
                      linewidth=0.8, label="proxy (RM)")
        fit = data.get("fit") or {}
        if gold_pts and _number(fit.get("alpha")) and _number(fit.get("beta")):
            gold0 = next((g for d, g in gold_pts if d == 0), gold_pts[0][1])
            grid = np.linspace(0.0, max(d for d, _ in gold_pts), 200)
            ax.plot(grid, overopt_gold_fit(kind, gold0, fit["alpha"], fit["beta"], grid),
                    "-", color="tab:green", alpha=0.6, label="gold fit")
        peak = data.get("gold_peak") or {}
        if _number(peak.get("d")) and _number(peak.get("gold")):
            where = f"n={peak['n']}" if "n" in peak else f"step {peak.get('step', '?')}"
            ax.plot([peak["d"]], [peak["gold"]], "*", color="tab:red", markersize=14, label="gold peak")
            ax.annotate(f"peak {peak['gold']:.3f} ({where})", (peak["d"], peak["gold"]),
                        xytext=(6, 8), textcoords="offset points", fontsize=8, color="tab:red")
        ax.set(title=OVEROPT_PANELS[kind], xlabel="d = √KL to SFT (KL in nats)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("gold score (0-1)", color="tab:green")
    twins[-1].set_ylabel("proxy (RM units: SFT mean 0, std 1)", color="tab:blue")
    for twin in twins[:-1]:
        twin.tick_params(labelright=False)
    handles = [h for a in (axes[0], twins[0]) for h in a.get_legend_handles_labels()[0]]
    axes[0].legend(handles=handles, fontsize=8, loc="lower right")
    if show:
        display_figure(fig)
    return fig


ROUND_PANELS = {
    "gold": "gold score",
    "proxy_reward": "proxy reward (RM)",
    "kl_to_sft": "KL to SFT (nats per reply)",
    "reply_words": "reply length (words)",
    "rm_accuracy": "RM accuracy on fresh comparisons",
}
"""The panels of `rounds_plot`: key of a round's figures -> panel title. 'rm_accuracy' plots
`rm_accuracy_fresh_before` (the previous RM) against `rm_accuracy_fresh` (retrained)."""


def rounds_plot(rounds: list[dict], show: bool = True) -> Figure:
    """One small panel per figure of the iterated rounds (x = round): did gold keep rising, at
    what cost in KL and length, and did retraining the RM on the new policy's comparisons make
    it more accurate on them (before vs after)? Missing values leave a gap."""
    fig = _new_figure((13.0, 2.9))
    axes = fig.subplots(1, len(ROUND_PANELS))
    series = {key: [(key, None)] for key in ROUND_PANELS}
    series["rm_accuracy"] = [("rm_accuracy_fresh_before", "before retraining"),
                             ("rm_accuracy_fresh", "after retraining")]
    for ax, (panel, title) in zip(axes, ROUND_PANELS.items(), strict=True):
        for key, label in series[panel]:
            pts = [(r["round"], r[key]) for r in rounds if _number(r.get("round")) and _number(r.get(key))]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", linewidth=1.5, label=label,
                        color="tab:green" if panel == "gold" else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if panel == "rm_accuracy" and ax.lines:
            ax.legend(fontsize=7)
    if show:
        display_figure(fig)
    return fig


BEHAVIOUR_METRICS = {
    "refusal_rate": "refuses harmful\n(want high)",
    "overrefusal_rate": "refuses harmless\n(want low)",
    "false_premise_corrected": "corrects false premise\n(want high)",
    "clarifying_rate": "asks to clarify\n(want high)",
    "phrasing_consistency": "same answer, rephrased\n(want high)",
}
"""The behaviours `behaviour_plot` shows: key in the eval's report -> axis label."""


def behaviour_plot(ev: dict, show: bool = True) -> Figure:
    """Grouped bars of the eval's behaviour rates, one group per behaviour and one colour per
    stage: where RLHF helped (refusing harmful requests) and where it did not (over-refusal,
    false premises, clarifying, consistency across phrasings). None values are left out."""
    metrics = [m for m in BEHAVIOUR_METRICS if isinstance(ev.get(m), dict)]
    stages = list(ev.get("stages") or [])
    for m in metrics:
        stages += [s for s in ev[m] if s not in stages]
    stages = [s for s in stages if any(_number(ev[m].get(s)) for m in metrics)]
    fig = _new_figure((10.0, 3.6))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(stages))
    for k, stage in enumerate(stages):
        bars = [(i + (k - (len(stages) - 1) / 2) * width, ev[m][stage])
                for i, m in enumerate(metrics) if _number(ev[m].get(stage))]
        xs, heights = zip(*bars, strict=True)
        ax.bar(xs, heights, width=width, label=stage)
    ax.set_xticks(range(len(metrics)), [BEHAVIOUR_METRICS[m] for m in metrics], fontsize=8)
    ax.set(title="behaviour on held-out prompts, by stage", ylabel="rate (0-1)", ylim=(0, 1.2))
    ax.grid(axis="y", alpha=0.3)
    if stages:
        ax.legend(loc="upper center", ncol=len(stages), frameon=False)
    if show:
        display_figure(fig)
    return fig


def verbosity_plot(words: dict[str, float], length_bias: dict[str, float] | None = None,
                   show: bool = True) -> Figure:
    """Mean reply length in words per stage or round (bars) and, if given, the reward model's
    length bias (score per extra token at equal gold) per round on a second panel: replies
    that grow as the RM's taste for length grows are reward hacking, not helpfulness."""
    panels = [(words, "mean reply length", "words")]
    if length_bias:
        panels.append((length_bias, "RM length bias at equal gold", "RM score per extra token"))
    fig = _new_figure((5.0 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (values, title, ylabel) in zip(axes, panels, strict=True):
        shown = {k: v for k, v in values.items() if _number(v)}
        bars = ax.bar(range(len(shown)), list(shown.values()), color="tab:purple", width=0.6)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_xticks(range(len(shown)), list(shown), fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set(title=title, ylabel=ylabel)
        ax.grid(axis="y", alpha=0.3)
    if show:
        display_figure(fig)
    return fig


LADDER = (("SFT", "sft_gold"), ("PPO on gold\n(reference)", "oracle_gold"),
          ("PPO on the annotators'\nexact taste (reference)", "annotator_oracle_gold"),
          ("PPO on the\nreward model", "gold"))
"""The rungs of stage ppo's reward ladder: (label, key of the report's `ppo` entry)."""


def ladder_plot(ppo: dict, show: bool = True) -> Figure:
    """Held-out gold of SFT and of the same PPO against three rewards (stage ppo's report entry):
    the gold judge, the annotators' exact utility and the learned reward model. The drop from the
    second bar to the third is what the people's biases cost; from the third to the fourth, what
    the reward model's errors cost."""
    rungs = [(label, ppo[key]) for label, key in LADDER if _number(ppo.get(key))]
    fig = _new_figure((7.5, 3.4))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(rungs)), [v for _, v in rungs], color=["#999999", "#2a9d8f", "#e9c46a", "#e76f51"][: len(rungs)])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(rungs)), [label for label, _ in rungs], fontsize=8)
    low = min(v for _, v in rungs) if rungs else 0.0
    ax.set(title="held-out gold: one PPO, three rewards", ylabel="mean gold (0-1)",
           ylim=(max(0.0, low - 0.15), 1.0))
    ax.grid(axis="y", alpha=0.3)
    if show:
        display_figure(fig)
    return fig
