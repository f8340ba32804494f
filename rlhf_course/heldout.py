"""The held-out protocol every stage reports by, and the comparisons built on it.

A policy is measured the same way wherever it is trained: one reply per held-out task, sampled
at the evaluation temperature, scored by the gold labeler (`world.gold_score`), averaged overall
and per family (`GoldEval`). The main held-out set (`heldout_tasks`) comes from the training
distribution but the world reserves its prompts, and each stage also checks it against the
prompts in the run's training files (`trained_prompts`); the probe (`probe_tasks`) uses
phrasings no training prompt uses. Win rates compare two policies reply by reply on the same
tasks, ties counting half.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from rlhf_course.generation import generate_replies
from rlhf_course.rankings import COMPARISONS, HUMAN_COMPARISONS
from rlhf_course.world import FAMILIES, Score, Task, gold_score, prompt_key


@dataclass
class GoldEval:
    """One policy's replies to a list of tasks and their gold verdicts."""

    tasks: list[Task]
    replies: list[str]
    scores: list[Score]

    @property
    def mean(self) -> float:
        """Mean gold score over all tasks."""
        return statistics.fmean(s.total for s in self.scores)

    def by_family(self) -> dict[str, float]:
        """Mean gold score per task family (families absent from the tasks are left out)."""
        out = {}
        for family in FAMILIES:
            vals = [s.total for t, s in zip(self.tasks, self.scores, strict=True) if t.family == family]
            if vals:
                out[family] = round(statistics.fmean(vals), 4)
        return out

    def rows(self) -> list[dict]:
        """One dict per task for a table: family, last user message, reply, gold, and why."""
        return [{"family": t.family, "user": t.messages[-1]["content"], "reply": r,
                 "gold": round(s.total, 2), "why": "; ".join(s.reasons)}
                for t, r, s in zip(self.tasks, self.replies, self.scores, strict=True)]

    def save(self, path: str | Path) -> Path:
        """Write one JSON line per task: prompt, reply, gold breakdown (for notebooks and reports)."""
        path = Path(path)
        with path.open("w", encoding="utf-8") as f:
            for t, r, s in zip(self.tasks, self.replies, self.scores, strict=True):
                f.write(json.dumps({"family": t.family, "messages": t.prompt, "reply": r,
                                    "ideal": t.ideal, "gold": s.as_dict()}) + "\n")
        return path


def gold_eval(model, tokenizer, tasks: list[Task], *, max_new_tokens: int, temperature: float,
              batch_size: int, seed: int, progress: bool = True) -> GoldEval:
    """Sample one reply per task from `model` and score each with the gold labeler."""
    replies = generate_replies(
        model, tokenizer, [t.prompt for t in tasks], max_new_tokens=max_new_tokens,
        temperature=temperature, batch_size=batch_size, seed=seed, progress=progress,
    )
    return GoldEval(tasks, replies, [gold_score(t, r) for t, r in zip(tasks, replies, strict=True)])


def heldout_tasks(world, cfg, run_dir=None) -> list[Task]:
    """The main held-out set every stage reports on: `cfg.eval_prompts` prompts of the training
    distribution that no stage trained on (unseen combinations of seen parts, as InstructGPT
    evaluated on prompts of held-out users), every family alike, seeded by `cfg.seed`. One
    definition, so that win rates compare replies to the same prompts.

    The world reserves these prompts, so no training draw yields them; with `run_dir`, any
    prompt a file of that run trained on (`trained_prompts`: a demonstration typed by hand, say)
    is left out as well and replaced by a fresh one (`excluded_count` says how many)."""
    exclude = trained_prompts(run_dir) if run_dir is not None else set()
    return world.tasks("main", cfg.eval_prompts, seed=cfg.seed, exclude=exclude)


def probe_tasks(world, cfg) -> list[Task]:
    """The generalisation probe reported beside the main figures (`*.gold_ood`): phrasings and
    entity/family pairs no training prompt uses. A 2M-parameter model carries little of its
    behaviour there; a 135M one on a T4 carries more."""
    return world.tasks("heldout", cfg.eval_prompts, seed=cfg.seed)


def trained_prompts(run_dir) -> set[str]:
    """`prompt_key` of every prompt the run's files hold as training data: each conversation
    prefix of the SFT set that an assistant turn answers, and every ranked context (simulated,
    human and each iteration's). PPO's prompts and the pretraining corpus are training draws of
    the world, which never yields a reserved prompt (tested)."""
    run_dir = Path(run_dir)
    keys: set[str] = set()
    # Not heldout.jsonl: its rankings of main held-out prompts only measure the reward model.
    files = [run_dir / "demos" / "sft_data.jsonl", run_dir / "comparisons" / COMPARISONS,
             run_dir / "comparisons" / HUMAN_COMPARISONS,
             *sorted(run_dir.glob(f"iterate/round_*/{COMPARISONS}"))]
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if "context" in record:
                keys.add(prompt_key(record["context"]))
            for i, m in enumerate(record.get("messages", ())):
                if m["role"] == "assistant" and i:
                    keys.add(prompt_key(record["messages"][:i]))
    return keys


def excluded_count(world, cfg, run_dir) -> int:
    """How many prompts of the main held-out set's first draw the run's training files hold
    (`eval_excluded` in the report): 0 unless a person typed one in by hand."""
    return len({prompt_key(t.messages) for t in world.tasks("main", cfg.eval_prompts, seed=cfg.seed)}
               & trained_prompts(run_dir))


def evaluate_policy(model, tokenizer, tasks: list[Task], cfg, progress: bool = True) -> GoldEval:
    """`gold_eval` with a stage config's evaluation settings (max_new_tokens, temperature,
    eval_batch_size, seed), the same protocol in every stage."""
    return gold_eval(model, tokenizer, tasks, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, batch_size=cfg.eval_batch_size, seed=cfg.seed,
                     progress=progress)


def saved_replies(run_dir, stage: str, tasks: list[Task]) -> list[str] | None:
    """The replies a stage saved in RUN_DIR/<stage>/samples.jsonl, if that file holds exactly
    these tasks' prompts in this order (the stage's own held-out evaluation); else None.
    Callers re-score them with the gold labeler, so both sides of a win rate share one judge."""
    path = Path(run_dir) / stage / "samples.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if [r.get("messages") for r in rows] != [t.prompt for t in tasks]:
        return None
    return [r["reply"] for r in rows]


def win_rate(a: GoldEval | list[float], b: GoldEval | list[float]) -> float:
    """Share of tasks where `a`'s reply has a higher gold score than `b`'s; ties count half.

    Both must be evaluated on the same tasks, in the same order.
    """
    sa = [s.total for s in a.scores] if isinstance(a, GoldEval) else list(a)
    sb = [s.total for s in b.scores] if isinstance(b, GoldEval) else list(b)
    if len(sa) != len(sb) or not sa:
        raise ValueError(f"win_rate needs two equally long, non-empty score lists; got {len(sa)} and {len(sb)}")
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(sa, sb, strict=True)) / len(sa)


def best_possible(tasks: list[Task]) -> float:
    """Mean gold score of the ideal replies: the ceiling any policy can reach on these tasks."""
    return statistics.fmean(gold_score(t, t.ideal).total for t in tasks)


def side_by_side(evals: dict[str, GoldEval]) -> list[dict]:
    """Rows comparing several policies on the same tasks: the user's last message, then each
    policy's reply, gold score and gold's reasons (columns '<name>', '<name> gold' and
    '<name> verdict', 'meets the rubric' when nothing cost points), like the post's panels."""
    first = next(iter(evals.values()))
    for name, ev in evals.items():
        if [t.prompt for t in ev.tasks] != [t.prompt for t in first.tasks]:
            raise ValueError(f"side_by_side: {name!r} was evaluated on other tasks than the first")
    rows = []
    for i, task in enumerate(first.tasks):
        row = {"family": task.family, "user": task.messages[-1]["content"]}
        for name, ev in evals.items():
            row[name] = ev.replies[i]
            row[f"{name} gold"] = round(ev.scores[i].total, 2)
            row[f"{name} verdict"] = "; ".join(ev.scores[i].reasons) or "meets the rubric"
        rows.append(row)
    return rows


def win_rates_by_family(a: GoldEval, b: GoldEval) -> dict[str, float]:
    """`win_rate(a, b)` overall ('all') and on each family's tasks, for the families present."""
    if [t.prompt for t in a.tasks] != [t.prompt for t in b.tasks]:
        raise ValueError("win_rates_by_family: the two evaluations are on different tasks")
    out = {"all": round(win_rate(a, b), 4)}
    for family in FAMILIES:
        idx = [i for i, t in enumerate(a.tasks) if t.family == family]
        if idx:
            out[family] = round(win_rate([a.scores[i].total for i in idx],
                                         [b.scores[i].total for i in idx]), 4)
    return out
