"""One self-contained HTML page of a finished run, for an instructor to hand out.

    rlhf-course report RUN_DIR              # writes RUN_DIR/report.html
    rlhf-course report RUN_DIR --out x.html

The page is built from `RUN_DIR/report.json` alone (no checkpoint is loaded, so it takes
seconds): tables of the stages' figures and the plots of `plots.py`, embedded as PNG data URIs.
It has inline CSS and no script or external resource, so it opens offline and can be mailed or
printed. Every string from the report is HTML-escaped (replies are model output). A section whose
stage has not run is replaced by one line naming the command that runs it.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from rlhf_course import plots, runs

REPORT_HTML = "report.html"

STAGE_ORDER = ("base", "demos", "sft", "comparisons", "rm", "ppo", "iterate", "eval")
"""The course's stages in order; stages the report holds beyond these follow in its order."""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta, .note { color: #555; } .note { font-style: italic; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.reply { white-space: pre-wrap; max-width: 28em; font-family: ui-monospace, monospace; font-size: 0.9em; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
code { background: #f4f4f4; padding: 0.05em 0.3em; border-radius: 3px; }
@media print { h2 { break-before: auto; } img, table { break-inside: avoid; } }
"""


def render_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the run's HTML report to `out` (default `RUN_DIR/report.html`) and return its path.

    Raises `runs.MissingStageOutput` if the run has no report.json (no stage has finished) and
    `runs.CorruptRunFile` if it cannot be read.
    """
    run_dir = Path(run_dir)
    if not (run_dir / runs.REPORT_NAME).exists():
        where = "the run folder itself does not exist" if not run_dir.exists() else "not found"
        raise runs.MissingStageOutput(
            f"missing {run_dir / runs.REPORT_NAME} ({where}): no stage has reported into this "
            f"run folder yet. Run the stages first, e.g.\n"
            f"    rlhf-course run --out {shlex.quote(str(run_dir))}"
        )
    page = report_html(runs.read_report(run_dir), run_dir)
    path = Path(out) if out is not None else run_dir / REPORT_HTML
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.write_text_atomic(path, page)
    return path


def inline_report(path: str | os.PathLike, height: int = 900):
    """The HTML report at `path`, shown inside a notebook's output (JupyterLab, Colab): a framed
    page of its own, so its styles do not leak into the notebook's. Returns an IPython object."""
    from IPython.display import HTML  # IPython only inside a notebook

    page = Path(path).read_text(encoding="utf-8")
    # Inside a <div>: IPython warns about a bare <iframe> (it suggests IFrame, which needs a URL
    # the notebook server can serve; a run folder outside notebooks/ has none).
    return HTML(f'<div><iframe srcdoc="{html.escape(page, quote=True)}" title="the course report" '
                f'style="width: 100%; height: {int(height)}px; border: 1px solid #ccc;"></iframe></div>')


def report_html(report: dict[str, Any], run_dir: str | os.PathLike) -> str:
    """The HTML page of `report` (as read from report.json); `run_dir` appears in the commands
    that the notes of missing sections suggest."""
    # Stage entries that are not objects (a hand-edited or foreign report) are ignored.
    report = {k: v for k, v in report.items() if isinstance(v, dict)}
    ctx = _Context(report, Path(run_dir))
    sections = [
        ("Stages at a glance", _overview),
        ("Gold score by task family", _by_family),
        ("The reward model", _reward_model),
        ("One PPO, three rewards", _ladder),
        ("Iterated rounds", _iterations),
        ("Over-optimisation of the reward model", _overopt),
        ("What RLHF does not fix", _limitations),
        ("Verbosity", _verbosity),
        ("Side by side", _side_by_side),
        ("The moderation filter", _moderation),
        ("Beyond PPO: DPO, RLOO, GRPO", _beyond),
    ]
    body = [_header(ctx)]
    for title, build in sections:
        body.append(f"<section>\n<h2>{_esc(title)}</h2>\n{build(ctx)}\n</section>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{_esc(ctx.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


class _Context:
    """What every section needs: the report, the run folder and the stages in course order."""

    def __init__(self, report: dict[str, dict[str, Any]], run_dir: Path):
        self.report, self.run_dir = report, run_dir
        self.stages = [s for s in STAGE_ORDER if s in report] + [s for s in report if s not in STAGE_ORDER]
        self.title = f"RLHF course: run {run_dir.name or run_dir}"

    def entry(self, stage: str) -> dict[str, Any]:
        return self.report.get(stage) or {}

    def rounds(self) -> list[dict[str, Any]]:
        return [r for r in self.entry("iterate").get("rounds") or [] if isinstance(r, dict)]

    def run_note(self, stage: str, what: str) -> str:
        """The one line a section shows when `stage` has not run: what is missing, and how."""
        command = runs.run_command(self.run_dir, stage)
        return f'<p class="note">No {_esc(what)} in this run: run <code>{_esc(command)}</code>.</p>'


# --- sections ---------------------------------------------------------------------------------


def _header(ctx: _Context) -> str:
    def distinct(key: str) -> str:
        values = [ctx.report[s].get(key) for s in ctx.stages if ctx.report[s].get(key) is not None]
        return ", ".join(dict.fromkeys(str(v) for v in values)) or "not recorded"

    return (
        f"<h1>{_esc(ctx.title)}</h1>\n"
        f'<p class="meta">Profile: <b>{_esc(distinct("profile"))}</b> · seed: '
        f"<b>{_esc(distinct('seed'))}</b> · stages: {_esc(', '.join(ctx.stages) or 'none')}</p>\n"
        "<p>A toy world with a gold labeler: every reply can be scored exactly against the task's "
        "rubric (the <i>gold</i> score, 0-1), which no stage trains on. The reward model's score "
        "(the <i>proxy</i>) is what PPO maximises. <b>Every figure on this page is measured on "
        "held-out prompts</b>, never on the prompts a stage trained on.</p>"
    )


_OVERVIEW_COLUMNS = {
    "gold": "gold",
    "kl_to_sft": "KL to SFT (nats)",
    "proxy_reward": "proxy reward",
    "reply_words": "reply words",
    "seconds": "seconds",
}


def _overview(ctx: _Context) -> str:
    if not ctx.stages:
        return ctx.run_note("base", "stage entries")
    entries = {}
    for stage in ctx.stages:
        entry = dict(ctx.report[stage])
        rounds = ctx.rounds() if stage == "iterate" else []
        if rounds:  # the iterated policy is the last round's; the stage's time is the total
            entry = {**rounds[-1], "seconds": entry.get("seconds", rounds[-1].get("seconds"))}
        entries[stage] = entry
    win_keys = sorted({k for e in entries.values() for k, v in e.items()
                       if k.startswith("win_rate_vs_") and plots._number(v)})
    columns = {"gold": "gold", **{k: k.removeprefix("win_rate_").replace("_", " ") + " (win rate)"
                                  for k in win_keys}}
    columns.update({k: v for k, v in _OVERVIEW_COLUMNS.items() if k != "gold"})
    rows = [[stage + (f" (round {entries[stage]['round']})" if "round" in entries[stage] else "")]
            + [entries[stage][k] if plots._number(entries[stage].get(k)) else None for k in columns]
            for stage in ctx.stages]
    return (
        _table(["stage", *columns.values()], rows)
        + '<p class="meta">Win rate: share of held-out prompts where the stage\'s reply has the '
        "higher gold score (ties count half). The eval stage measures every policy on one shared "
        "prompt set; the sections below use its figures where present.</p>"
    )


def _by_family(ctx: _Context) -> str:
    stages: dict[str, dict[str, float]] = {}
    ev_families = ctx.entry("eval").get("gold_by_family")
    if isinstance(ev_families, dict) and ev_families:  # {stage: {family: gold}}, one prompt set
        candidates = list(ev_families.items())
        where = "the eval stage's held-out prompts, the same for every stage"
    else:  # each stage's own held-out evaluation
        ppo, sft = ctx.entry("ppo"), ctx.entry("sft")
        candidates = [
            ("base", ctx.entry("base").get("gold_by_family")),
            ("sft", sft.get("gold_by_family") or ppo.get("sft_gold_by_family")),
            ("ppo", ppo.get("gold_by_family")),
            ("iterate", (ctx.rounds() or [{}])[-1].get("gold_by_family")),
        ]
        where = "each stage's held-out prompts"
    for name, scores in candidates:
        if isinstance(scores, dict) and scores:
            stages[name] = {f: v for f, v in scores.items() if plots._number(v)}
    if not stages:
        return ctx.run_note("ppo", "gold scores by task family")
    families = list(dict.fromkeys(f for scores in stages.values() for f in scores))
    rows = [[f] + [scores.get(f) for scores in stages.values()] for f in families]
    return (
        f"<p>Mean gold score per task family on {where}: which kinds of request each stage "
        "improved.</p>"
        + _figure(plots.bar_by_family, stages, show=False)
        + _table(["family", *stages], rows)
    )


_RM_ROWS = {
    "accuracy_gold": "accuracy against gold (clearly different pairs)",
    "accuracy_gold_all": "accuracy against gold (every pair gold ranks)",
    "accuracy_annotator": "accuracy against the annotators' rankings",
    "train_accuracy_gold": "accuracy against gold on its own training rankings (clear pairs)",
    "annotator_accuracy_gold": "the annotators' own accuracy against gold (clear pairs)",
    "length_bias": "length bias: RM score per extra token at equal gold",
    "heldout_rankings": "held-out rankings measured",
}


def _reward_model(ctx: _Context) -> str:
    rm = ctx.entry("rm")
    rows = [[label, rm[key]] for key, label in _RM_ROWS.items() if rm.get(key) is not None]
    if not rows:
        return ctx.run_note("rm", "reward-model figures")
    families = rm.get("accuracy_gold_by_family")
    by_family = "" if not isinstance(families, dict) or not families else (
        "<p>Per family, on clear held-out pairs: the reward model, the annotators' own rankings, "
        "and a reward model that had learned their exact taste (the ceiling of learning it).</p>"
        + _table(["family", "reward model", "annotators", "their exact taste", "pairs"],
                 [[f, v.get("rm"), v.get("annotators"), v.get("utility"), v.get("pairs")]
                  for f, v in families.items() if isinstance(v, dict)]))
    return (
        "<p>The reward model learns the annotators' rankings, so it inherits their errors and "
        "their taste for length; the gap between its accuracy against the annotators and against "
        "gold is what PPO can exploit.</p>" + _table(["figure", "value"], rows) + by_family
    )


def _ladder(ctx: _Context) -> str:
    ppo = ctx.entry("ppo")
    if not plots._number(ppo.get("oracle_gold")):
        return ctx.run_note("ppo", "reference runs (PPOConfig.ladder)")
    rows = [[label.replace("\n", " "), ppo.get(key), ppo.get(key.replace("gold", "win_rate_vs_sft")
                                                         if key != "sft_gold" else "")]
            for label, key in plots.LADDER]
    return (
        "<p>The same PPO against the gold judge, against the annotators' exact taste (both "
        "reference runs, trained on a truth no real project has) and against the learned reward "
        "model, on the main held-out prompts. From the second bar to the third: what the people's "
        "biases cost; from the third to the fourth: what the reward model's errors cost.</p>"
        + _figure(plots.ladder_plot, ppo, show=False)
        + _table(["reward", "held-out gold", "win rate vs SFT"], rows)
    )


def _moderation(ctx: _Context) -> str:
    mod = ctx.entry("moderation")
    rows = [[who, part.get("precision"), part.get("recall"), part.get("tp"), part.get("fp"), part.get("fn")]
            for who, part in (("all messages", mod), ("user requests", mod.get("user") or {}),
                              ("model replies", mod.get("assistant") or {}))
            if part.get("precision") is not None or part.get("recall") is not None]
    if not rows:
        return ctx.run_note("moderation", "moderation figures")
    return ("<p>Flagging (warn or block) on held-out phrasings of the world's requests and on "
            "model replies; harmful is the positive class.</p>"
            + _table(["texts", "precision", "recall", "true pos.", "false pos.", "false neg."], rows))


_BEYOND_COLUMNS = {"gold": "gold", "win_rate_vs_sft": "win vs SFT", "kl_to_sft": "KL to SFT",
                   "proxy_reward": "proxy", "reply_words": "words", "train_seconds": "train s",
                   "peak_memory_mb": "peak MiB"}


def _beyond(ctx: _Context) -> str:
    methods = {m: r for m, r in (ctx.entry("beyond").get("methods") or {}).items() if isinstance(r, dict)}
    if not methods:
        return ctx.run_note("beyond", "comparison of PPO with DPO, RLOO and GRPO")
    rows = [[m, *(r.get(k) for k in _BEYOND_COLUMNS)] for m, r in methods.items()]
    return ("<p>Each method trained from the same SFT model in its own process (time and peak "
            "memory are its own) and judged as stage ppo is.</p>"
            + _table(["method", *_BEYOND_COLUMNS.values()], rows))


_ROUND_COLUMNS = {
    "round": "round",
    "comparisons": "new comparisons",
    "rm_train_rankings": "RM training rankings",
    "rm_accuracy_fresh_before": "RM acc. fresh, before",
    "rm_accuracy_fresh": "RM acc. fresh, after",
    "rm_accuracy_gold_fresh_before": "RM acc. vs gold, fresh, before",
    "rm_accuracy_gold_fresh": "RM acc. vs gold, fresh, after",
    "rm_length_bias": "RM length bias",
    "gold": "gold",
    "proxy_reward": "proxy",
    "kl_to_sft": "KL to SFT",
    "reply_words": "words",
    "win_rate_vs_sft": "win vs SFT",
    "win_rate_vs_previous": "win vs previous",
    "seconds": "seconds",
}


def _iterations(ctx: _Context) -> str:
    rounds = ctx.rounds()
    if not rounds:
        return ctx.run_note("iterate", "iterated rounds")
    start = ctx.entry("iterate").get("start")
    columns = {k: v for k, v in _ROUND_COLUMNS.items() if any(r.get(k) is not None for r in rounds)}
    return (
        f"<p>Each round collects fresh comparisons of the current policy's replies, retrains the "
        f"reward model on them and runs PPO again (starting from <b>{_esc(start or '?')}</b>). "
        "'Fresh, before' is the previous reward model's accuracy on the new comparisons: low "
        "values mean the policy had moved where that model was not trained.</p>"
        + _table(list(columns.values()), [[r.get(k) for k in columns] for r in rounds])
        + _figure(plots.rounds_plot, rounds, show=False)
    )


def _overopt(ctx: _Context) -> str:
    overopt = ctx.entry("eval").get("overopt")
    kinds = [k for k in plots.OVEROPT_PANELS
             if isinstance((overopt or {}).get(k), dict) and overopt[k].get("points")]
    if not kinds:
        return ctx.run_note("eval", "over-optimisation measurements")
    rows, notes = [], []
    for kind in kinds:
        data = overopt[kind]
        if (data.get("fit") or {}).get("note"):
            notes.append(f"<p class=\"meta\">{_esc(plots.OVEROPT_PANELS[kind])}: no fit "
                         f"({_esc(data['fit']['note'])}).</p>")
        fit, peak = data.get("fit") or {}, data.get("gold_peak") or {}
        at = f"n = {peak['n']}" if "n" in peak else f"step {peak['step']}" if "step" in peak else None
        gold0 = next((p.get("gold") for p in data["points"] if p.get("d") == 0), data["points"][0].get("gold"))
        rows.append([plots.OVEROPT_PANELS[kind], len(data["points"]), data.get("prompts"), gold0, fit.get("alpha"),
                     fit.get("beta"), fit.get("peak_d"), peak.get("gold"), peak.get("d"), at,
                     (data.get("end") or {}).get("gold"), data.get("init_kl_coef")])
    return (
        "<p>Gold and proxy against d = √KL to the SFT policy, after Gao, Schulman &amp; Hilton "
        "(2022), <i>Scaling Laws for Reward Model Overoptimization</i>. Best-of-n picks the "
        "RM's favourite of n SFT replies (KL = ln n − (n−1)/n); RL is PPO's checkpoints. Fitted "
        "gold: best-of-n gold₀ + d(α − βd), RL gold₀ + d(α − β ln d). While the proxy keeps "
        "rising, gold peaks and falls: optimising the reward model past that point makes the "
        "replies worse.</p>"
        + _table(["method", "points", "prompts", "gold at d=0", "α", "β", "fitted peak d",
                  "measured gold peak", "at d", "at", "gold at end", "initial KL coef"], rows)
        + "".join(notes)
        + _figure(plots.overopt_plot, overopt, show=False)
    )


def _limitations(ctx: _Context) -> str:
    ev = ctx.entry("eval")
    metrics = [m for m in plots.BEHAVIOUR_METRICS if isinstance(ev.get(m), dict) and ev[m]]
    if not metrics:
        return ctx.run_note("eval", "behaviour measurements")
    stages = list(dict.fromkeys([*(ev.get("stages") or []), *(s for m in metrics for s in ev[m])]))
    rows = [[plots.BEHAVIOUR_METRICS[m].replace("\n", " ")] + [ev[m].get(s) for s in stages]
            for m in metrics]
    for key, label in (("gold", "mean gold"), ("reply_words", "reply words")):
        if isinstance(ev.get(key), dict):
            rows.append([label] + [ev[key].get(s) for s in stages])
    counts = ", ".join(f"{_count(ev[k])} {k.replace('_', ' ')}" for k in ("behaviour_prompts", "phrasing_questions")
                       if ev.get(k) is not None)
    return (
        "<p>RLHF optimises what the labelers rewarded. It teaches refusing harmful requests, "
        "but the same pressure makes a model refuse harmless ones, go along with a false "
        "premise, guess rather than ask, and answer one question differently when it is "
        f"rephrased. Measured by the gold labeler{f' on {_esc(counts)}' if counts else ''}.</p>"
        + _table(["behaviour", *stages], rows)
        + _figure(plots.behaviour_plot, ev, show=False)
        + _win_rates(ev)
    )


def _win_rates(ev: dict[str, Any]) -> str:
    parts = []
    for key in ("win_rate_vs_sft", "win_rate_vs_previous"):
        table = ev.get(key)
        if not isinstance(table, dict) or not table:
            continue
        # A stage's win rate is {family: rate} with 'all' among them, or just the overall rate.
        table = {s: v if isinstance(v, dict) else {"all": v} for s, v in table.items()
                 if isinstance(v, dict) or plots._number(v)}
        stages = list(table)
        families = list(dict.fromkeys(f for s in stages for f in table[s]))
        families.sort(key=lambda f: f != "all")  # 'all' first, the families in their order
        rows = [[s] + [table[s].get(f) for f in families] for s in stages]
        what = "the SFT policy" if key == "win_rate_vs_sft" else "the previous stage"
        parts.append(f"<h3>Win rate against {what}</h3>" + _table(["stage", *families], rows))
    return "\n".join(parts)


def _verbosity(ctx: _Context) -> str:
    words: dict[str, float] = {}
    ev_words = ctx.entry("eval").get("reply_words")
    if isinstance(ev_words, dict) and ev_words:
        words.update(ev_words)
    else:
        for stage in ("base", "sft", "ppo"):
            value = ctx.entry(stage).get("reply_words")
            if stage == "sft" and value is None:
                value = ctx.entry("ppo").get("sft_reply_words")
            if value is not None:
                words[stage] = value
    bias: dict[str, float] = {}
    if ctx.entry("rm").get("length_bias") is not None:
        bias["rm"] = ctx.entry("rm")["length_bias"]
    for r in ctx.rounds():
        if r.get("reply_words") is not None:
            words[f"round {r.get('round', '?')}"] = r["reply_words"]
        if r.get("rm_length_bias") is not None:
            bias[f"round {r.get('round', '?')}"] = r["rm_length_bias"]
    # The eval stage's own copies ({'round_1': ...}) say the same; they fill in what is missing.
    for source, target in (("reply_words_by_round", words), ("length_bias", bias)):
        for key, value in (ctx.entry("eval").get(source) or {}).items():
            target.setdefault(key.replace("_", " "), value)
    words = {k: v for k, v in words.items() if plots._number(v)}
    bias = {k: v for k, v in bias.items() if plots._number(v)}
    if not words:
        return ctx.run_note("eval", "reply lengths")
    # Stages first, then the first reward model, then the rounds (each retrained its own).
    names = list(dict.fromkeys([*words, *bias]))
    names.sort(key=lambda n: n.startswith("round "))
    return (
        "<p>The annotators like longer replies a little, at equal quality; the reward model "
        "learns that taste (its length bias) and PPO follows it, so replies grow without "
        "getting better. Reply length is in words; the length bias is the RM's score per extra "
        "token among replies of equal gold.</p>"
        + _table(["stage or round", "reply words", "RM length bias"],
                 [[n, words.get(n), bias.get(n)] for n in names])
        + _figure(plots.verbosity_plot, words, bias or None, show=False)
    )


def _side_by_side(ctx: _Context) -> str:
    rows = [r for r in ctx.entry("eval").get("side_by_side") or [] if isinstance(r, dict)]
    if not rows:
        return ctx.run_note("eval", "side-by-side examples")
    # Policies are the columns 'NAME' that come with a 'NAME gold' column, in the rows' order.
    names = list(dict.fromkeys(k[: -len(" gold")] for r in rows for k in r
                               if k.endswith(" gold") and k[: -len(" gold")] in r))
    rlhf_stage = ctx.entry("eval").get("rlhf_stage")
    labels = {n: n.upper() if len(n) <= 5 else n for n in names}
    if "rlhf" in labels and rlhf_stage:
        labels["rlhf"] = f"RLHF ({rlhf_stage})"
    head = "".join(f"<th>{_esc(labels[n])} reply</th><th>gold · verdict</th>" for n in names)
    body = []
    for r in rows:
        cells = [f"<td>{_esc(r.get('family', ''))}</td>", f'<td class="reply">{_esc(r.get("user", ""))}</td>']
        for n in names:
            verdict = r.get(f"{n} verdict")
            cells.append(f'<td class="reply">{_esc(r.get(n, ""))}</td>')
            cells.append(f'<td class="num">{_fmt(r.get(f"{n} gold"))}'
                         + (f"<br>{_esc(verdict)}" if verdict else "") + "</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<p>The same held-out prompts answered by each policy, with the gold labeler's score "
        "and verdict.</p>\n<table>\n<tr><th>family</th><th>prompt</th>" + head + "</tr>\n"
        + "\n".join(body) + "\n</table>"
    )


# --- helpers ----------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _count(value: Any) -> str:
    """'60' for a count, '60 (20 harmful, 20 benign, ...)' for counts per family."""
    if isinstance(value, dict):
        total = sum(v for v in value.values() if plots._number(v))
        return f"{total} ({', '.join(f'{v} {k}' for k, v in value.items())})"
    return str(value)


def _fmt(value: Any) -> str:
    """A table cell's text: numbers to a readable precision, None as a dash, the rest escaped."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "–"
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2g}"
        # Three significant digits, keeping trailing zeros so a column's decimals line up.
        digits = 3 if abs(value) < 1 else 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
        return f"{value:.{digits}f}"
    return _esc(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    lines = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_fmt(v)}</td>' if plots._number(v) or v is None else f"<td>{_fmt(v)}</td>"
            for v in row
        )
        lines.append(f"<tr>{cells}</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(lines) + "\n</table>"


def _figure(plot: Callable[..., Figure], *args: Any, **kwargs: Any) -> str:
    """An `<img>` holding the PNG of `plot(*args, **kwargs)`, inline as a data URI."""
    buf = io.BytesIO()
    plot(*args, **kwargs).savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(plot.__name__)}" src="data:image/png;base64,{data}">'
