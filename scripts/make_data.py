"""Write the course's example datasets (data/ by default): SFT demonstrations, K-way rankings and
the preference pairs they imply, in the formats TRL and `datasets` read.

    .venv/bin/python scripts/make_data.py [--out data]

No model is trained or sampled: every reply comes from the toy world itself (`World(SEED)`), so
the files take a second to make and come out byte for byte the same on every machine.

- `demonstrations.jsonl`: what stage `demos` (notebook 02) writes, at a smaller size: simulated
  trainers' dialogues on the world's train split, mixed with the instruction set turned into
  dialogues (the cpu profile's `SFTConfig.instruction_fraction`), leaving out any prompt
  reserved for the main held-out set.
- `rankings.jsonl`: one record per train prompt, with K (the cpu profile's `RewardConfig.k`)
  replies drawn from the ones the world can write for it (the ideal reply and its flawed
  variants), ordered by the simulated annotators, in the course's comparison format.
- `preferences.jsonl`: those rankings expanded into their K-choose-2 pairs by the course's own
  converter (`rankings.preference_rows`).

What it simplifies relative to stage `comparisons` (notebook 04): there the K replies are samples
of the SFT policy, close in quality; here they are the world's ideal and flawed replies, so the
annotators' choices are easier and their agreement with gold is higher. Only train-split prompts
are used: the world never draws one reserved for the main held-out set (`World.reserved`).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from rlhf_course.comparisons import distinct_replies, rank_with_annotators
from rlhf_course.config import RewardConfig, SFTConfig
from rlhf_course.data import SimulatedTrainers, instruction_set, instruction_to_messages, mix
from rlhf_course.jsonl import write_jsonl
from rlhf_course.rankings import RankItem, annotator_agreement_on, preference_rows
from rlhf_course.world import Annotators, World

SEED = 0
"""Seeds the world, the trainers, the instruction set, the mix, the reply draws and the annotators."""
DIALOGUES = 240
"""Trainer dialogues; instructions are added so that they make up the course's share of the mix."""
RANKED_PROMPTS = 200
"""Train prompts ranked (20 per task family); each gives K-choose-2 preference pairs."""
FILES = ("demonstrations.jsonl", "rankings.jsonl", "preferences.jsonl")
"""What the script writes, and all it writes."""


def demonstrations(world: World, n_dialogues: int, seed: int) -> list[dict]:
    """Trainer dialogues plus instructions as dialogues, mixed as stage `demos` mixes them."""
    fraction = SFTConfig.preset("cpu").instruction_fraction
    dialogues = SimulatedTrainers().write(world, n_dialogues, seed=seed)
    n_instructions = round(fraction * n_dialogues / (1 - fraction))
    # The instruction set's "describe the X" prompts are not toy-world tasks, so nothing redraws
    # the few whose hash falls in the main held-out share; they are left out here (with twice
    # the instructions needed to choose from, `mix` still finds enough).
    instructions = [instruction_to_messages(r) for r in instruction_set(world, 2 * n_instructions, seed=seed)]
    instructions = [r for r in instructions if not world.reserved(r["messages"][:-1])]
    return mix(dialogues, instructions, fraction, seed=seed)


def rankings(world: World, n_prompts: int, seed: int) -> list[dict]:
    """Comparison records for `n_prompts` train prompts: K of the world's replies to each, in a
    random order, ranked by the simulated annotators (`Annotators(seed=seed)`)."""
    k = RewardConfig.preset("cpu").k
    rng = random.Random(f"make_data:{seed}")
    items = []
    for i, task in enumerate(world.tasks("train", n_prompts, seed=seed)):
        # Every family has at least four distinct replies (the ideal and three flaws).
        replies = rng.sample(distinct_replies(list(task.replies().values()), len(task.replies())), k)
        items.append(RankItem(task.prompt, replies, task, source="world", item_id=f"w-{seed}-{i:06d}"))
    records = rank_with_annotators(items, Annotators(seed=seed))
    for record in records:
        # The time of ranking would make every regeneration differ; nothing reads it back.
        del record["ranked_at"]
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data",
                        help="folder to write the three files into (default: the repo's data/)")
    args = parser.parse_args(argv)

    world = World(SEED)
    demos = demonstrations(world, DIALOGUES, SEED)
    ranked = rankings(world, RANKED_PROMPTS, SEED)
    pairs = preference_rows(ranked)
    for name, records in zip(FILES, (demos, ranked, pairs), strict=True):
        path = write_jsonl(args.out / name, records)
        print(f"{path}: {len(records)} records")
    agreed, judged = annotator_agreement_on(ranked)
    print(f"annotators order {agreed}/{judged} = {agreed / judged:.3f} of the pairs gold separates as gold does")
    return 0


if __name__ == "__main__":
    sys.exit(main())
