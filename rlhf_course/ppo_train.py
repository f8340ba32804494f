"""How stage `ppo` trains, step by step: load the models (or resume a checkpoint), then for each
PPO step the five numbered steps of `ppo_step` (rollout, score, KL penalty, advantages,
update), then finish (save, evaluate on the held-out prompts). The losses, models and rollouts
are in `rlhf_course.ppo_core`; `rlhf_course.ppo` is the stage that calls this.

Also here: where a run starts and writes (`PPOPaths`), checkpoints that survive a crash
mid-save, the oracle rewards of the reward ladder, and PPO's own held-out evaluation.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from rlhf_course.config import PPOConfig, RewardConfig
from rlhf_course.generation import right_pad
from rlhf_course.hardware import use_lora
from rlhf_course.heldout import GoldEval, heldout_tasks, probe_tasks, saved_replies, win_rate
from rlhf_course.hh import training_prompts
from rlhf_course.models import load_checkpoint, save_base, trainable, with_lora
from rlhf_course.ppo_core import (
    KLController,
    PolicyLogprobs,
    ValueModel,
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
    missing_eos_penalty,
    pack,
    policy_loss,
    reply_kl,
    rollout,
    value_loss,
)
from rlhf_course.rankings import COMPARISONS, load_comparisons
from rlhf_course.reward import load_reward_model_from
from rlhf_course.runs import StageStopped, require, stage_dir
from rlhf_course.sft import load_sft_data
from rlhf_course.training import resolve_precision
from rlhf_course.world import Annotators, Task, World, gold_score

HISTORY = "history.jsonl"
"""One JSON line of training metrics per PPO step, in RUN_DIR/ppo/."""
CHECKPOINT = "checkpoint"
"""RUN_DIR/ppo/checkpoint/: the last good state of an unfinished run; a re-run resumes from it."""
CURVE = "curve.jsonl"
"""Held-out gold, proxy and KL measured along training (only when `curve_every` > 0)."""
SAMPLES = "samples.jsonl"
"""The PPO policy's held-out replies with their gold breakdown (like every stage's)."""


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


class PPOStopped(StageStopped):
    """PPO stopped itself (a non-finite loss, or the KL past its ceiling); the message says
    which, where the last good checkpoint is, and what to try."""


@dataclass
class _State:
    step: int = 0
    kl_coef: float = 0.0
    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class PPOPaths:
    """Where a PPO run starts, what it is scored by and where it writes. The reference of the KL
    penalty is always RUN_DIR/sft/model, the policy the post's penalty keeps the model near."""

    policy: Path
    """The model the policy starts from (and, with `start_value` None, nothing else)."""
    reward: Path
    """A reward model folder as stage `rm` writes it: model/ and normalisation.json. The value
    model starts from its weights."""
    out: Path
    """Where the model, history, checkpoint and held-out samples go."""
    prompt_seed: int
    """Seeds the training prompts: a new round gets new prompts."""

    @classmethod
    def from_sft(cls, run_dir, out, seed: int) -> PPOPaths:
        """From RUN_DIR/sft/model, against RUN_DIR/rm/, into `out`, on the prompts of `seed`."""
        return cls(Path(run_dir) / "sft" / "model", Path(run_dir) / "rm", Path(out), prompt_seed(seed))

    @classmethod
    def stage(cls, run_dir, cfg: PPOConfig) -> PPOPaths:
        """The `ppo` stage's own: from RUN_DIR/sft/model, against RUN_DIR/rm/, into RUN_DIR/ppo/."""
        require(run_dir, "sft", "model", profile=cfg.profile)
        require(run_dir, "rm", "model", profile=cfg.profile)
        return cls.from_sft(run_dir, stage_dir(run_dir, "ppo"), cfg.seed)


def prompt_seed(seed: int) -> int:
    """The seed PPO draws its training prompts with, for a run (or round) seeded `seed`: offset
    by a prime so that they are not the prompts the same seed draws for SFT and the rankings."""
    return seed + 7919


class OracleReward:
    """A reference reward for the ladder's runs: the gold judge ('gold') or the simulated
    annotators' noise-free utility, sharpness * gold + length_bias * words ('annotators').
    Normalised like the reward model, on the SFT replies of the run's training rankings, so a KL
    coefficient means the same against every rung."""

    def __init__(self, kind: str, annotators: Annotators, offset: float = 0.0, scale: float = 1.0):
        if kind not in ("gold", "annotators"):
            raise ValueError(f"OracleReward: kind {kind!r} is not 'gold' or 'annotators'")
        self.kind, self.annotators, self.offset, self.scale = kind, annotators, offset, scale

    def raw(self, tasks: Sequence[Task], texts: Sequence[str]) -> list[float]:
        """Unnormalised rewards of `texts`, the replies to `tasks`."""
        if self.kind == "gold":
            return [gold_score(t, r).total for t, r in zip(tasks, texts, strict=True)]
        return [self.annotators.utilities(t, [r])[0] for t, r in zip(tasks, texts, strict=True)]

    def score(self, tasks: Sequence[Task], texts: Sequence[str]) -> list[float]:
        """Normalised rewards of `texts`, the replies to `tasks`."""
        return [(x - self.offset) / self.scale for x in self.raw(tasks, texts)]

    @classmethod
    def from_run(cls, kind: str, run_dir, cfg: PPOConfig) -> OracleReward:
        """The `kind` reward with the annotators of `RewardConfig`'s preset (those stage
        `comparisons` ranked with) and offset and scale from RUN_DIR/comparisons/."""
        rcfg = RewardConfig.preset(cfg.profile, seed=cfg.seed)
        oracle = cls(kind, Annotators(rcfg.annotator_sharpness, rcfg.annotator_length_bias, seed=cfg.seed))
        records = load_comparisons(require(run_dir, "comparisons", COMPARISONS, profile=cfg.profile))
        raw = [x for r in records if r.get("task")
               for x in oracle.raw([Task.from_record(r["task"])] * len(r["replies"]), r["replies"])]
        oracle.offset, oracle.scale = statistics.fmean(raw), statistics.pstdev(raw) or 1.0
        return oracle


def _training_tasks(cfg: PPOConfig, processes: int, prompt_seed: int) -> list[Task]:
    # Training prompts, disjoint in seed from the comparisons' (seed) and evaluation's (held-out).
    if cfg.track == "hh":  # every batch also holds HH-RLHF prompts (hh.PromptTask, no gold)

        return training_prompts(cfg, processes, prompt_seed)
    return World(cfg.seed).tasks("train", cfg.steps * cfg.batch_size * processes, seed=prompt_seed)


def _ptx_batches(run_dir, tokenizer, cfg: PPOConfig):
    """An endless, seeded stream of (input_ids, attention_mask) batches of SFT conversations for
    the PPO-ptx term."""
    data = load_sft_data(run_dir, cfg.profile)
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in data["messages"]]
    encoded = [ids[-tokenizer.model_max_length:] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    g = torch.Generator().manual_seed(cfg.seed)
    while True:
        order = torch.randperm(len(encoded), generator=g)[: cfg.minibatch_size].tolist()
        yield right_pad([encoded[i] for i in order], tokenizer.pad_token_id)


def _ptx_loss(model, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    labels = ids.masked_fill(attn == 0, -100)
    return model(input_ids=ids, attention_mask=attn, labels=labels, use_cache=False).loss


@dataclass
class _Run:
    """What one PPO run holds from step to step (built by `load_run`): where it is, the models
    and optimisers (wrapped by accelerate), the KL controller, the prompts, and the state a
    checkpoint saves."""

    cfg: PPOConfig
    run_dir: Path
    out: Path
    accelerator: Any
    precision: str
    state: _State
    tokenizer: Any
    ref_model: Any
    reward_model: Any
    oracle: OracleReward | None
    lora: bool
    plan: str
    policy: Any
    ref_policy: Any
    value_model: Any
    opt_policy: Any
    opt_value: Any
    resumed_from: int | None
    kl_ctl: KLController
    tasks: list
    ptx: Any
    curve_tasks: list

    @property
    def device(self):
        return self.accelerator.device

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def processes(self) -> int:
        return self.accelerator.num_processes


def load_run(cfg: PPOConfig, run_dir, paths: PPOPaths, curve_prompts: int = 0) -> _Run:
    """Everything a PPO run needs, every process seeded alike: the policy (from the checkpoint
    if there is one), the frozen SFT reference, the reward model (or the oracle the ladder trains
    against), the value model, the optimisers, the KL controller and the training prompts."""
    from accelerate import Accelerator  # accelerate takes a second to import: only when PPO trains
    from accelerate.utils import set_seed  # the same

    out = Path(paths.out)
    out.mkdir(parents=True, exist_ok=True)
    sft_path = require(run_dir, "sft", "model", profile=cfg.profile)
    cuda = cfg.profile != "cpu" and torch.cuda.is_available()
    precision = resolve_precision(cfg, "cuda" if cuda else "cpu")
    accelerator = _accelerator(Accelerator, cuda, precision)
    device, main, processes = accelerator.device, accelerator.is_main_process, accelerator.num_processes
    set_seed(cfg.seed)

    ckpt = out / CHECKPOINT
    if main:  # one process repairs a cut-off save; the others wait, then all read the same
        recover_checkpoint(out)
    accelerator.wait_for_everyone()
    resume = (ckpt / "state.pt").exists()
    # A LoRA checkpoint holds adapters only: they go back onto the model they started from.
    adapters = resume and (ckpt / "policy" / "adapter_config.json").exists()
    start = paths.policy if adapters or not resume else ckpt / "policy"
    tokenizer, model = load_checkpoint(start, cfg.profile, str(device))
    lora, plan = use_lora(cfg, model)
    if resume and adapters != lora:
        raise ValueError(f"PPO: the checkpoint in {ckpt} was trained {'with' if adapters else 'without'} "
                         f"LoRA but this run has lora={lora} ({plan}); set PPOConfig.lora={adapters} to "
                         f"resume it, or delete {ckpt} to start again")
    half = model.dtype
    model = with_lora(model, cfg, "CAUSAL_LM", ckpt / "policy" if adapters else None) if lora \
        else trainable(model, False)
    _, ref_model = load_checkpoint(sft_path, cfg.profile, str(device))
    reward_model = load_reward_model_from(paths.reward, cfg.profile, str(device))
    oracle = OracleReward.from_run(cfg.reward, run_dir, cfg) if cfg.reward != "rm" else None
    value_path = ckpt / "value" if resume and not lora else Path(paths.reward) / "model"
    value_rm = AutoModelForSequenceClassification.from_pretrained(value_path, dtype=half).to(device)
    value_rm = with_lora(value_rm, cfg, "SEQ_CLS", ckpt / "value" if adapters else None) if lora \
        else trainable(value_rm, False)
    ref_model.requires_grad_(False)
    reward_model.model.requires_grad_(False)

    policy = PolicyLogprobs(model, cfg.rollout_temperature, cfg.logprob_chunk)
    ref_policy = PolicyLogprobs(ref_model, cfg.rollout_temperature, cfg.logprob_chunk)
    value_model = ValueModel(value_rm)
    # fused: one kernel for all parameters, as in pretraining (CPU and CUDA, torch >= 2.4)
    opt_policy = torch.optim.AdamW(_trained(policy), lr=cfg.lr, weight_decay=0.0, fused=True)
    opt_value = torch.optim.AdamW(_trained(value_model), lr=cfg.value_lr, weight_decay=0.0, fused=True)
    state, resumed_from = _State(kl_coef=cfg.init_kl_coef), None
    if resume:
        saved = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        opt_policy.load_state_dict(saved["opt_policy"])
        opt_value.load_state_dict(saved["opt_value"])
        state = _State(saved["step"], saved["kl_coef"], saved["history"], saved.get("curve", []))
        resumed_from = saved["step"]
    policy, value_model, opt_policy, opt_value = accelerator.prepare(policy, value_model, opt_policy, opt_value)
    kl_ctl = KLController(state.kl_coef, cfg.target_kl, cfg.kl_horizon)
    tasks = _training_tasks(cfg, processes, paths.prompt_seed)
    ptx = _ptx_batches(run_dir, tokenizer, cfg) if cfg.ptx_coef > 0 else None
    curve_tasks = heldout_tasks(World(cfg.seed), cfg, run_dir)[:curve_prompts] if curve_prompts else []
    return _Run(cfg, Path(run_dir), out, accelerator, precision, state, tokenizer, ref_model, reward_model,
                oracle, lora, plan, policy, ref_policy, value_model, opt_policy, opt_value, resumed_from,
                kl_ctl, tasks, ptx, curve_tasks)


def measure_curve(run: _Run, step: int) -> None:
    """One point of the over-optimisation curve; one process measures, the others wait (the
    points are for a plot, not training)."""
    if run.main:
        point = curve_point(run.accelerator.unwrap_model(run.policy).model, run.ref_model, run.tokenizer,
                            run.reward_model, run.curve_tasks, run.cfg)
        run.state.curve.append({"step": step, **point})
        (run.out / CURVE).write_text("".join(json.dumps(c) + "\n" for c in run.state.curve), encoding="utf-8")
    run.accelerator.wait_for_everyone()


def ppo_step(run: _Run, step: int) -> dict:
    """One PPO step, the five numbered steps below; returns the step's metrics (also appended
    to the run's history)."""
    cfg, accelerator, device = run.cfg, run.accelerator, run.device
    started = time.perf_counter()
    first = (step * run.processes + accelerator.process_index) * cfg.batch_size
    batch_tasks = run.tasks[first : first + cfg.batch_size]

    # 1. rollout: sample a reply per prompt from the current policy (KV cache, no grad).
    with accelerator.autocast():
        ro = rollout(accelerator.unwrap_model(run.policy).model, run.tokenizer, batch_tasks, cfg.max_new_tokens,
                     cfg.rollout_temperature, cfg.batch_size, seed=cfg.seed * 1_000_003 + first)
    ids, attn, mask = (x.to(device) for x in pack(ro.prompts, ro.replies, run.tokenizer.pad_token_id))
    ended = torch.tensor(ro.ended, device=device)

    # 2. score: the reward model's normalised score, minus the penalty for never ending; the gold
    #    labeler's verdict is computed only to watch (never trained on, but in the ladder's
    #    reference runs), and only on toy-world tasks: track 'hh' prompts have none.
    proxy = torch.tensor(run.oracle.score(batch_tasks, ro.texts) if run.oracle else run.reward_model.score(
        [t.prompt for t in batch_tasks], ro.texts, batch_size=cfg.batch_size), device=device)
    scores = missing_eos_penalty(proxy, ended, cfg.missing_eos_penalty)
    gold = torch.tensor([gold_score(t, r).total for t, r in zip(batch_tasks, ro.texts, strict=True)
                         if isinstance(t, Task)], device=device)

    # 3. KL penalty: log-probs under the policy (at the rollout temperature) and the frozen SFT
    #    policy; per-token rewards = -beta * KL_t, plus the score at the last token.
    old_logprobs, old_values, rewards, kl_per_reply = _kl_penalty(run, step, ids, attn, mask, scores)

    # 4. advantages: GAE over the per-token rewards, whitened over the batch.
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask)

    # 5. update: a few epochs of minibatches; clipped policy loss + clipped value loss.
    stats = _update(run, step, ids, attn, mask, old_logprobs, old_values, advantages, returns)

    kl_coef_used = run.kl_ctl.value
    run.kl_ctl.update(kl_per_reply, cfg.batch_size * run.processes)
    local = {
        "proxy_reward": proxy.mean(), "score": scores.mean(), "gold": gold.mean(),
        "length": mask.sum(1).float().mean(), "ended": ended.float().mean(),
        **{k: torch.tensor(statistics.fmean(v)) for k, v in stats.items() if v},
    }
    real = torch.tensor([not isinstance(t, Task) for t in batch_tasks], device=device)
    if bool(real.any()):  # track 'hh': the reward model's view of each kind of prompt
        local.update(proxy_reward_toy=proxy[~real].mean(), proxy_reward_hh=proxy[real].mean())
    metrics = {"step": step + 1, "seconds": round(time.perf_counter() - started, 3),
               "kl": round(kl_per_reply, 4), "kl_coef": round(kl_coef_used, 5),
               **{k: round(accelerator.reduce(v.to(device).float(), "mean").item(), 4)
                  for k, v in local.items()}}
    run.state.history.append(metrics)
    run.state.step, run.state.kl_coef = step + 1, run.kl_ctl.value
    return metrics


def _kl_penalty(run: _Run, step: int, ids, attn, mask, scores):
    """Step 3: old log-probs and values, and the per-token rewards with the KL penalty; stops the
    run when the KL per reply is not finite or past `max_kl`."""
    cfg, accelerator = run.cfg, run.accelerator
    with torch.no_grad(), accelerator.autocast():
        old_logprobs, _ = run.policy(ids, attn, mask.shape[1])
        ref_logprobs, _ = run.ref_policy(ids, attn, mask.shape[1])
        old_values = run.value_model(ids, attn, mask.shape[1])
    old_logprobs, ref_logprobs = old_logprobs * mask, ref_logprobs * mask
    rewards, kl = kl_penalised_rewards(old_logprobs, ref_logprobs, scores, mask, run.kl_ctl.value)
    kl_per_reply = accelerator.reduce(kl.sum(1).mean(), "mean").item()
    if not math.isfinite(kl_per_reply) or kl_per_reply > cfg.max_kl:
        _stop(cfg, run.out, step, f"the mean KL to the SFT policy is {kl_per_reply:.3g} nats per reply, "
              f"past max_kl={cfg.max_kl}", "The policy has drifted where the reward model's "
              f"scores mean little. Try a larger init_kl_coef (now {cfg.init_kl_coef}) or a lower "
              f"target_kl (now {cfg.target_kl}), a lower lr (now {cfg.lr}); or raise max_kl to "
              "study over-optimisation on purpose.")
    return old_logprobs, old_values, rewards, kl_per_reply


def _update(run: _Run, step: int, ids, attn, mask, old_logprobs, old_values, advantages, returns) -> dict:
    """Step 5: `ppo_epochs` passes over the batch in shuffled minibatches, each one optimiser
    step of the clipped policy loss plus `vf_coef` x the clipped value loss (plus PPO-ptx);
    returns the per-minibatch statistics. A non-finite loss stops the run."""
    cfg, accelerator, device = run.cfg, run.accelerator, run.device
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl",
                                                     "vf_clipfrac", "entropy", "ptx_loss")}
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(cfg.batch_size, generator=g).to(device)
        for mb in order.split(cfg.minibatch_size):
            with accelerator.autocast():
                logprobs, entropy = run.policy(ids[mb], attn[mb], mask.shape[1])
                values = run.value_model(ids[mb], attn[mb], mask.shape[1])
            pg, pg_stats = policy_loss(logprobs, old_logprobs[mb], advantages[mb], mask[mb], cfg.clip_range)
            vf, vf_clip = value_loss(values, old_values[mb], returns[mb], mask[mb], cfg.clip_range_value)
            loss = pg + cfg.vf_coef * vf
            if run.ptx is not None:
                p_ids, p_attn = (x.to(device) for x in next(run.ptx))
                with accelerator.autocast():
                    ptx_loss = _ptx_loss(accelerator.unwrap_model(run.policy).model, p_ids, p_attn)
                loss = loss + cfg.ptx_coef * ptx_loss
                stats["ptx_loss"].append(ptx_loss.item())
            for name, value in (("policy loss", pg), ("value loss", vf), ("total loss", loss)):
                if not torch.isfinite(value):
                    _stop(cfg, run.out, step, f"the {name} is {value.item()}", "Try a lower lr "
                          f"(now {cfg.lr}) or value_lr (now {cfg.value_lr}), a smaller max_grad_norm "
                          f"(now {cfg.max_grad_norm}), or precision='fp32' (now {run.precision}).")
            run.opt_policy.zero_grad(set_to_none=True)
            run.opt_value.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(run.policy.parameters(), cfg.max_grad_norm)
            accelerator.clip_grad_norm_(run.value_model.parameters(), cfg.max_grad_norm)
            run.opt_policy.step()
            run.opt_value.step()
            stats["pg_loss"].append(pg.item())
            stats["vf_loss"].append(vf.item())
            stats["clipfrac"].append(pg_stats["clipfrac"].item())
            stats["approx_kl"].append(pg_stats["approx_kl"].item())
            stats["vf_clipfrac"].append(vf_clip.item())
            stats["entropy"].append(masked_mean(entropy.detach(), mask[mb]).item())
    return stats


def finish(run: _Run, progress: bool, curve_every: int) -> dict:
    """Check the data-parallel copies agree, save the trained policy (adapters merged), drop the
    checkpoint and evaluate on the held-out prompts (one process); the other processes get {}."""
    cfg, accelerator, device = run.cfg, run.accelerator, run.device
    # Data-parallel copies must end identical (DDP averages their gradients); check it.
    weights = torch.cat([p.detach().float().flatten() for p in run.policy.parameters()])
    fingerprint = torch.stack([weights.sum(), (weights * torch.arange(len(weights), device=device)).sum()])
    in_sync = bool((accelerator.gather(fingerprint[None]) == fingerprint).all())

    accelerator.wait_for_everyone()
    result: dict = {}
    if run.main:
        final = accelerator.unwrap_model(run.policy).model
        if run.lora:  # the adapters folded into the weights: a plain model, like every stage's
            final = final.merge_and_unload()
        save_base(run.out / "model", final, run.tokenizer)
        shutil.rmtree(run.out / CHECKPOINT, ignore_errors=True)
        eval_started = time.perf_counter()
        result = evaluate_ppo(final, run.ref_model, run.tokenizer, run.reward_model, run.run_dir, cfg, progress,
                              run.out)
        result["eval_seconds"] = round(time.perf_counter() - eval_started, 1)
        if curve_every > 0:
            result["curve"] = run.state.curve
        history = run.state.history
        result.update(lora=run.lora, training_plan=run.plan, train_steps=run.state.step,
                      resumed_from_step=run.resumed_from, processes=run.processes, replicas_in_sync=in_sync,
                      final_kl_coef=round(run.kl_ctl.value, 5),
                      train_gold_last=history[-1]["gold"] if history else None)
        if cfg.track == "hh":
            result["hh_prompts_per_batch"] = sum(not isinstance(t, Task) for t in run.tasks[: cfg.batch_size])
    accelerator.wait_for_everyone()
    return result


def _accelerator(accelerator_cls, cuda: bool, precision: str):
    """An Accelerator for this run's device and precision. accelerate keeps one mixed precision
    per process and refuses another; an earlier stage in the same process (TRL's trainers build
    an Accelerator, and `rlhf-course run` runs every stage in one process) may have fixed a
    different one, so that per-process choice is dropped first. The process group, if any, stays."""
    from accelerate.state import (
        AcceleratorState,  # accelerate takes a second to import: only when PPO trains
    )

    mixed = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "no")
    if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed:
        AcceleratorState._reset_state()
    return accelerator_cls(cpu=not cuda, mixed_precision=mixed)


def _trained(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates: all of them, or under LoRA the adapters and heads."""
    return [p for p in module.parameters() if p.requires_grad]


def recover_checkpoint(out: Path) -> Path | None:
    """Make OUT/checkpoint whole again after a save was cut off, and return it (None if there is
    none). `save_checkpoint` writes checkpoint.tmp, renames checkpoint to checkpoint.old, then
    checkpoint.tmp to checkpoint; a disconnect (a Colab runtime recycled, a Drive folder that
    stopped syncing) between the two renames leaves no checkpoint/. Then .old is the last good
    one, and a .tmp is trusted only if its state.pt, written last, is complete."""
    out = Path(out)
    final, old, tmp = out / CHECKPOINT, out / (CHECKPOINT + ".old"), out / (CHECKPOINT + ".tmp")
    if not (final / "state.pt").exists():
        for candidate in (tmp, old):
            if _loads(candidate / "state.pt"):
                shutil.rmtree(final, ignore_errors=True)
                candidate.rename(final)
                break
    for leftover in (tmp, old):
        if leftover.exists() and (final / "state.pt").exists():
            shutil.rmtree(leftover, ignore_errors=True)
    return final if (final / "state.pt").exists() else None


def _loads(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # truncated or unreadable: not a checkpoint to resume from
        return False
    return True


def save_checkpoint(run: _Run) -> None:
    """Write the run's state to RUN_DIR/ppo/checkpoint.tmp, then swap it in: a crash mid-save
    leaves the previous checkpoint whole."""
    accelerator, out, state = run.accelerator, run.out, run.state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp, final = out / (CHECKPOINT + ".tmp"), out / CHECKPOINT
        shutil.rmtree(tmp, ignore_errors=True)
        # The tokenizer travels with the policy so that `load_checkpoint` reads the folder alone.
        save_base(tmp / "policy", accelerator.unwrap_model(run.policy).model, run.tokenizer)
        accelerator.unwrap_model(run.value_model).model.save_pretrained(tmp / "value")
        torch.save({"step": state.step, "kl_coef": state.kl_coef, "history": state.history, "curve": state.curve,
                    "opt_policy": run.opt_policy.state_dict(), "opt_value": run.opt_value.state_dict()},
                   tmp / "state.pt")
        old = out / (CHECKPOINT + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _stop(cfg: PPOConfig, out: Path, step: int, what: str, advice: str) -> None:
    ckpt = out / CHECKPOINT / "state.pt"
    if ckpt.exists():
        last = torch.load(ckpt, map_location="cpu", weights_only=False)["step"]
        kept = (f"The last good checkpoint (after step {last}) is kept in {out / CHECKPOINT}; "
                "re-running the stage resumes from it.")
    else:
        kept = ("No checkpoint was saved yet (one is written every save_every="
                f"{cfg.save_every} steps); re-running starts from the SFT model.")
    raise PPOStopped(f"PPO stopped at step {step + 1}: {what}. Nothing from this step was saved. {kept} "
                     f"{advice}")


def curve_point(policy_model, ref_model, tokenizer, reward_model, tasks: Sequence[Task], cfg: PPOConfig) -> dict:
    """Gold, proxy reward and per-reply KL to the reference on `tasks` (held-out), one reply each
    at the evaluation temperature and seed, with d = sqrt(KL), Gao et al.'s distance."""
    ro = rollout(policy_model, tokenizer, tasks, cfg.max_new_tokens, cfg.temperature, cfg.eval_batch_size, cfg.seed)
    kl = statistics.fmean(reply_kl(PolicyLogprobs(policy_model, cfg.temperature, cfg.logprob_chunk),
                                   PolicyLogprobs(ref_model, cfg.temperature, cfg.logprob_chunk), ro,
                                   tokenizer.pad_token_id, cfg.eval_batch_size))
    proxy = reward_model.score([t.prompt for t in tasks], ro.texts, cfg.eval_batch_size)
    gold = [gold_score(t, r).total for t, r in zip(tasks, ro.texts, strict=True)]
    # A sampled estimate of KL can dip below 0 near the start; the distance treats it as 0.
    return {"kl": round(kl, 4), "d": round(math.sqrt(max(kl, 0.0)), 4), "gold": round(statistics.fmean(gold), 4),
            "proxy": round(statistics.fmean(proxy), 4),
            "words": round(statistics.fmean(len(t.split()) for t in ro.texts), 2)}


def evaluate_ppo(policy_model, ref_model, tokenizer, reward_model, run_dir, cfg: PPOConfig,
                 progress: bool = False, out: Path | None = None) -> dict:
    """The report figures of `ppo` on the held-out prompts every stage reports on: gold, proxy
    reward, the per-reply KL to SFT and the win rate against SFT's own replies (one sampled reply
    per prompt at the evaluation temperature, ties half), with a per-family table of both."""
    world = World(cfg.seed)
    tasks = heldout_tasks(world, cfg, run_dir)
    ro = rollout(policy_model, tokenizer, tasks, cfg.max_new_tokens, cfg.temperature, cfg.eval_batch_size, cfg.seed)
    kl = reply_kl(PolicyLogprobs(policy_model, cfg.temperature, cfg.logprob_chunk),
                  PolicyLogprobs(ref_model, cfg.temperature, cfg.logprob_chunk), ro, tokenizer.pad_token_id,
                  cfg.eval_batch_size)
    ppo_eval = GoldEval(tasks, ro.texts, [gold_score(t, r) for t, r in zip(tasks, ro.texts, strict=True)])
    ppo_eval.save(Path(out or Path(run_dir) / "ppo") / SAMPLES)
    # SFT's side: its stage saved replies to these very prompts; sample them again if not.
    sft_texts = saved_replies(run_dir, "sft", tasks)
    if sft_texts is None:
        sft_texts = rollout(ref_model, tokenizer, tasks, cfg.max_new_tokens, cfg.temperature,
                            cfg.eval_batch_size, cfg.seed).texts
    sft_eval = GoldEval(tasks, sft_texts, [gold_score(t, r) for t, r in zip(tasks, sft_texts, strict=True)])
    contexts = [t.prompt for t in tasks]
    proxy = reward_model.score(contexts, ro.texts, cfg.eval_batch_size, progress)
    sft_proxy = reward_model.score(contexts, sft_texts, cfg.eval_batch_size, progress)
    words = lambda texts: round(statistics.fmean(len(t.split()) for t in texts), 2)  # noqa: E731
    # The generalisation probe, beside the main figures: unseen phrasings and entity pairs.
    probe = probe_tasks(world, cfg)
    ood = {name: statistics.fmean(gold_score(t, r).total for t, r in zip(probe, rollout(
        model, tokenizer, probe, cfg.max_new_tokens, cfg.temperature, cfg.eval_batch_size, cfg.seed).texts, strict=True))
        for name, model in (("ppo", policy_model), ("sft", ref_model))}
    return {
        "gold": round(ppo_eval.mean, 4),
        "gold_ood": round(ood["ppo"], 4),
        "sft_gold_ood": round(ood["sft"], 4),
        "proxy_reward": round(statistics.fmean(proxy), 4),
        "kl_to_sft": round(statistics.fmean(kl), 4),
        "win_rate_vs_sft": round(win_rate(ppo_eval, sft_eval), 4),
        "sft_gold": round(sft_eval.mean, 4),
        "sft_proxy_reward": round(statistics.fmean(sft_proxy), 4),
        "gold_by_family": ppo_eval.by_family(),
        "sft_gold_by_family": sft_eval.by_family(),
        "reply_words": words(ro.texts),
        "sft_reply_words": words(sft_texts),
        "ended": round(statistics.fmean(ro.ended), 4),
        "eval_prompts": len(tasks),
    }


