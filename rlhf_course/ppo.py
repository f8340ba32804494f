"""Stage `ppo`: the SFT policy fine-tuned with PPO against the reward model, a KL penalty
keeping it near the SFT policy.

InstructGPT's objective (Ouyang et al. 2022, eq. 2), for a prompt x and a sampled reply y:

    objective = r(x, y) - beta * log(pi_RL(y | x) / pi_SFT(y | x))  [+ gamma * pretraining LM term]

Following Ziegler et al. (2019) the KL term is paid per token: every reply token t gets reward
-beta * (log pi(y_t) - log pi_SFT(y_t)), and the reward model's score is added at the last
token. PPO (Schulman et al. 2017) then maximises that return with a clipped surrogate, a value
model estimating the return of each prefix, and GAE advantages (Schulman et al. 2016). The
details below follow what "The N Implementation Details of RLHF with PPO" (Huang et al. 2024)
found OpenAI's code to do: log-probs at the sampling temperature, the value model initialised
from the reward model, advantages whitened per batch, a penalty for replies that never end,
the reward model's output normalised (stage `rm`), and an adaptive KL coefficient.

One PPO step reads top to bottom in `train_ppo` as numbered steps. The losses and estimators
are pure functions of tensors, each tested against numbers worked out by hand.

What it simplifies relative to InstructGPT: one tiny model on the cpu track (policy and value
are separate copies, as there); no PPO-ptx data other than the demonstrations (the pretraining
term, off by default, uses the SFT data as its "pretraining distribution"); advantages are
whitened on each process's own rollouts.

Shapes: B replies in a batch, R reply tokens (right-padded after the end token), V vocabulary.
`mask` (B, R) is 1 on real reply tokens, the end token included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification

from rlhf_course.config import PPOConfig, RewardConfig, parse_field
from rlhf_course.generation import left_pad, right_pad, sample_ids, trim_reply
from rlhf_course.hardware import use_lora
from rlhf_course.heldout import GoldEval, heldout_tasks, probe_tasks, saved_replies, win_rate
from rlhf_course.hh import training_prompts
from rlhf_course.models import load_checkpoint, save_base, trainable, with_lora
from rlhf_course.rankings import COMPARISONS, load_comparisons
from rlhf_course.reward import load_reward_model_from
from rlhf_course.runs import StageStopped, StageTimer, require, stage_dir, update_report
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
# Pure functions: masks, KL-penalised rewards, GAE, whitening, the two clipped losses
# --------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (over all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`x` scaled to unit variance over the masked positions (and shifted to mean 0 unless
    `shift_mean` is False); padding comes back as 0. The variance is the unbiased one."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def response_mask(tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B, R) 1 on each row's tokens up to and including its first end token, 0 after it.
    A row without an end token is all ones (it was cut at the length limit)."""
    is_eos = (tokens == eos_token_id).long()
    after = is_eos.cumsum(1) - is_eos  # end tokens strictly before this position
    return (after == 0).long()


def kl_penalised_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (B, R) and per-token KL estimates (B, R).

    Ziegler et al. (2019), eq. 2 / InstructGPT eq. 2, paid per token:
    reward_t = -kl_coef * (logprobs_t - ref_logprobs_t), plus the reward model's score at the
    last real token. `logprobs - ref_logprobs` is the sampled estimate of KL(pi || pi_SFT)
    (its sum over a reply is unbiased for the reply's KL).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """Scores with `penalty` subtracted from replies that hit the length limit without an end
    token, so the policy cannot learn to ramble past it (Huang et al. 2024, detail 5)."""
    return scores - penalty * (~ended.bool()).to(scores.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (B, R) (Schulman et al. 2016, eq. 16).

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = sum_l (gamma * lam)^l * delta_{t+l}; the value
    after a reply's last token is 0 (the episode ends). Returns are A_t + V_t, the value
    model's regression targets.
    """
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised.

    ratio = pi(y_t) / pi_old(y_t); loss = mean_t max(-A_t * ratio, -A_t * clip(ratio, 1 +- eps)).
    Also returns the share of tokens where clipping bit (`clipfrac`) and an estimate of
    KL(pi_old || pi) (`approx_kl`, 0.5 * mean squared log-ratio) for monitoring.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
             "approx_kl": masked_mean(0.5 * log_ratio**2, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped value loss of OpenAI's PPO code (Huang et al. 2024): the new value may move at
    most `clip_range` from the rollout's value before the squared error stops rewarding it.

    loss = 0.5 * mean_t max((V_t - R_t)^2, (clip(V_t, V_old_t +- c) - R_t)^2); also returns
    the share of tokens where the clipped error was the larger (`vf_clipfrac`).
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    return loss, masked_mean((err_clipped > err).float(), mask)


@dataclass
class KLController:
    """The KL coefficient beta: fixed (`target=None`) or adaptive (Ziegler et al. 2019, §2.2).

    Adaptive: after a batch of `n` replies whose mean KL was `kl`, beta is multiplied by
    1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon, so the KL drifts toward `target` nats
    per reply over about `horizon` replies.
    """

    value: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, kl: float, n: int) -> float:
        """Adapt beta to the last batch's mean per-reply KL; returns the new value."""
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n / self.horizon
        return self.value


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor,
                         temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of `tokens` (B, R) under `logits` (B, R, V) divided by `temperature`
    (the distribution the tokens were sampled from), and that distribution's entropy (B, R)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


# --------------------------------------------------------------------------------------------
# Models as modules of (query + response) -> per-token outputs, so that DDP wraps their forward
# --------------------------------------------------------------------------------------------


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # Prompts are left-padded: count real tokens only, as in sampling.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyLogprobs(torch.nn.Module):
    """A causal LM read as a policy: `forward(input_ids, attention_mask, n_response)` returns
    the log-probs (B, R) of the last `n_response` tokens and the entropies (B, R).

    Only the logits of the R reply positions are computed (`logits_to_keep`), never the
    prompt's. With `chunk > 0` not even those are held at once: the hidden states go through
    the output layer `chunk` positions at a time, each chunk recomputed in the backward pass
    (checkpointed), so memory grows with B x chunk x V instead of B x R x V.
    """

    def __init__(self, model, temperature: float, chunk: int = 0):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.chunk = chunk

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                n_response: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = input_ids[:, -n_response:]
        if not self.chunk:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=_positions(attention_mask), use_cache=False,
                                logits_to_keep=n_response + 1).logits[:, :-1]
            return logprobs_from_logits(logits, tokens, self.temperature)
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=_positions(attention_mask),
                                          use_cache=False).last_hidden_state[:, -n_response - 1 : -1]
        head = self.model.get_output_embeddings()
        parts = []
        for start in range(0, n_response, self.chunk):
            h, tok = hidden[:, start : start + self.chunk], tokens[:, start : start + self.chunk]
            if torch.is_grad_enabled():
                parts.append(torch.utils.checkpoint.checkpoint(
                    self._chunk, head, h, tok, use_reentrant=False))
            else:
                parts.append(self._chunk(head, h, tok))
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)

    def _chunk(self, head, hidden, tokens):
        return logprobs_from_logits(head(hidden), tokens, self.temperature)


class ValueModel(torch.nn.Module):
    """The value model: the reward model's transformer and scalar head read at every reply
    position. `forward(input_ids, attention_mask, n_response)` returns V (B, R), the expected
    return from the state just before each reply token."""

    def __init__(self, reward_model):
        super().__init__()
        self.model = reward_model  # a *ForSequenceClassification; saved as one

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int) -> torch.Tensor:
        # Under LoRA the adapters sit inside the base model's layers; read that model directly.
        core = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        backbone = getattr(core, core.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=_positions(attention_mask), use_cache=False).last_hidden_state
        return core.score(hidden[:, -n_response - 1 : -1]).squeeze(-1).float()


# --------------------------------------------------------------------------------------------
# Rollouts as tensors
# --------------------------------------------------------------------------------------------


def pack(prompts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]],
         pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (B, Tq + R) batch from prompt and reply ids: prompts left-padded, replies
    right-padded. Returns `(input_ids, attention_mask, mask)`, `mask` (B, R) marking reply tokens."""
    query, query_mask = left_pad([list(p) for p in prompts], pad_token_id)
    response, mask = right_pad(list(replies), pad_token_id)
    return torch.cat([query, response], 1), torch.cat([query_mask, mask], 1), mask


@dataclass
class Rollouts:
    """Replies sampled for a list of tasks, with what scoring and evaluating them needs."""

    tasks: list[Task]
    prompts: list[list[int]]
    replies: list[list[int]]
    """Sampled ids, ending with the end token when the reply ended."""
    texts: list[str]
    ended: list[bool]


def rollout(policy_model, tokenizer, tasks: Sequence[Task], max_new_tokens: int, temperature: float,
            batch_size: int, seed: int) -> Rollouts:
    """Sample one reply per task from `policy_model` (batched, KV cache, seeded)."""
    pairs = sample_ids(policy_model, tokenizer, [t.prompt for t in tasks], max_new_tokens,
                       temperature, batch_size, seed)
    eos = tokenizer.eos_token_id
    trimmed = [trim_reply(reply, eos) for _, reply in pairs]
    return Rollouts(list(tasks), [p for p, _ in pairs], [r for _, r in pairs],
                    [tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in trimmed],
                    [ended for _, ended in trimmed])


@torch.no_grad()
def reply_kl(policy: PolicyLogprobs, ref_policy: PolicyLogprobs, rollouts: Rollouts, pad_token_id: int,
             batch_size: int = 64) -> list[float]:
    """Each reply's KL estimate to the reference: the sum over its tokens of
    log pi(y_t) - log pi_ref(y_t), both at the policy's sampling temperature (nats)."""
    device = next(policy.parameters()).device
    out: list[float] = []
    for start in range(0, len(rollouts.replies), batch_size):
        ids, attn, mask = (x.to(device) for x in pack(rollouts.prompts[start : start + batch_size],
                                                      rollouts.replies[start : start + batch_size], pad_token_id))
        logprobs, _ = policy(ids, attn, mask.shape[1])
        ref_logprobs, _ = ref_policy(ids, attn, mask.shape[1])
        out += ((logprobs - ref_logprobs) * mask).sum(1).tolist()
    return out


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
    def stage(cls, run_dir, cfg: PPOConfig) -> PPOPaths:
        """The `ppo` stage's own: from RUN_DIR/sft/model, against RUN_DIR/rm/, into RUN_DIR/ppo/."""
        sft = require(run_dir, "sft", "model", profile=cfg.profile)
        require(run_dir, "rm", "model", profile=cfg.profile)
        return cls(sft, Path(run_dir) / "rm", stage_dir(run_dir, "ppo"), cfg.seed + 7919)


def _check_config(cfg: PPOConfig) -> None:
    if cfg.eval_prompts < 200:
        raise ValueError(f"PPOConfig.eval_prompts={cfg.eval_prompts}: ppo.gold is defined on at least "
                         "200 held-out prompts; raise it")
    if cfg.rollout_temperature <= 0:
        raise ValueError(f"PPOConfig.rollout_temperature={cfg.rollout_temperature}: must be > 0, "
                         "since log-probs are computed at the sampling temperature")
    if cfg.batch_size % cfg.minibatch_size:
        raise ValueError(f"PPOConfig.batch_size={cfg.batch_size} is not a multiple of "
                         f"minibatch_size={cfg.minibatch_size}; make it one")
    if cfg.max_kl <= 0:
        raise ValueError(f"PPOConfig.max_kl={cfg.max_kl}: the KL ceiling must be positive")


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


def reward_ladder(cfg: PPOConfig, run_dir, progress: bool = True) -> dict:
    """The same PPO (prompts, steps, settings) against the gold judge and against the annotators'
    exact utility, from the SFT policy into RUN_DIR/ppo/ladder/<reward>/; their held-out figures
    as the report's `oracle_*` and `annotator_oracle_*`. Reference runs: they train on truths no
    real project has, to show what the RL budget could reach and what each imperfection costs."""
    out = {}
    stage = PPOPaths.stage(run_dir, cfg)
    for reward, prefix in (("gold", "oracle"), ("annotators", "annotator_oracle")):
        paths = dataclasses.replace(stage, out=stage.out / "ladder" / reward)
        res = train_ppo(dataclasses.replace(cfg, reward=reward, ladder=False), run_dir, progress=progress,
                        paths=paths)
        out |= {f"{prefix}_{k}": res[k] for k in ("gold", "win_rate_vs_sft", "kl_to_sft", "gold_by_family",
                                                 "reply_words", "gold_ood")}
    return out


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


def train_ppo(cfg: PPOConfig, run_dir, live_plot: Callable[[int, dict], object] | None = None,
              progress: bool = True, paths: PPOPaths | None = None, curve_every: int = 0,
              curve_prompts: int = 96) -> dict:
    """Stage `ppo`: train RUN_DIR/ppo/model from RUN_DIR/sft/model against RUN_DIR/rm/, then
    report gold, proxy reward, KL to SFT and the win rate against SFT on held-out prompts.

    Runs on one CPU, one GPU, or several processes under `accelerate launch` (the same code).
    `live_plot(step, metrics)` is called after every step (see `plots.LivePanels`). A checkpoint
    is saved every `cfg.save_every` steps; a re-run resumes from it. A non-finite loss or a KL
    past `cfg.max_kl` raises `PPOStopped` and leaves the last good checkpoint in place.

    `paths` runs PPO from another policy, against another reward model, into another folder (the
    iterations and the over-optimisation run do). `curve_every` > 0 measures gold, proxy and KL
    on `curve_prompts` held-out prompts before training and every `curve_every` steps
    (OUT/curve.jsonl, and `curve` in the result): the points of an over-optimisation plot.
    """
    from accelerate import Accelerator  # accelerate takes a second to import: only when PPO trains
    from accelerate.utils import set_seed  # the same

    _check_config(cfg)
    own_stage = paths is None  # stage `ppo` itself, not a run of iterate, eval or the ladder
    paths = paths or PPOPaths.stage(run_dir, cfg)
    out = Path(paths.out)
    out.mkdir(parents=True, exist_ok=True)
    sft_path = require(run_dir, "sft", "model", profile=cfg.profile)
    cuda = cfg.profile != "cpu" and torch.cuda.is_available()
    precision = resolve_precision(cfg, "cuda" if cuda else "cpu")
    accelerator = _accelerator(Accelerator, cuda, precision)
    device, main, processes = accelerator.device, accelerator.is_main_process, accelerator.num_processes
    set_seed(cfg.seed)

    with StageTimer() as timer:
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
        pad = tokenizer.pad_token_id

        policy = PolicyLogprobs(model, cfg.rollout_temperature, cfg.logprob_chunk)
        ref_policy = PolicyLogprobs(ref_model, cfg.rollout_temperature, cfg.logprob_chunk)
        value_model = ValueModel(value_rm)
        # fused: one kernel for all parameters, as in pretraining (CPU and CUDA, torch >= 2.4)
        opt_policy = torch.optim.AdamW(_trained(policy), lr=cfg.lr, weight_decay=0.0, fused=True)
        opt_value = torch.optim.AdamW(_trained(value_model), lr=cfg.value_lr, weight_decay=0.0, fused=True)
        state = _State(kl_coef=cfg.init_kl_coef)
        if resume:
            saved = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
            opt_policy.load_state_dict(saved["opt_policy"])
            opt_value.load_state_dict(saved["opt_value"])
            state = _State(saved["step"], saved["kl_coef"], saved["history"], saved.get("curve", []))
        policy, value_model, opt_policy, opt_value = accelerator.prepare(policy, value_model, opt_policy, opt_value)
        kl_ctl = KLController(state.kl_coef, cfg.target_kl, cfg.kl_horizon)
        tasks = _training_tasks(cfg, processes, paths.prompt_seed)
        ptx = _ptx_batches(run_dir, tokenizer, cfg) if cfg.ptx_coef > 0 else None
        curve_tasks = heldout_tasks(World(cfg.seed), cfg, run_dir)[:curve_prompts] if curve_every > 0 else []

        def measure_curve(step: int) -> None:
            # One process measures; the others wait (the points are for a plot, not training).
            if main:
                point = curve_point(accelerator.unwrap_model(policy).model, ref_model, tokenizer,
                                    reward_model, curve_tasks, cfg)
                state.curve.append({"step": step, **point})
                (out / CURVE).write_text("".join(json.dumps(c) + "\n" for c in state.curve), encoding="utf-8")
            accelerator.wait_for_everyone()

        if curve_every > 0 and not state.curve:
            measure_curve(0)

        bar = tqdm(range(state.step, cfg.steps), desc="ppo", disable=not (progress and main),
                   initial=state.step, total=cfg.steps)
        for step in bar:
            started = time.perf_counter()
            first = (step * processes + accelerator.process_index) * cfg.batch_size
            batch_tasks = tasks[first : first + cfg.batch_size]

            # 1. rollout: sample a reply per prompt from the current policy (KV cache, no grad).
            with accelerator.autocast():
                ro = rollout(accelerator.unwrap_model(policy).model, tokenizer, batch_tasks, cfg.max_new_tokens,
                             cfg.rollout_temperature, cfg.batch_size, seed=cfg.seed * 1_000_003 + first)
            ids, attn, mask = (x.to(device) for x in pack(ro.prompts, ro.replies, pad))
            n_resp = mask.shape[1]
            ended = torch.tensor(ro.ended, device=device)

            # 2. score: the reward model's normalised score, minus the penalty for never ending;
            #    the gold labeler's verdict is computed only to watch (never trained on, but in the
            #    ladder's reference runs), and only on toy-world tasks: track 'hh' prompts have none.
            proxy = torch.tensor(oracle.score(batch_tasks, ro.texts) if oracle else reward_model.score(
                [t.prompt for t in batch_tasks], ro.texts, batch_size=cfg.batch_size), device=device)
            scores = missing_eos_penalty(proxy, ended, cfg.missing_eos_penalty)
            gold = torch.tensor([gold_score(t, r).total for t, r in zip(batch_tasks, ro.texts, strict=True)
                                 if isinstance(t, Task)], device=device)

            # 3. KL penalty: log-probs under the policy (at the rollout temperature) and the frozen
            #    SFT policy; per-token rewards = -beta * KL_t, plus the score at the last token.
            with torch.no_grad(), accelerator.autocast():
                old_logprobs, _ = policy(ids, attn, n_resp)
                ref_logprobs, _ = ref_policy(ids, attn, n_resp)
                old_values = value_model(ids, attn, n_resp)
            old_logprobs, ref_logprobs = old_logprobs * mask, ref_logprobs * mask
            rewards, kl = kl_penalised_rewards(old_logprobs, ref_logprobs, scores, mask, kl_ctl.value)
            kl_per_reply = accelerator.reduce(kl.sum(1).mean(), "mean").item()
            if not math.isfinite(kl_per_reply) or kl_per_reply > cfg.max_kl:
                _stop(cfg, out, step, f"the mean KL to the SFT policy is {kl_per_reply:.3g} nats per reply, "
                      f"past max_kl={cfg.max_kl}", "The policy has drifted where the reward model's "
                      f"scores mean little. Try a larger init_kl_coef (now {cfg.init_kl_coef}) or a lower "
                      f"target_kl (now {cfg.target_kl}), a lower lr (now {cfg.lr}); or raise max_kl to "
                      "study over-optimisation on purpose.")

            # 4. advantages: GAE over the per-token rewards, whitened over the batch.
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask)

            # 5. update: a few epochs of minibatches; clipped policy loss + clipped value loss.
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl",
                                                             "vf_clipfrac", "entropy", "ptx_loss")}
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(cfg.batch_size, generator=g).to(device)
                for mb in order.split(cfg.minibatch_size):
                    with accelerator.autocast():
                        logprobs, entropy = policy(ids[mb], attn[mb], n_resp)
                        values = value_model(ids[mb], attn[mb], n_resp)
                    pg, pg_stats = policy_loss(logprobs, old_logprobs[mb], advantages[mb], mask[mb], cfg.clip_range)
                    vf, vf_clip = value_loss(values, old_values[mb], returns[mb], mask[mb], cfg.clip_range_value)
                    loss = pg + cfg.vf_coef * vf
                    if ptx is not None:
                        p_ids, p_attn = (x.to(device) for x in next(ptx))
                        with accelerator.autocast():
                            ptx_loss = _ptx_loss(accelerator.unwrap_model(policy).model, p_ids, p_attn)
                        loss = loss + cfg.ptx_coef * ptx_loss
                        stats["ptx_loss"].append(ptx_loss.item())
                    for name, value in (("policy loss", pg), ("value loss", vf), ("total loss", loss)):
                        if not torch.isfinite(value):
                            _stop(cfg, out, step, f"the {name} is {value.item()}", "Try a lower lr "
                                  f"(now {cfg.lr}) or value_lr (now {cfg.value_lr}), a smaller max_grad_norm "
                                  f"(now {cfg.max_grad_norm}), or precision='fp32' (now {precision}).")
                    opt_policy.zero_grad(set_to_none=True)
                    opt_value.zero_grad(set_to_none=True)
                    accelerator.backward(loss)
                    accelerator.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                    accelerator.clip_grad_norm_(value_model.parameters(), cfg.max_grad_norm)
                    opt_policy.step()
                    opt_value.step()
                    stats["pg_loss"].append(pg.item())
                    stats["vf_loss"].append(vf.item())
                    stats["clipfrac"].append(pg_stats["clipfrac"].item())
                    stats["approx_kl"].append(pg_stats["approx_kl"].item())
                    stats["vf_clipfrac"].append(vf_clip.item())
                    stats["entropy"].append(masked_mean(entropy.detach(), mask[mb]).item())
            kl_coef_used = kl_ctl.value
            kl_ctl.update(kl_per_reply, cfg.batch_size * processes)

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
            state.history.append(metrics)
            state.step, state.kl_coef = step + 1, kl_ctl.value
            if main:
                # Every step, so a stopped or killed run still shows its curves up to the end.
                (out / HISTORY).write_text("".join(json.dumps(h) + "\n" for h in state.history), encoding="utf-8")
                bar.set_postfix(proxy=metrics["proxy_reward"], gold=metrics["gold"], kl=metrics["kl"])
                if live_plot is not None:
                    live_plot(step + 1, metrics)
            if curve_every > 0 and ((step + 1) % curve_every == 0 or step + 1 == cfg.steps):
                measure_curve(step + 1)
            if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                _save_checkpoint(accelerator, out, tokenizer, policy, value_model, opt_policy, opt_value, state)
        bar.close()

        # Data-parallel copies must end identical (DDP averages their gradients); check it.
        weights = torch.cat([p.detach().float().flatten() for p in policy.parameters()])
        fingerprint = torch.stack([weights.sum(), (weights * torch.arange(len(weights), device=device)).sum()])
        in_sync = bool((accelerator.gather(fingerprint[None]) == fingerprint).all())

        # The trained policy, and its held-out evaluation (one process does it).
        accelerator.wait_for_everyone()
        result: dict = {}
        if main:
            final = accelerator.unwrap_model(policy).model
            if lora:  # the adapters folded into the weights: a plain model, like every stage's
                final = final.merge_and_unload()
            save_base(out / "model", final, tokenizer)
            shutil.rmtree(ckpt, ignore_errors=True)
            eval_started = time.perf_counter()
            result = evaluate_ppo(final, ref_model, tokenizer, reward_model, run_dir, cfg, progress, out)
            result["eval_seconds"] = round(time.perf_counter() - eval_started, 1)
            if curve_every > 0:
                result["curve"] = state.curve
            result.update(lora=lora, training_plan=plan, train_steps=state.step, resumed_from_step=saved["step"] if resume else None,
                          processes=processes, replicas_in_sync=in_sync, final_kl_coef=round(kl_ctl.value, 5),
                          train_gold_last=state.history[-1]["gold"] if state.history else None)
            if cfg.track == "hh":
                result["hh_prompts_per_batch"] = sum(not isinstance(t, Task) for t in tasks[: cfg.batch_size])
        accelerator.wait_for_everyone()
    if main:
        result["reward"] = cfg.reward
        result["seconds"] = round(timer.seconds, 1)
        if cfg.ladder and cfg.reward == "rm" and own_stage and processes == 1:
            with StageTimer() as ladder_timer:
                result |= reward_ladder(cfg, run_dir, progress)
            result["ladder_seconds"] = round(ladder_timer.seconds, 1)
            result["seconds"] = round(timer.seconds + ladder_timer.seconds, 1)
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
    none). `_save_checkpoint` writes checkpoint.tmp, renames checkpoint to checkpoint.old, then
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


def _save_checkpoint(accelerator, out: Path, tokenizer, policy, value_model, opt_policy, opt_value,
                     state: _State) -> None:
    """Write the state to RUN_DIR/ppo/checkpoint.tmp, then swap it in: a crash mid-save leaves
    the previous checkpoint whole."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp, final = out / (CHECKPOINT + ".tmp"), out / CHECKPOINT
        shutil.rmtree(tmp, ignore_errors=True)
        # The tokenizer travels with the policy so that `load_checkpoint` reads the folder alone.
        save_base(tmp / "policy", accelerator.unwrap_model(policy).model, tokenizer)
        accelerator.unwrap_model(value_model).model.save_pretrained(tmp / "value")
        torch.save({"step": state.step, "kl_coef": state.kl_coef, "history": state.history, "curve": state.curve,
                    "opt_policy": opt_policy.state_dict(), "opt_value": opt_value.state_dict()}, tmp / "state.pt")
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


def main(argv: Sequence[str] | None = None) -> int:
    """`accelerate launch [--num_processes N] -m rlhf_course.ppo --out RUN_DIR [--set FIELD=VALUE]`:
    the `ppo` stage in several processes (data-parallel); the main process writes the report."""
    parser = argparse.ArgumentParser(prog="python -m rlhf_course.ppo", description=main.__doc__)
    parser.add_argument("--out", required=True, help="the run folder (with sft/ and rm/ in it)")
    parser.add_argument("--profile", default="cpu", help="hardware profile (default cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a PPOConfig field, e.g. --set steps=10")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        overrides[key] = parse_field(PPOConfig, key, raw)
    try:
        result = train_ppo(PPOConfig.preset(args.profile, **overrides), args.out, progress=False)
    except PPOStopped as err:
        print(f"error: {err}")
        return 1
    if result:
        update_report(args.out, "ppo", {**result, "profile": args.profile}, replace=True)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
