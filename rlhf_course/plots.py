"""Plots for the notebooks: a live training curve, redrawn in place while a cell runs.

Figures are built with matplotlib's object API (no pyplot, no global backend), so they draw the
same in JupyterLab, Colab, papermill and a plain script with `MPLBACKEND=agg`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def in_notebook() -> bool:
    """True inside a running IPython kernel (JupyterLab, Colab, papermill), else False."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def display_figure(fig: Figure) -> None:
    """Show `fig` as a PNG in a notebook (every frontend renders one); nothing outside one."""
    if not in_notebook():
        return
    from IPython.display import Image, display

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
        from IPython.display import Image, display

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
    it as `live_plot=` to `ppo.train_ppo`. Missing metrics leave a gap; `history` keeps every
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
