"""A tiny run folder (base standing in for SFT, demonstrations, comparisons, reward model) for
the tests of the stages after `rm`: seconds to build, the same files a real run writes."""

from pathlib import Path

TINY_PPO = {"steps": 4, "ladder": False, "batch_size": 8, "minibatch_size": 4, "max_new_tokens": 8, "eval_prompts": 200,
            "eval_batch_size": 100, "save_every": 2, "lr": 1e-3}
"""PPOConfig fields for a PPO run of a few seconds on the tiny run."""
TINY_RM = {"prompts": 16, "k": 3, "eval_prompts": 200, "max_new_tokens": 8, "batch_size": 4,
           "epochs": 1.0, "sample_batch_size": 100, "score_batch_size": 100}
"""RewardConfig fields for comparisons and a reward model of a few seconds."""


def tiny_run(run: Path) -> Path:
    """Build the tiny run in `run` (an empty folder) and return it."""
    from rlhf_course.comparisons import run_comparisons
    from rlhf_course.config import BaseConfig, RewardConfig, SFTConfig
    from rlhf_course.pretrain import run_base
    from rlhf_course.reward import run_rm
    from rlhf_course.sft import run_demos

    base = {"steps": 12, "corpus_docs": 400, "d_model": 64, "n_heads": 2, "d_ff": 128, "n_layers": 1,
            "vocab_size": 320, "batch_size": 8, "eval_prompts": 200, "max_new_tokens": 8}
    run_base(BaseConfig.preset("cpu", **base), run, progress=False)
    run_demos(SFTConfig.preset("cpu", dialogues=40), run)
    (run / "sft").mkdir()
    (run / "sft" / "model").symlink_to(run / "base" / "model")
    (run / "sft" / "samples.jsonl").symlink_to(run / "base" / "samples.jsonl")
    run_comparisons(RewardConfig.preset("cpu", **TINY_RM), run, progress=False)
    run_rm(RewardConfig.preset("cpu", **TINY_RM), run, progress=False)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of the tiny run `src` at `dst` without its ppo/ folder (symlinks resolved), so a
    PPO run there starts afresh and writes nothing into `src`."""
    import shutil

    shutil.copytree(src, dst, symlinks=False, ignore=shutil.ignore_patterns("ppo"))
    return dst


def ppo_history(run: Path, folder: str = "ppo") -> list[dict]:
    """RUN/ppo/history.jsonl's (or RUN/<folder>/'s) per-step metrics without the step's wall
    time (the one figure a rerun may change)."""
    import json

    from rlhf_course.ppo_train import HISTORY

    rows = [json.loads(line) for line in (run / folder / HISTORY).read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
