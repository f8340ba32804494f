"""The map of the course and small tables that notebooks display (pure functions, no widgets)."""

from __future__ import annotations

from rlhf_course.world import FAMILIES, World, gold_score

COURSE_MAP = (
    ("00", "welcome", "hardware profile, the map of the course", "hardware, config"),
    ("01", "base model", "tokenizer + tiny pretraining (CPU) or a hub base model (GPU)",
     "world, models, pretrain"),
    ("02", "demonstrations", "trainers write both sides of a dialogue; instructions as dialogue",
     "data, widgets"),
    ("03", "SFT", "supervised fine-tuning, loss on assistant turns only", "sft"),
    ("04", "comparisons", "sample K replies to a conversation and rank them", "comparisons, widgets"),
    ("05", "reward model", "ranking loss over all K-choose-2 pairs of a prompt", "reward"),
    ("06", "PPO", "PPO with a per-token KL penalty to the SFT policy, value model, GAE", "ppo"),
    ("07", "iterate", "new comparisons on the new policy, retrain the RM, PPO again", "iterate"),
    ("08", "evaluate", "SFT vs RLHF side by side, win rates, over-optimization", "evaluate, plots"),
    ("09", "chat", "a chat box with moderation and thumbs up/down feedback", "widgets, moderation"),
    ("10", "beyond PPO", "DPO, RLOO, GRPO (TRL) on the same data and judge", "evaluate"),
)
"""(number, notebook, what happens, modules) for every notebook of the course."""


def course_map_markdown() -> str:
    """The course map as a Markdown table."""
    rows = ["| # | notebook | what happens | modules |", "|---|---|---|---|"]
    rows += [f"| {n} | {name} | {what} | `{mods}` |" for n, name, what, mods in COURSE_MAP]
    return "\n".join(rows)


def world_tour(world: World, split: str = "heldout", seed: int = 0) -> list[dict]:
    """One task per family with its ideal reply, one flawed reply and their gold verdicts.

    Rows are plain dicts so a notebook can show them as a table and a test can read them.
    """
    rows = []
    for family in FAMILIES:
        task = world.tasks(split, 1, seed=seed, families=[family])[0]
        flaw, flawed = next((k, v) for k, v in task.flawed.items() if k != "filler")
        ideal_score, flawed_score = gold_score(task, task.ideal), gold_score(task, flawed)
        rows.append({
            "family": family,
            "user": task.messages[-1]["content"],
            "ideal": task.ideal,
            "ideal gold": round(ideal_score.total, 2),
            "flaw": flaw,
            "flawed reply": flawed,
            "flawed gold": round(flawed_score.total, 2),
            "why": "; ".join(flawed_score.reasons),
        })
    return rows


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as a Markdown table (pipes in cells escaped, newlines flattened)."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ⏎ ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
