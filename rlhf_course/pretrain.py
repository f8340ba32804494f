"""Pretraining the tiny base model (cpu track): next-token prediction on the world's corpus.

What this simplifies relative to InstructGPT/ChatGPT: GPT-3.5 was pretrained on hundreds of
billions of tokens of web text, books and code; ours sees about 3M tokens of one toy world's
encyclopedia and forum text, for a few minutes on two CPU cores. The recipe is the same: pack
documents end to end, predict every next token, AdamW with warm-up and cosine decay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlhf_course.config import BaseConfig
from rlhf_course.heldout import GoldEval, best_possible, evaluate_policy, heldout_tasks, probe_tasks
from rlhf_course.models import build_model, count_params, load_base, save_base, train_tokenizer
from rlhf_course.runs import StageTimer, peak_rss_mb, stage_dir
from rlhf_course.training import bf16_is_fast, warmup_cosine
from rlhf_course.world import World

PLOT_EVERY = 20
"""Steps between two calls of `live_plot` (redrawing a figure costs about 0.1 s)."""


@dataclass
class PretrainResult:
    """What `pretrain` measured."""

    losses: list[float] = field(default_factory=list)
    """Training loss (mean next-token cross-entropy, nats) at every optimizer step."""
    tokens_seen: int = 0
    """Tokens predicted in all steps (steps x batch_size x block_size)."""
    seconds: float = 0.0
    """Wall-clock time of the training loop."""
    tokens_per_second: float = 0.0
    """tokens_seen / seconds."""
    precision: str = "float32"
    """'bfloat16 autocast' where the CPU/GPU multiplies bf16 natively, else 'float32'."""


def pack_documents(tokenizer, texts: list[str], block_size: int) -> torch.Tensor:
    """Tokenize `texts`, join them into one stream separated by `<|end|>`, cut into blocks.

    Returns (N, block_size + 1) token ids: consecutive blocks overlap by one token, so that
    inputs `blocks[:, :-1]` and targets `blocks[:, 1:]` together cover every token once.
    Documents cross block boundaries; the end token tells the model where one stops.
    """
    end = tokenizer.eos_token_id
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    stream = [end]  # a leading end token: every document, the first included, follows one
    for doc in ids:
        stream.extend(doc)
        stream.append(end)
    stream = torch.tensor(stream, dtype=torch.long)
    n_blocks = (len(stream) - 1) // block_size
    if n_blocks < 1:
        raise ValueError(
            f"pack_documents: {len(texts)} documents make {len(stream)} tokens, fewer than one "
            f"block of block_size={block_size} + 1; give more text or a smaller block_size"
        )
    return stream[: n_blocks * block_size + 1].unfold(0, block_size + 1, block_size).contiguous()


def make_optimizer(model: torch.nn.Module, cfg: BaseConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings, projections) but not on norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused=True: one kernel for all parameters instead of a Python loop (CPU too, torch >= 2.4).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)


def pretrain(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    cfg: BaseConfig,
    progress: bool = True,
    live_plot: Callable[[int, float], object] | None = None,
) -> PretrainResult:
    """Train `model` in place on `texts` for `cfg.steps` steps of `cfg.batch_size` blocks.

    Each step draws (batch_size, block_size + 1) tokens from `pack_documents`, in an order
    shuffled each epoch by a generator seeded with `cfg.seed`, so two runs from the same initial
    weights give identical losses. `live_plot(step, loss)` is called every `PLOT_EVERY` steps
    and at the last one, with the mean loss of the steps since its previous call. Returns the per-step losses and the throughput; leaves the model in
    eval mode with its KV cache enabled again, ready to sample.
    """
    device = next(model.parameters()).device
    blocks = pack_documents(tokenizer, texts, cfg.block_size).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.autocast not in ("auto", "bf16", "off"):
        raise ValueError(f"BaseConfig.autocast={cfg.autocast!r}: use 'auto', 'bf16' or 'off'")
    use_bf16 = cfg.autocast == "bf16" or (cfg.autocast == "auto" and bf16_is_fast(device))
    optimizer = make_optimizer(model, cfg)

    # Training never reuses keys/values, so building a cache would be wasted work. With bf16
    # autocast, the eager attention (bf16 matmuls) beats CPU SDPA, whose bf16 kernel is slow.
    saved_attn = model.config._attn_implementation
    model.config.use_cache = False
    if use_bf16 and device.type == "cpu":
        model.set_attn_implementation("eager")
    model.train()

    result = PretrainResult(precision="bfloat16 autocast" if use_bf16 else "float32")
    tokens_per_step = cfg.batch_size * cfg.block_size
    order = torch.empty(0, dtype=torch.long)
    bar = tqdm(range(cfg.steps), desc="pretrain", disable=not progress, mininterval=0.5)
    start = time.perf_counter()
    try:
        for step in bar:
            # Epoch-wise permutations: every block is seen once before any is seen twice.
            while len(order) < cfg.batch_size:
                order = torch.cat([order, torch.randperm(len(blocks), generator=gen)])
            idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
            batch = blocks[idx.to(device)]
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, cfg.steps, cfg.lr, cfg.warmup_steps, floor=0.1)

            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(input_ids=batch[:, :-1]).logits  # (B, T, V)
            # The softmax runs in fp32 even under autocast: bf16 log-probs are too coarse.
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            result.losses.append(loss.item())
            result.tokens_seen += tokens_per_step
            if (step + 1) % PLOT_EVERY == 0 or step == cfg.steps - 1:
                # A mean over the interval: single-batch losses are too noisy to read.
                recent = result.losses[-((step % PLOT_EVERY) + 1) :]
                rate = result.tokens_seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}", tok_s=f"{rate:,.0f}")
                if live_plot is not None:
                    live_plot(step, sum(recent) / len(recent))
    finally:
        # Even when interrupted (a learner pressing stop), leave the model usable for sampling.
        result.seconds = time.perf_counter() - start
        result.tokens_per_second = result.tokens_seen / max(result.seconds, 1e-9)
        model.set_attn_implementation(saved_attn)
        model.config.use_cache = True
        model.eval()
        bar.close()
    return result


# --------------------------------------------------------------------------------------------
# The `base` stage: world -> corpus -> tokenizer -> tiny model -> pretraining -> gold on held-out
# --------------------------------------------------------------------------------------------


def build_base(cfg: BaseConfig, world: World, live_plot=None, progress: bool = True):
    """The base model for `cfg.profile`: on cpu, train a tokenizer and a tiny model on the world's
    corpus (returns the PretrainResult too); on GPU profiles, load `cfg.hub_model` (result None)."""
    if cfg.profile != "cpu":
        tokenizer, model = load_base(cfg)
        return tokenizer, model, None
    texts = world.corpus(cfg.corpus_docs, seed=cfg.seed, forum_quality=cfg.forum_quality)
    tokenizer = train_tokenizer(texts, cfg.vocab_size, model_max_length=cfg.max_seq_len)
    model = build_model(cfg, tokenizer)
    result = pretrain(model, tokenizer, texts, cfg, progress=progress, live_plot=live_plot)
    return tokenizer, model, result


def evaluate_base(model, tokenizer, world: World, cfg: BaseConfig, progress: bool = True,
                  probe: bool = False) -> GoldEval:
    """Gold on `cfg.eval_prompts` tasks of the main held-out set (all ten families), one sampled
    reply each; with `probe`, on the generalisation probe instead."""
    tasks = probe_tasks(world, cfg) if probe else heldout_tasks(world, cfg)
    return evaluate_policy(model, tokenizer, tasks, cfg, progress)


def run_base(cfg: BaseConfig, run_dir, live_plot=None, progress: bool = True) -> dict:
    """Stage `base`: build the base model, save it to RUN_DIR/base/model, and report its gold
    score on held-out prompts (`base.gold`), with the time and memory it took."""
    if cfg.eval_prompts < 200:
        raise ValueError(f"BaseConfig.eval_prompts={cfg.eval_prompts}: base.gold is defined on at "
                         "least 200 held-out prompts; raise it")
    out = stage_dir(run_dir, "base")
    with StageTimer() as timer:
        torch.manual_seed(cfg.seed)
        world = World(cfg.seed)
        tokenizer, model, result = build_base(cfg, world, live_plot=live_plot, progress=progress)
        save_base(out / "model", model, tokenizer)
        ev = evaluate_base(model, tokenizer, world, cfg, progress=progress)
        ev.save(out / "samples.jsonl")
        ood = evaluate_base(model, tokenizer, world, cfg, progress=progress, probe=True)
    return base_entry(ev, model, result, seconds=timer.seconds, ood=ood)


def base_entry(ev: GoldEval, model, result: PretrainResult | None = None,
               seconds: float | None = None, ood: GoldEval | None = None) -> dict:
    """The report's `base` entry from a held-out evaluation (and the pretraining run, on cpu;
    `gold_ood` from an evaluation on the generalisation probe, when given)."""
    entry = {
        "gold": round(ev.mean, 4),
        "gold_ood": round(ood.mean, 4) if ood is not None else None,
        "gold_by_family": ev.by_family(),
        "gold_ideal": round(best_possible(ev.tasks), 4),
        "eval_prompts": len(ev.tasks),
        "params": count_params(model),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if seconds is not None:
        entry["seconds"] = round(seconds, 1)
    if result is not None:
        entry |= {
            "pretrain_seconds": round(result.seconds, 1),
            "pretrain_tokens_per_s": round(result.tokens_per_second),
            "pretrain_precision": result.precision,
            "final_loss": round(sum(result.losses[-20:]) / len(result.losses[-20:]), 4),
        }
    return entry
