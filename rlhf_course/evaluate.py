"""Measuring a policy against the gold labeler on held-out prompts.

Every stage reports the same way: sample one reply per held-out task at the evaluation
temperature, score it with `world.gold_score`, average overall and per family. Win rates compare
two stages reply by reply on the same tasks, ties counting half.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from rlhf_course.generation import generate_replies
from rlhf_course.world import FAMILIES, Score, Task, gold_score


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


def heldout_tasks(world, cfg) -> list[Task]:
    """The held-out prompts every stage reports on: `cfg.eval_prompts` of them, seeded by
    `cfg.seed`. One definition, so that win rates compare replies to the same prompts."""
    return world.tasks("heldout", cfg.eval_prompts, seed=cfg.seed)


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
    policy's reply and gold score (columns '<name>' and '<name> gold'), like the post's panels."""
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
        rows.append(row)
    return rows
