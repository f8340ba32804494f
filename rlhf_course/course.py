"""The map of the course and small tables that notebooks display (pure functions, no widgets)."""

from __future__ import annotations

import re

from rlhf_course.world import FAMILIES, World, gold_score

COURSE_MAP = (
    ("00", "welcome", "hardware profile, the map of the course", "hardware, config"),
    ("01", "base model", "tokenizer + tiny pretraining (CPU) or a hub base model (GPU)",
     "world, models, pretrain"),
    ("02", "demonstrations", "trainers write both sides of a dialogue; instructions as dialogue",
     "data, demo_widget"),
    ("03", "SFT", "supervised fine-tuning, loss on assistant turns only", "sft"),
    ("04", "comparisons", "sample K replies to a conversation and rank them",
     "comparisons, ranking_widget"),
    ("05", "reward model", "ranking loss over all K-choose-2 pairs of a prompt", "reward"),
    ("06", "PPO", "PPO with a per-token KL penalty to the SFT policy, value model, GAE", "ppo"),
    ("07", "iterate", "new comparisons on the new policy, retrain the RM, PPO again", "iterate"),
    ("08", "evaluate", "SFT vs RLHF side by side, win rates, over-optimization", "evaluate, plots"),
    ("09", "chat", "a chat box with moderation and thumbs up/down feedback", "chat, moderation"),
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


REFERENCES = (
    (r"\bChatGPT\b", "OpenAI (2022). Introducing ChatGPT.", "https://openai.com/index/chatgpt/"),
    (r"\bInstructGPT\b|\bOuyang\b", "Ouyang et al. (2022). Training language models to follow instructions "
     "with human feedback.", "https://arxiv.org/abs/2203.02155"),
    (r"\bPPO\b", "Schulman et al. (2017). Proximal Policy Optimization Algorithms.",
     "https://arxiv.org/abs/1707.06347"),
    (r"\bGAE\b", "Schulman et al. (2015). High-Dimensional Continuous Control Using Generalized Advantage "
     "Estimation.", "https://arxiv.org/abs/1506.02438"),
    (r"\bHuang et al\.", "Huang et al. (2024). The N+ Implementation Details of RLHF with PPO: A Case Study "
     "on TL;DR Summarization.", "https://arxiv.org/abs/2403.17031"),
    (r"\bGao(,| et al\.)", "Gao, Schulman & Hilton (2022). Scaling Laws for Reward Model Overoptimization.",
     "https://arxiv.org/abs/2210.10760"),
    (r"\bDPO\b|\bRafailov\b", "Rafailov et al. (2023). Direct Preference Optimization: Your Language Model "
     "is Secretly a Reward Model.", "https://arxiv.org/abs/2305.18290"),
    (r"\bRLOO\b|\bAhmadian\b", "Ahmadian et al. (2024). Back to Basics: Revisiting REINFORCE Style "
     "Optimization for Learning from Human Feedback in LLMs.", "https://arxiv.org/abs/2402.14740"),
    (r"\bGRPO\b|\bShao\b", "Shao et al. (2024). DeepSeekMath: Pushing the Limits of Mathematical Reasoning "
     "in Open Language Models (where GRPO was introduced).", "https://arxiv.org/abs/2402.03300"),
    (r"\bHH-RLHF\b", "Bai et al. (2022). Training a Helpful and Harmless Assistant with Reinforcement "
     "Learning from Human Feedback (the HH-RLHF comparisons).", "https://arxiv.org/abs/2204.05862"),
    (r"\bDolly\b", "Databricks (2023). databricks-dolly-15k.",
     "https://huggingface.co/datasets/databricks/databricks-dolly-15k"),
    (r"\bno_robots\b", "Hugging Face H4 (2023). No Robots.", "https://huggingface.co/datasets/HuggingFaceH4/no_robots"),
    (r"\bOpenAssistant\b", "Köpf et al. (2023). OpenAssistant Conversations: Democratizing Large Language "
     "Model Alignment.", "https://arxiv.org/abs/2304.07327"),
)
"""(pattern, citation, link) of every source the notebooks cite, in the order a references list
shows them: a notebook whose prose matches a pattern lists that source in its last cell."""


def references_markdown(text: str) -> str | None:
    """The references cell of a notebook whose prose is `text`: a Markdown list of the sources
    it cites, linked; None if it cites none."""
    cited = [(citation, link) for pattern, citation, link in REFERENCES if re.search(pattern, text)]
    if not cited:
        return None
    return "## References\n\n" + "\n".join(f"- [{citation}]({link})" for citation, link in cited)
