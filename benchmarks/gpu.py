"""Throughput and peak memory of every training stage on the current GPU, beside the bound each
figure is limited by.

    python benchmarks/gpu.py [--model ID_OR_FOLDER] [--profile t4|a100] [--emulate-t4]
        [--batch 16,64] [--steps 5] [--warmup 2] [--prompt-len 64] [--seq-len N]
        [--stages rollout,sft,rm,logprobs,ppo] [--out benchmarks/RESULTS.md] [--smoke]

Where to run it. On Colab, after the course's setup cell, `!python benchmarks/gpu.py --out
benchmarks/RESULTS.md`: a T4 gets the t4 profile (SmolLM2-135M, fp16), an A100 the a100 profile
(Qwen2.5-0.5B, bf16), as `hardware.detect_profile()` decides. On a bigger GPU, `--emulate-t4` runs
the t4 profile the way a free Colab T4 would meet it: this process's memory is capped to 15 GiB
(`torch.cuda.set_per_process_memory_fraction`, so an allocation past it fails as on a T4) and
fp16 is forced (`RLHF_COURSE_EMULATE_T4=1` does the same, as it does for the course's stages);
the speed is still the bigger GPU's, so each fraction is printed against the T4's bound and then
against the GPU's own. Without network, pass `--model` a local folder of the model (config,
tokenizer and safetensors). `--smoke` checks the script on a CPU in seconds: a tiny random Llama
(2 layers, width 64, vocabulary 512) and tiny sizes; its figures mean nothing and every bound
reads "n/a".

What is measured. Sizes come from the profile's presets (`SFTConfig`, `RewardConfig`,
`PPOConfig`): batch sizes, sequence lengths, reply length, temperature, PPO's minibatches and
epochs, the log-prob chunk. Inputs are random token ids (no tokenizer, no data), so no reply ever
ends early and every batch decodes the full `max_new_tokens`. Each stage first runs `--warmup`
untimed repetitions (allocator growth, kernel selection, autotuning), then `--steps` timed ones,
with `torch.cuda.synchronize()` before the clock starts and before it stops. Models are copied to
the GPU per stage and freed after it, and the peak-memory counter is reset in between.

- rollout: new tokens/s of sampling with a KV cache at each `--batch` size, through the course's
  own loop `generation.sample_tokens` (what `sample_ids` and PPO's rollouts call) with weights in
  the profile's 16-bit dtype, as in evaluation. `sample_ids` itself is not used: it takes chat
  conversations through the tokenizer's template and stops once every reply has ended, which
  with an untrained model makes the number of steps a matter of chance. A prompt of
  `--prompt-len` tokens (default 64: the toy world's held-out prompts average about 80
  characters of content, some 20 tokens plus the chat markers of up to three turns), then the
  preset's `max_new_tokens`; the prefill is inside the timing.
- sft: trained tokens/s of a full step (forward, backward, gradient clipping, AdamW) of the
  causal LM on `SFTConfig.batch_size` sequences of `max_length` tokens, fp32 master weights
  under fp16 autocast with a GradScaler (t4) or bf16 autocast (a100), gradient checkpointing as
  the preset says. The course trains with TRL, which pads to the longest conversation of a batch
  rather than to `max_length`, so this is its slowest, fullest batch.
- rm: the same through `AutoModelForSequenceClassification` (one label) and InstructGPT's
  ranking loss (`reward.ranking_loss`): `RewardConfig.batch_size` rankings of K replies, all
  K x batch sequences of `max_length` tokens in one forward pass, as `reward.fit` runs them.
- logprobs: `ppo_core.PolicyLogprobs` forward and backward on a PPO minibatch, with the log-prob chunk
  off (all reply positions through the output layer at once) and at `PPOConfig.logprob_chunk`:
  the two rows' peak memory shows what chunking saves.
- ppo: samples/s of a whole PPO step built from `ppo.py`'s pieces, as `run_ppo` numbers them:
  1. rollout (sample_tokens), 2. scores from a reward model (an untrained scalar head on the
  same model, 16-bit: the cost of the pass, not a meaningful score; the course also decodes and
  re-tokenises the replies for it, which is not timed here), 3. no-grad log-probs of the policy
  and the frozen reference and values of the value model, `kl_penalised_rewards`, 4. `gae` and
  whitening, 5. `ppo_epochs` passes of minibatches, each a forward and backward of the policy
  (`policy_loss`) and the value model (`value_loss`) and a step of both AdamWs. Policy and value
  model train all their weights in fp32 under autocast (the course may pick LoRA for a model too
  big for the GPU, see `hardware.plan_training`); the reference and reward model sit in 16-bit.

Reading the output: the sizes in one line ("plan"), then a Markdown table (also appended to
`--out`, under a line naming the date, GPU, model and versions), one row per figure. A figure
whose batch does not fit in memory reads "out of memory", and the other stages still run.

- throughput: tok/s for rollout (new tokens: batch x max_new_tokens per batch), sft and rm (all
  tokens of the batch) and logprobs (reply tokens); samples/s (replies) for ppo.
- fraction of bound: for rollout, the share of the memory-bandwidth bound of decoding
  (`bench.bandwidth_fraction`: a step must read all the weights once and each sequence's KV
  cache); for sft and rm, the share of the GPU's peak dense 16-bit FLOP/s reached by model
  FLOPs (`bench.train_flops_per_token`: 6N plus attention, the PaLM paper's accounting, with
  checkpointing's recomputation not counted). Datasheet peaks are in `bench.GPU_SPECS`; an
  unknown GPU or a CPU gets "n/a". logprobs and ppo have no single bound ("n/a"): read their
  memory, and for ppo the share of a step spent in the rollout (in the setting column).
- peak memory: `torch.cuda.max_memory_allocated()` during the stage (models, optimizer state,
  activations; not the allocator's cached blocks), with its share of the GPU's memory (of 15 GiB
  when emulating a T4). On a CPU there is no such counter: the cell says "n/a" and gives the
  process's peak resident size so far (`ru_maxrss`), which never goes down between stages.

The issue's targets (where a GPU is measured): rollout on the t4 profile at batch 64 reaches at
least 25% of the bandwidth bound, and SFT at least 20% of peak FLOP/s.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from rlhf_course import bench
from rlhf_course.bench import GPUSpec, Row, format_fraction, format_memory, format_rate
from rlhf_course.config import BaseConfig, PPOConfig, RewardConfig, SFTConfig
from rlhf_course.hardware import EMULATE_T4_ENV, detect_profile, emulating_t4

STAGES = ("rollout", "sft", "rm", "logprobs", "ppo")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Plan:
    """The sizes every stage is measured at: the profile's presets, or tiny ones for --smoke."""

    profile: str
    precision: str
    """Autocast dtype of training and dtype of the 16-bit copies: fp16 (t4), bf16 (a100), fp32 (smoke)."""
    sft_batch: int
    sft_len: int
    sft_lr: float
    checkpointing: bool
    rm_rankings: int
    rm_k: int
    rm_len: int
    rm_lr: float
    prompt_len: int
    new_tokens: int
    batches: tuple[int, ...]
    temperature: float
    ppo: PPOConfig
    chunk: int
    steps: int
    warmup: int

    @property
    def training(self) -> str:
        """How sft, rm and PPO's updates run, in words."""
        return "fp32" if self.precision == "fp32" else f"fp32 weights + {self.precision} autocast"

    def describe(self) -> str:
        """The sizes in one line, printed above the table."""
        return (f"sft {self.sft_batch} x {self.sft_len}; rm {self.rm_rankings} x K={self.rm_k} x {self.rm_len}; "
                f"rollout batches {','.join(map(str, self.batches))}, prompt {self.prompt_len} + "
                f"{self.new_tokens} new; ppo batch {self.ppo.batch_size}, minibatch {self.ppo.minibatch_size}, "
                f"chunk {self.chunk}; {self.training}")


def make_plan(args, profile: str) -> Plan:
    """Read the sizes from the presets of `profile`; --smoke shrinks them to seconds on a CPU."""
    sft, rm, ppo = (c.preset(profile) for c in (SFTConfig, RewardConfig, PPOConfig))
    precision = "fp32" if args.smoke else "fp16" if profile == "t4" else "bf16"
    if args.smoke:
        ppo = PPOConfig.preset(profile, batch_size=4, minibatch_size=2, max_new_tokens=8)
        sizes = dict(sft_batch=4, sft_len=32, rm_rankings=2, rm_k=2, rm_len=32, prompt_len=8,
                     batches=(2, 4), chunk=4, checkpointing=False)
    else:
        sizes = dict(sft_batch=sft.batch_size, sft_len=args.seq_len or sft.max_length,
                     rm_rankings=rm.batch_size, rm_k=rm.k, rm_len=args.seq_len or rm.max_length,
                     prompt_len=args.prompt_len, batches=(16, 64), chunk=ppo.logprob_chunk,
                     checkpointing=sft.gradient_checkpointing)
    if args.batch:
        sizes["batches"] = tuple(bench.parse_batches(args.batch))
    steps = args.steps or (2 if args.smoke else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    return Plan(profile=profile, precision=precision, sft_lr=sft.lr, rm_lr=rm.lr,
                new_tokens=ppo.max_new_tokens, temperature=ppo.rollout_temperature, ppo=ppo,
                steps=steps, warmup=warmup, **sizes)


# --------------------------------------------------------------------------------------------
# The device: placing models, timing, memory, bounds
# --------------------------------------------------------------------------------------------


class Bench:
    """The device a run measures on, its bounds, and the helpers every stage shares."""

    def __init__(self, device: torch.device, plan: Plan, emulating: bool):
        self.device, self.plan, self.cuda = device, plan, device.type == "cuda"
        name = torch.cuda.get_device_name(device) if self.cuda else "cpu"
        self.name = name
        # Emulating: the T4's bound first, then this GPU's own (its speed is what was measured).
        self.specs: list[GPUSpec] = [s for s in (bench.spec_for(name, emulating),
                                                 bench.spec_for(name) if emulating else None) if s]
        self.capacity = None
        if self.cuda:
            total = torch.cuda.get_device_properties(device).total_memory
            self.capacity = bench.T4_MEMORY_GB * 2**30 if emulating else total
        self.half = DTYPES[plan.precision]

    def place(self, model, dtype: torch.dtype | None = None):
        """A copy of a CPU model on the device (in `dtype` if given); the CPU copy stays intact."""
        return copy.deepcopy(model).to(device=self.device, dtype=dtype)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.half, enabled=self.plan.precision != "fp32")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def fresh(self) -> None:
        """Free the last stage's tensors and restart the peak-memory counter."""
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def seconds_per_step(self, fn: Callable[[], object]) -> float:
        """Mean wall time of `fn` over `plan.steps` calls, after `plan.warmup` untimed ones."""
        for _ in range(self.plan.warmup):
            fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(self.plan.steps):
            fn()
        self.sync()
        return (time.perf_counter() - start) / self.plan.steps

    def memory(self) -> str:
        if self.cuda:
            return format_memory(torch.cuda.max_memory_allocated(self.device), self.capacity)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        return f"n/a (CPU; process peak RSS so far {rss / 2**20:.0f} MiB)"

    def bandwidth_cell(self, tokens_per_s: float, batch: int, bytes_per_step: float) -> str:
        return "; ".join(format_fraction(bench.bandwidth_fraction(tokens_per_s, batch, bytes_per_step, s.bandwidth),
                                         f"{s.bandwidth_gb_s:.0f} GB/s ({s.label})") for s in self.specs) or "n/a"

    def flops_cell(self, tokens_per_s: float, flops_per_token: float) -> str:
        return "; ".join(format_fraction(bench.flops_fraction(tokens_per_s, flops_per_token, s.flops),
                                         f"{s.tflops:.0f} TFLOP/s ({s.label})") for s in self.specs) or "n/a"

    def random_ids(self, rows: int, cols: int, vocab: int, seed: int = 0) -> torch.Tensor:
        # Never 0, the pad id given to the scalar heads, nor the last id: every row is all content.
        g = torch.Generator().manual_seed(seed)
        return torch.randint(1, vocab - 1, (rows, cols), generator=g).to(self.device)


@dataclass
class Models:
    """The models every stage copies from, kept on the CPU in fp32."""

    name: str
    causal: torch.nn.Module
    seqcls: torch.nn.Module
    vocab: int
    """Random ids are drawn below this (the smaller of the two models' vocabularies)."""


def load_models(args, profile: str) -> Models:
    """A tiny random Llama for --smoke; else `--model` (or the preset's hub model) through the
    course's own loader, and the same weights under a one-label scalar head."""
    from transformers import (
        AutoModelForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging

    if args.smoke:
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          tie_word_embeddings=True, pad_token_id=0, num_labels=1)
        causal = LlamaForCausalLM(cfg)
        seqcls = LlamaForSequenceClassification(cfg)
        seqcls.model.load_state_dict(causal.model.state_dict())
        return Models("tiny random Llama (smoke)", causal, seqcls, cfg.vocab_size)

    from rlhf_course.models import load_base

    source = args.model or BaseConfig.preset(profile).hub_model
    _, causal = load_base(BaseConfig.preset(profile, hub_model=source, dtype="float32"), device="cpu")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new scalar head is reported "MISSING": that is the point
    try:
        seqcls = AutoModelForSequenceClassification.from_pretrained(
            os.path.expanduser(source), num_labels=1, dtype=torch.float32, use_safetensors=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    seqcls.config.pad_token_id = 0  # random ids never hold 0, so the head reads the last token
    vocab = min(causal.get_input_embeddings().num_embeddings, seqcls.get_input_embeddings().num_embeddings)
    return Models(source, causal, seqcls, vocab)


# --------------------------------------------------------------------------------------------
# The stages: each returns its rows
# --------------------------------------------------------------------------------------------


def _attn_width(config) -> int:
    return config.num_attention_heads * (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _train_step(b: Bench, model, params, lr: float, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """One optimizer step as the course's stages take it: loss under autocast, scaled backward
    (fp16 only), gradients unscaled and clipped to norm 1, fused AdamW."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    scaler = torch.amp.GradScaler(b.device.type, enabled=b.plan.precision == "fp16")

    def step() -> None:
        with b.autocast():
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def bench_rollout(b: Bench, m: Models) -> list[Row]:
    model = b.place(m.causal, b.half).eval()
    rows = []
    for batch in b.plan.batches:
        b.fresh()
        rows += guarded(b, "rollout", f"batch {batch}", lambda batch=batch: [_rollout_row(b, m, model, batch)])
    return rows


def _rollout_row(b: Bench, m: Models, model, batch: int) -> Row:
    from rlhf_course.generation import sample_tokens

    p = b.plan
    ids = b.random_ids(batch, p.prompt_len, m.vocab, seed=batch)
    mask = torch.ones_like(ids)
    gen = torch.Generator(device=b.device).manual_seed(0)
    # eos_token_id=-1 is never sampled: every batch decodes the full max_new_tokens.
    seconds = b.seconds_per_step(lambda: sample_tokens(model, ids, mask, p.new_tokens, p.temperature,
                                                       -1, 0, gen))
    tokens_per_s = batch * p.new_tokens / seconds
    elem = torch.empty((), dtype=b.half).element_size()
    kv = bench.kv_cache_bytes(model.config, batch, bench.mean_context(p.prompt_len, p.new_tokens), elem)
    per_step = bench.decode_bytes_per_step(bench.dense_params(model) * elem, kv)
    return Row("rollout", f"batch {batch}, prompt {p.prompt_len} + {p.new_tokens} new, "
               f"{p.precision} weights, {per_step / 1e6:.3g} MB read per step",
               format_rate(tokens_per_s, "tok/s"), b.bandwidth_cell(tokens_per_s, batch, per_step), b.memory())


def bench_sft(b: Bench, m: Models) -> list[Row]:
    p = b.plan
    model = b.place(m.causal).train()
    model.config.use_cache = False
    if p.checkpointing:
        # transformers 5 renamed it (the old name warns); early 5.x releases have only the old one
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    ids = b.random_ids(p.sft_batch, p.sft_len, m.vocab)
    params = [q for q in model.parameters() if q.requires_grad]
    seconds = b.seconds_per_step(_train_step(b, model, params, p.sft_lr,
                                             lambda: model(input_ids=ids, labels=ids).loss))
    tokens_per_s = ids.numel() / seconds
    flops = bench.train_flops_per_token(bench.dense_params(model), model.config.num_hidden_layers,
                                        _attn_width(model.config), p.sft_len)
    setting = (f"batch {p.sft_batch} x {p.sft_len} tokens, {p.training}"
               f"{', gradient checkpointing' if p.checkpointing else ''}")
    return [Row("sft", setting, format_rate(tokens_per_s, "tok/s"), b.flops_cell(tokens_per_s, flops), b.memory())]


def bench_rm(b: Bench, m: Models) -> list[Row]:
    from rlhf_course.reward import ranking_loss

    p = b.plan
    model = b.place(m.seqcls).train()
    model.config.use_cache = False
    ids = b.random_ids(p.rm_rankings * p.rm_k, p.rm_len, m.vocab)
    k = torch.full((p.rm_rankings,), p.rm_k, device=b.device)

    def loss() -> torch.Tensor:
        # Row g holds ranking g's K replies, best first: the layout `ranking_loss` expects.
        scores = model(input_ids=ids).logits[:, 0].float().view(p.rm_rankings, p.rm_k)
        return ranking_loss(scores, k)

    params = [q for q in model.parameters() if q.requires_grad]
    seconds = b.seconds_per_step(_train_step(b, model, params, p.rm_lr, loss))
    tokens_per_s = ids.numel() / seconds
    flops = bench.train_flops_per_token(bench.dense_params(model), model.config.num_hidden_layers,
                                        _attn_width(model.config), p.rm_len)
    setting = f"{p.rm_rankings} rankings x K={p.rm_k} x {p.rm_len} tokens, {p.training}"
    return [Row("rm", setting, format_rate(tokens_per_s, "tok/s"), b.flops_cell(tokens_per_s, flops), b.memory())]


def bench_logprobs(b: Bench, m: Models) -> list[Row]:
    rows = []
    for chunk in dict.fromkeys((0, b.plan.chunk)):  # chunk 0 first; once if the preset's is 0
        b.fresh()
        rows += guarded(b, "logprobs", f"chunk {chunk}", lambda chunk=chunk: [_logprobs_row(b, m, chunk)])
    return rows


def _logprobs_row(b: Bench, m: Models, chunk: int) -> Row:
    from rlhf_course.ppo_core import PolicyLogprobs

    p = b.plan
    model = b.place(m.causal).train()
    policy = PolicyLogprobs(model, p.temperature, chunk)
    mb, n = p.ppo.minibatch_size, p.new_tokens
    ids = b.random_ids(mb, p.prompt_len + n, m.vocab)
    attn = torch.ones_like(ids)

    def step() -> None:
        with b.autocast():
            logprobs, entropy = policy(ids, attn, n)
        (logprobs.mean() + 0.01 * entropy.mean()).backward()
        model.zero_grad(set_to_none=True)

    seconds = b.seconds_per_step(step)
    what = f"chunk {chunk}" if chunk else "chunk off (all reply positions at once)"
    return Row("logprobs", f"minibatch {mb} x ({p.prompt_len} + {n}), {what}, fwd+bwd",
               format_rate(mb * n / seconds, "tok/s"), "n/a", b.memory())


def bench_ppo(b: Bench, m: Models) -> list[Row]:
    from rlhf_course.generation import sample_tokens
    from rlhf_course.ppo_core import (
        PolicyLogprobs,
        ValueModel,
        gae,
        kl_penalised_rewards,
        masked_whiten,
        policy_loss,
        value_loss,
    )

    p, cfg = b.plan, b.plan.ppo
    policy_model = b.place(m.causal).train()
    ref_model = b.place(m.causal, b.half).eval().requires_grad_(False)
    reward_model = b.place(m.seqcls, b.half).eval().requires_grad_(False)
    value_rm = b.place(m.seqcls).train()
    for model in (policy_model, value_rm, reward_model):
        model.config.use_cache = False
    policy = PolicyLogprobs(policy_model, cfg.rollout_temperature, p.chunk)
    ref_policy = PolicyLogprobs(ref_model, cfg.rollout_temperature, p.chunk)
    value_model = ValueModel(value_rm)
    opt_policy = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0, fused=True)
    opt_value = torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr, weight_decay=0.0, fused=True)
    scaler = torch.amp.GradScaler(b.device.type, enabled=p.precision == "fp16")
    prompts = b.random_ids(cfg.batch_size, p.prompt_len, m.vocab)
    gen = torch.Generator(device=b.device).manual_seed(0)
    order_gen = torch.Generator().manual_seed(0)
    rollout_seconds: list[float] = []

    def step() -> None:
        # 1. rollout (in eval mode, as `sample_ids` samples)
        b.sync()
        started = time.perf_counter()
        policy_model.eval()
        with b.autocast():
            new = sample_tokens(policy_model, prompts, torch.ones_like(prompts), p.new_tokens,
                                cfg.rollout_temperature, -1, 0, gen)
        policy_model.train()
        b.sync()
        rollout_seconds.append(time.perf_counter() - started)
        ids = torch.cat([prompts, new], 1)
        attn, mask, n_resp = torch.ones_like(ids), torch.ones_like(new), new.shape[1]
        with torch.no_grad(), b.autocast():
            # 2. score (an untrained head: the cost of the pass, not a real reward)
            scores = reward_model(input_ids=ids, attention_mask=attn).logits[:, 0].float()
            # 3. KL penalty: log-probs of policy and reference, and the values
            old_logprobs, _ = policy(ids, attn, n_resp)
            ref_logprobs, _ = ref_policy(ids, attn, n_resp)
            old_values = value_model(ids, attn, n_resp)
        rewards, _ = kl_penalised_rewards(old_logprobs * mask, ref_logprobs * mask, scores, mask,
                                          cfg.init_kl_coef)
        # 4. advantages (GAE), whitened over the batch
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
        # 5. clipped policy and value update, minibatch by minibatch
        for _ in range(cfg.ppo_epochs):
            for mb in torch.randperm(cfg.batch_size, generator=order_gen).to(b.device).split(cfg.minibatch_size):
                with b.autocast():
                    logprobs, _ = policy(ids[mb], attn[mb], n_resp)
                    values = value_model(ids[mb], attn[mb], n_resp)
                pg, _ = policy_loss(logprobs, old_logprobs[mb], advantages[mb], mask[mb], cfg.clip_range)
                vf, _ = value_loss(values, old_values[mb], returns[mb], mask[mb], cfg.clip_range_value)
                opt_policy.zero_grad(set_to_none=True)
                opt_value.zero_grad(set_to_none=True)
                scaler.scale(pg + cfg.vf_coef * vf).backward()
                for opt, module in ((opt_policy, policy), (opt_value, value_model)):
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.max_grad_norm)
                    scaler.step(opt)
                scaler.update()

    seconds = b.seconds_per_step(step)
    rollout_share = sum(rollout_seconds[p.warmup:]) / (seconds * p.steps)
    setting = (f"batch {cfg.batch_size} (minibatch {cfg.minibatch_size}, {cfg.ppo_epochs} epochs), "
               f"prompt {p.prompt_len} + {p.new_tokens} new, chunk {p.chunk}, 4 models; "
               f"rollout {100 * rollout_share:.0f}% of a step")
    return [Row("ppo", setting, format_rate(cfg.batch_size / seconds, "samples/s"), "n/a", b.memory())]


BENCHES = {"rollout": bench_rollout, "sft": bench_sft, "rm": bench_rm, "logprobs": bench_logprobs,
           "ppo": bench_ppo}


def guarded(b: Bench, stage: str, setting: str, fn: Callable[[], list[Row]]) -> list[Row]:
    """`fn()`'s rows, or a row saying it ran out of memory (where `setting` says what ran), so
    that one figure too big for the GPU does not stop the others."""
    try:
        return fn()
    except torch.OutOfMemoryError:
        cap = format_memory(b.capacity) if b.capacity else "the device's memory"
        return [Row(stage, f"{setting} (sizes: the plan above)", "out of memory", "n/a",
                    f"over {cap}: try a smaller --seq-len, --batch or --prompt-len")]


def run_stage(b: Bench, m: Models, stage: str) -> list[Row]:
    """One stage's rows, its models freed afterwards."""
    b.fresh()
    try:
        return guarded(b, stage, stage, lambda: BENCHES[stage](b, m))
    finally:
        b.fresh()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hub id or local folder (default: BaseConfig.preset(profile).hub_model)")
    parser.add_argument("--profile", choices=("t4", "a100"), help="default: hardware.detect_profile()")
    parser.add_argument("--emulate-t4", action="store_true",
                        help="cap memory to 15 GiB and force fp16 (the t4 profile) on a bigger GPU")
    parser.add_argument("--batch", help="decoding batch sizes, comma-separated (default 16,64)")
    parser.add_argument("--steps", type=int, help="timed repetitions per stage (default 5; smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed repetitions first (default 2; smoke 1)")
    parser.add_argument("--prompt-len", type=int, default=64, help="prompt tokens of rollouts and log-probs")
    parser.add_argument("--seq-len", type=int, help="sft and rm sequence length (default: the presets' max_length)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--out", help="append the Markdown table to this file (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--smoke", action="store_true",
                        help="on CPU, a tiny random Llama and tiny sizes: checks the script in seconds")
    return parser.parse_args(argv)


def choose(args) -> tuple[torch.device, str, bool]:
    """The device, the profile and whether a T4 is emulated; a clear exit when they clash."""
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages or set(stages) - set(STAGES):
        sys.exit(f"gpu.py: --stages {args.stages!r}: choose among {', '.join(STAGES)}")
    for flag, value, least in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                               ("--prompt-len", args.prompt_len, 1), ("--seq-len", args.seq_len, 2)):
        if value is not None and value < least:
            sys.exit(f"gpu.py: {flag} {value}: use a whole number >= {least}")
    if args.smoke:
        if args.model or args.profile or args.emulate_t4:
            sys.exit("gpu.py: --smoke builds its own tiny model on the CPU; drop --model, --profile "
                     "and --emulate-t4")
        return torch.device("cpu"), "cpu", False
    if not torch.cuda.is_available():
        sys.exit("gpu.py: no CUDA GPU here, and this benchmark measures one. Run it on Colab or a GPU "
                 "machine, or pass --smoke to check that the script runs on this CPU.")
    if args.emulate_t4:
        os.environ[EMULATE_T4_ENV] = "1"  # the package's own code then sees a T4 as well
    if emulating_t4():  # --emulate-t4, or the variable set by hand
        if args.profile == "a100":
            sys.exit(f"gpu.py: emulating a T4 (--emulate-t4 or {EMULATE_T4_ENV}=1) runs the t4 profile; "
                     "drop --profile a100")
        try:
            bench.emulate_t4(0)
        except RuntimeError as err:
            sys.exit(f"gpu.py: {err}")
        return torch.device("cuda", 0), "t4", True
    profile = args.profile or detect_profile().name
    if profile == "a100" and not torch.cuda.is_bf16_supported():
        sys.exit(f"gpu.py: {torch.cuda.get_device_name(0)} has no bf16, which the a100 profile trains "
                 "in; use --profile t4")
    return torch.device("cuda", 0), profile, False


def main(argv=None) -> int:
    args = parse_args(argv)
    device, profile, emulating = choose(args)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    plan = make_plan(args, profile)
    b = Bench(device, plan, emulating)
    models = load_models(args, profile)
    n_params = sum(q.numel() for q in models.causal.parameters())
    header = (f"{datetime.date.today()} | {b.name}{' emulating a T4 (15 GiB, fp16)' if emulating else ''} | "
              f"{models.name} ({n_params / 1e6:.1f}M parameters) | profile {profile}, {plan.precision} | "
              f"torch {torch.__version__}, transformers {version('transformers')}, {platform.python_version()}")
    print(header)
    print(f"plan: {plan.describe()}", flush=True)
    rows: list[Row] = []
    for stage in stages:
        print(f"measuring {stage} ...", file=sys.stderr, flush=True)
        rows += run_stage(b, models, stage)
    table = bench.markdown_table(rows)
    print(table, end="")
    print(f"({plan.warmup} warm-up and {plan.steps} timed repetitions per figure)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as f:
            f.write(f"\n### {header}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
