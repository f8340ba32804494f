"""The PPO algorithm as the course uses it: the losses and estimators (pure functions of
tensors, each tested against numbers worked out by hand), the policy and value models as modules
DDP can wrap, and rollouts as tensors. Stage `ppo` (`rlhf_course.ppo`) puts them together, one
numbered step at a time; its docstring gives the objective and the papers behind each piece.

Shapes: B replies in a batch, R reply tokens (right-padded after the end token), V vocabulary.
`mask` (B, R) is 1 on real reply tokens, the end token included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_course.generation import left_pad, right_pad, sample_ids, trim_reply
from rlhf_course.world import Task

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
