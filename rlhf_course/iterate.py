"""Stage `iterate`: "we performed several iterations of this process".

One round, starting from the current policy (the `ppo` stage's after stage `ppo`):

1. **collect**: sample K replies of the current policy for fresh training contexts and have the
   annotators rank them; also rank its replies to fresh held-out prompts, only to measure.
2. **extend the reward model**: measure the current reward model on those held-out rankings (it
   was trained on an older policy's replies: this is how far it has fallen behind), then train it
   further on the new rankings mixed with as many replayed old ones, and measure it again.
3. **PPO** from the current policy against the extended reward model, the KL penalty still to
   the SFT policy.

Each round lives in RUN_DIR/iterate/round_N/ (comparisons.jsonl, heldout.jsonl, rm/, ppo/) and
ends by writing round.json; a re-run skips finished rounds and resumes an unfinished PPO from its
checkpoint. The last round's policy is copied to RUN_DIR/iterate/model for the stages after.
The reward model's scores keep the normalisation of stage `rm` (the SFT policy's replies average
0 with std 1), recomputed for each extended model, so proxy rewards compare across rounds.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification

from rlhf_course.comparisons import rank_with_annotators, sample_items, training_contexts
from rlhf_course.config import IterateConfig, PPOConfig, RewardConfig
from rlhf_course.hardware import use_lora
from rlhf_course.heldout import heldout_tasks, trained_prompts, win_rate
from rlhf_course.jsonl import write_jsonl
from rlhf_course.models import load_checkpoint, trainable, with_lora
from rlhf_course.ppo import run_ppo
from rlhf_course.ppo_train import PPOPaths, prompt_seed
from rlhf_course.rankings import (
    COMPARISONS,
    HELDOUT_COMPARISONS,
    HUMAN_COMPARISONS,
    load_comparisons,
)
from rlhf_course.reward import (
    NORMALISATION,
    fit,
    load_reward_model_from,
    raw_scores,
    reward_metrics,
    score_heldout,
)
from rlhf_course.runs import StageTimer, require, seed_everything, stage_dir, write_text_atomic
from rlhf_course.world import Annotators, Task, World, gold_score

ROUND = "round.json"
"""RUN_DIR/iterate/round_N/round.json: the round's metrics, written when the round is done."""
NORMALISE_ON = 1000
"""SFT replies (from stage `comparisons`) that each extended reward model is normalised on."""


def round_dir(run_dir, n: int) -> Path:
    """RUN_DIR/iterate/round_N/."""
    return Path(run_dir) / "iterate" / f"round_{n}"


def _samples(folder: Path, tasks: list[Task]) -> list[str]:
    """The held-out replies a PPO run saved in FOLDER/samples.jsonl, checked to be for `tasks`."""
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    if [r["messages"] for r in rows] != [t.prompt for t in tasks]:
        raise ValueError(f"{folder / 'samples.jsonl'} holds replies to other prompts than the held-out "
                         "evaluation set; re-run the stage that wrote it")
    return [r["reply"] for r in rows]


def _rm_metrics(rm, records: list[dict], rcfg: RewardConfig) -> dict:

    rows = score_heldout(rm, records, rcfg)
    return reward_metrics(rows, [r["ranking"] for r in records], rcfg.gold_margin)


def stage_configs(cfg: IterateConfig) -> tuple[RewardConfig, PPOConfig]:
    """The reward-model and PPO settings of a round: the profile's presets, with the round's own
    rankings, epochs, learning rate and PPO steps."""
    return (RewardConfig.preset(cfg.profile, seed=cfg.seed, prompts=cfg.prompts, epochs=cfg.rm_epochs, lr=cfg.rm_lr),
            PPOConfig.preset(cfg.profile, seed=cfg.seed, steps=cfg.ppo_steps))


def run_round(cfg: IterateConfig, run_dir, n: int, policy_path: Path, rm_dir: Path,
              previous_samples: Path, progress: bool = True,
              configs: tuple[RewardConfig, PPOConfig] | None = None) -> dict[str, Any]:
    """Round `n`: collect on the policy at `policy_path`, extend the reward model in `rm_dir`,
    PPO from the policy; returns (and writes to round.json) the round's metrics. `configs`
    replaces `stage_configs(cfg)` (tests use tiny ones)."""
    rcfg, pcfg = configs or stage_configs(cfg)
    out = round_dir(run_dir, n)
    out.mkdir(parents=True, exist_ok=True)
    # Seeded per round, so a re-run that skips finished rounds gives what one run would have.
    seed_everything(cfg.seed, f"iterate.round_{n}")
    world = World(cfg.seed)
    round_seed = cfg.seed + 1000 * n  # every round its own contexts, samples and noise
    annotators = Annotators(rcfg.annotator_sharpness, rcfg.annotator_length_bias, seed=round_seed)

    with StageTimer() as timer:
        # 1. collect: the current policy's replies, ranked, for fresh training and held-out prompts.
        tokenizer, policy = load_checkpoint(policy_path, cfg.profile)
        common = dict(temperature=rcfg.sample_temperature, max_new_tokens=rcfg.max_new_tokens,
                      oversample=rcfg.oversample, batch_size=rcfg.sample_batch_size, progress=progress)
        items, dropped = sample_items(policy, tokenizer,
                                      training_contexts(world, rcfg.prompts, rcfg.demo_fraction, round_seed),
                                      rcfg.k, seed=round_seed, id_prefix=f"r{n}", **common)
        new = rank_with_annotators(items, annotators)
        write_jsonl(out / COMPARISONS, new)
        fresh = [(t, t.prompt, "policy", len(t.messages))
                 for t in world.tasks("main", cfg.heldout_prompts, seed=round_seed + 1, exclude=trained_prompts(run_dir))]
        held_items, _ = sample_items(policy, tokenizer, fresh, rcfg.k, seed=round_seed + 1,
                                     id_prefix=f"r{n}h", **common)
        held = rank_with_annotators(held_items, annotators, first_item=10**6)
        write_jsonl(out / HELDOUT_COMPARISONS, held)
        del policy

        # 2. extend the reward model: measured before and after on the new policy's replies.
        old_rm = load_reward_model_from(rm_dir, cfg.profile)
        tokenizer = old_rm.tokenizer
        before = _rm_metrics(old_rm, held, rcfg)
        old = _all_rankings(run_dir, n)
        replay = random.Random(f"replay:{round_seed}").sample(old, min(len(old), round(cfg.rm_replay * len(new))))
        model = AutoModelForSequenceClassification.from_pretrained(
            Path(rm_dir) / "model", dtype=next(old_rm.model.parameters()).dtype)
        del old_rm
        lora, _ = use_lora(rcfg, model)
        model = with_lora(model, rcfg, "SEQ_CLS") if lora else trainable(model, False)
        fit(model, tokenizer, new + replay, rcfg, progress=progress)
        if lora:
            model = model.merge_and_unload()
        sft_replies = _normalisation_sample(run_dir, cfg)
        raw = raw_scores(model, tokenizer, [c for c, _ in sft_replies], [r for _, r in sft_replies],
                         rcfg.score_batch_size, rcfg.max_length)
        offset, scale = statistics.fmean(raw), statistics.pstdev(raw) or 1.0
        (out / "rm").mkdir(exist_ok=True)
        model.save_pretrained(out / "rm" / "model")
        tokenizer.save_pretrained(out / "rm" / "model")
        write_text_atomic(out / "rm" / NORMALISATION, json.dumps(
            {"offset": offset, "scale": scale, "max_length": rcfg.max_length,
             "on": f"{len(raw)} SFT replies from stage comparisons"}, indent=1))
        del model
        after = _rm_metrics(load_reward_model_from(out / "rm", cfg.profile), held, rcfg)

        # 3. PPO from the current policy, against the extended reward model.
        result = run_ppo(pcfg, run_dir, progress=progress,
                         paths=PPOPaths(Path(policy_path), out / "rm", out / "ppo", prompt_seed(round_seed)))

    tasks = heldout_tasks(world, pcfg, run_dir)
    previous = _samples(previous_samples, tasks)
    now = _samples(out / "ppo", tasks)
    win_prev = win_rate([gold_score(t, r).total for t, r in zip(tasks, now, strict=True)],
                        [gold_score(t, r).total for t, r in zip(tasks, previous, strict=True)])
    metrics = {
        "round": n,
        "comparisons": len(new),
        "dropped_contexts": dropped,
        "rm_train_rankings": len(new) + len(replay),
        "rm_accuracy_fresh_before": before["accuracy_annotator"],
        "rm_accuracy_fresh": after["accuracy_annotator"],
        "rm_accuracy_gold_fresh_before": before["accuracy_gold"],
        "rm_accuracy_gold_fresh": after["accuracy_gold"],
        "rm_length_bias": after["length_bias"],
        "fresh_rankings": len(held),
        "gold": result["gold"],
        "proxy_reward": result["proxy_reward"],
        "kl_to_sft": result["kl_to_sft"],
        "reply_words": result["reply_words"],
        "win_rate_vs_sft": result["win_rate_vs_sft"],
        "win_rate_vs_previous": round(win_prev, 4),
        "gold_by_family": result["gold_by_family"],
        "seconds": round(timer.seconds, 1),
    }
    write_text_atomic(out / ROUND, json.dumps(metrics, indent=1))
    return metrics


def _all_rankings(run_dir, n: int) -> list[dict]:
    """Every ranking collected before round `n`: stage `comparisons` (and a learner's own), then
    each earlier round's."""
    first = Path(run_dir) / "comparisons"
    out = load_comparisons(first / COMPARISONS)
    if (first / HUMAN_COMPARISONS).exists():
        out += load_comparisons(first / HUMAN_COMPARISONS)
    for k in range(1, n):
        out += load_comparisons(round_dir(run_dir, k) / COMPARISONS)
    return out


def _normalisation_sample(run_dir, cfg: IterateConfig) -> list[tuple[list[dict], str]]:
    """A fixed sample of the SFT policy's replies (stage `comparisons` sampled them): each
    extended reward model is normalised on the same ones, as stage `rm` was."""
    records = load_comparisons(Path(run_dir) / "comparisons" / COMPARISONS)
    pairs = [(r["context"], x) for r in records for x in r["replies"]]
    return random.Random(f"normalise:{cfg.seed}").sample(pairs, min(NORMALISE_ON, len(pairs)))


def run_iterate(cfg: IterateConfig, run_dir, progress: bool = True, on_round=None,
                configs: tuple[RewardConfig, PPOConfig] | None = None) -> dict[str, Any]:
    """Stage `iterate`: `cfg.rounds` rounds from stage `cfg.start`'s policy; returns the report's
    `iterate` figures, `rounds` holding one entry per round. `on_round(metrics)` is called after
    each round (a notebook prints the growing table). Finished rounds are not run again."""
    if cfg.rounds < 1:
        raise ValueError(f"IterateConfig.rounds = {cfg.rounds}: run at least one round")
    if cfg.start not in ("sft", "ppo"):
        raise ValueError(f"IterateConfig.start = {cfg.start!r}: start from 'sft' or 'ppo'")
    policy = require(run_dir, cfg.start, "model", profile=cfg.profile)
    for stage, name in ((cfg.start, "samples.jsonl"), ("comparisons", COMPARISONS), ("rm", "model")):
        require(run_dir, stage, name, profile=cfg.profile)
    rm_dir = Path(run_dir) / "rm"
    previous = Path(run_dir) / cfg.start
    out = stage_dir(run_dir, "iterate")
    rounds = []
    with StageTimer() as timer:
        for n in range(1, cfg.rounds + 1):
            done = round_dir(run_dir, n) / ROUND
            if done.exists():
                metrics = json.loads(done.read_text(encoding="utf-8"))
            else:
                metrics = run_round(cfg, run_dir, n, policy, rm_dir, previous, progress, configs)
            rounds.append(metrics)
            if on_round is not None:
                on_round(metrics)
            policy = round_dir(run_dir, n) / "ppo" / "model"
            rm_dir = round_dir(run_dir, n) / "rm"
            previous = round_dir(run_dir, n) / "ppo"
        final = out / "model"
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(policy, final)
        shutil.copyfile(previous / "samples.jsonl", out / "samples.jsonl")
    return {"start": cfg.start, "rounds": rounds,
            "gold_first": rounds[0]["gold"], "gold_last": rounds[-1]["gold"],
            "seconds": round(timer.seconds, 1)}

