"""Stage `rm`: a reward model trained on ranked replies with InstructGPT's K-way loss.

InstructGPT (Ouyang et al. 2022, eq. 1) trains the reward model r on rankings of K replies:

    loss(r) = -1 / C(K,2) * E[ log sigmoid(r(x, y_w) - r(x, y_l)) ]

over every pair (y_w preferred to y_l) of a ranking, with all C(K,2) pairs of one prompt in the
same batch element. Treating the pairs as independent examples made their reward model overfit
(each reply is seen K-1 times per epoch); one element per ranking also costs only K forward
passes, not 2 * C(K,2). The model is the SFT model with a scalar head on the last token, and the
reward is normalised after training so the SFT policy's replies score mean 0 (as InstructGPT did
before RL) and unit standard deviation (so a KL coefficient has the same meaning across runs).

Why our own loop and not TRL's `RewardTrainer`: that trainer takes one chosen/rejected pair per
row, so a ranking would become C(K,2) independent rows, exactly what the paper warns against.
The loop below is short (batch of rankings -> K scores each -> `ranking_loss`). TRL's format is
still what the data exports to (`rankings.rankings_dataset`), so RewardTrainer or
DPOTrainer can read the same rankings.

What it simplifies: a tiny model and simulated annotators on the cpu track; no ensembling; the
normalisation uses the SFT samples the rankings were made from.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from rlhf_course.config import BaseConfig, RewardConfig
from rlhf_course.generation import right_pad
from rlhf_course.hardware import use_lora
from rlhf_course.hh import preference_accuracy
from rlhf_course.jsonl import write_jsonl
from rlhf_course.models import trainable, with_lora
from rlhf_course.rankings import (
    COMPARISONS,
    HELDOUT_COMPARISONS,
    HH_COMPARISONS,
    HH_HELDOUT_COMPARISONS,
    HUMAN_COMPARISONS,
    load_comparisons,
    pairwise_accuracy,
)
from rlhf_course.runs import (
    MissingStageOutput,
    StageTimer,
    raise_corrupt,
    require,
    seed_everything,
    stage_dir,
    write_text_atomic,
)
from rlhf_course.training import resolve_precision, warmup_cosine
from rlhf_course.world import FAMILIES, Annotators, Task, gold_score

HELDOUT_SCORES = "heldout_scores.jsonl"
"""Every held-out reply with its RM score, gold score and length (for notebook 05's plots)."""
NORMALISATION = "normalisation.json"
"""Offset and scale that make the SFT policy's replies score mean 0, std 1; in RUN_DIR/rm/."""


# --------------------------------------------------------------------------------------------
# The loss (pure)
# --------------------------------------------------------------------------------------------


def ranking_loss(rewards: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """InstructGPT's ranking loss (eq. 1), averaged over a batch of rankings.

    `rewards` (G, K_max): row g holds the rewards of ranking g's replies in rank order, best
    first; entries at positions >= k[g] are padding and ignored. `k` (G,): replies per ranking.
    For each ranking, -1/C(k,2) * sum over i < j < k of log sigmoid(r_i - r_j); then the mean
    over rankings, so every ranking weighs the same whatever its K.
    """
    if rewards.dim() != 2 or k.shape != rewards.shape[:1]:
        raise ValueError(f"ranking_loss: rewards must be (G, K_max) and k (G,); got {tuple(rewards.shape)}, {tuple(k.shape)}")
    if bool((k < 2).any()) or bool((k > rewards.shape[1]).any()):
        raise ValueError(f"ranking_loss: every k must be in 2..{rewards.shape[1]}, got {k.tolist()}")
    g, kmax = rewards.shape
    pos = torch.arange(kmax, device=rewards.device)
    valid = pos[None, :] < k[:, None]                                       # (G, K)
    better = pos[:, None] < pos[None, :]                                    # (K, K): i ranked above j
    pair = better[None] & valid[:, :, None] & valid[:, None, :]             # (G, K, K)
    diff = rewards[:, :, None] - rewards[:, None, :]                        # r_i - r_j
    logsig = F.logsigmoid(diff.float()).masked_fill(~pair, 0.0)
    n_pairs = (k * (k - 1) // 2).to(logsig.dtype)
    return -(logsig.sum(dim=(1, 2)) / n_pairs).mean()


# --------------------------------------------------------------------------------------------
# The model: the SFT model with a scalar head
# --------------------------------------------------------------------------------------------


def build_reward_model(sft_path: str | Path, profile: str = "cpu", device: str | None = None):
    """`(tokenizer, model)`: the SFT checkpoint under a freshly initialised scalar head
    (`AutoModelForSequenceClassification`, one label), which reads the last non-pad token."""
    dtype = BaseConfig.preset(profile).dtype
    tokenizer = AutoTokenizer.from_pretrained(sft_path)
    # transformers reports the head as "MISSING" from the checkpoint; that is the point here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            sft_path, num_labels=1, dtype=getattr(torch, dtype))
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    if device is None:
        device = "cuda" if profile != "cpu" and torch.cuda.is_available() else "cpu"
    return tokenizer, model.to(device)


def encode(tokenizer, context: Sequence[dict], reply: str, max_length: int) -> list[int]:
    """Token ids of `context` + the assistant `reply` in the chat template, ending with the
    end-of-turn token the scalar head reads at. Over-long inputs lose their oldest tokens."""
    messages = [*context, {"role": "assistant", "content": reply}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # Trim anything the template puts after the reply's end token (a newline): the head reads
    # the last token, and "end of the reply" is the cleanest place for it.
    eos = tokenizer.eos_token_id
    if eos in ids:
        last = len(ids) - 1 - ids[::-1].index(eos)
        ids = ids[: last + 1]
    return ids[-max_length:]


def _pad(batch: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = right_pad(batch, pad_id)
    return ids.to(device), mask.to(device)


def _forward(model, ids, mask, precision: str) -> torch.Tensor:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    with torch.autocast(ids.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].float()


@torch.no_grad()
def raw_scores(model, tokenizer, contexts: Sequence[Sequence[dict]], replies: Sequence[str],
               batch_size: int = 64, max_length: int = 384, progress: bool = False) -> list[float]:
    """The scalar head's raw output for each (context, reply), batched by length."""
    device = next(model.parameters()).device
    encoded = [encode(tokenizer, c, r, max_length) for c, r in zip(contexts, replies, strict=True)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [0.0] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="scoring", disable=not progress):
            idx = order[start : start + batch_size]
            ids, mask = _pad([encoded[i] for i in idx], tokenizer.pad_token_id, device)
            for i, s in zip(idx, model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist(), strict=True):
                out[i] = s
    finally:
        model.train(was_training)
    return out


@dataclass
class RewardModel:
    """A trained reward model with its normalisation: `score` returns (raw - offset) / scale."""

    tokenizer: Any
    model: Any
    offset: float = 0.0
    """Mean raw score of the SFT policy's replies."""
    scale: float = 1.0
    """Standard deviation of those raw scores."""
    max_length: int = 384

    def score(self, contexts: Sequence[Sequence[dict]], replies: Sequence[str], batch_size: int = 64,
              progress: bool = False) -> list[float]:
        """Normalised rewards for each (context, reply): SFT replies average 0 with std 1."""
        raw = raw_scores(self.model, self.tokenizer, contexts, replies, batch_size, self.max_length, progress)
        return [(r - self.offset) / self.scale for r in raw]


def load_reward_model(run_dir, profile: str = "cpu", device: str | None = None) -> RewardModel:
    """The reward model stage `rm` saved in RUN_DIR/rm/, with its normalisation."""
    require(run_dir, "rm", "model", profile=profile)
    require(run_dir, "rm", NORMALISATION, profile=profile)
    try:
        return load_reward_model_from(Path(run_dir) / "rm", profile, device)
    except (ValueError, KeyError, TypeError) as err:
        raise_corrupt(run_dir, "rm", NORMALISATION, err, profile=profile)


def load_reward_model_from(folder, profile: str = "cpu", device: str | None = None) -> RewardModel:
    """A reward model from a folder holding model/ and normalisation.json (stage `rm`'s, or an
    iteration round's). A missing or unreadable file raises with the path in the message."""
    folder = Path(folder)
    norm_path, path = folder / NORMALISATION, folder / "model"
    for needed in (norm_path, path):
        if not needed.exists():
            raise FileNotFoundError(f"no reward model at {folder}: {needed.name} is missing")
    try:
        norm = json.loads(norm_path.read_text(encoding="utf-8"))
        offset, scale, max_length = float(norm["offset"]), float(norm["scale"]), int(norm["max_length"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{norm_path} is unreadable ({err}); retrain the reward model that wrote it") from err
    dtype = BaseConfig.preset(profile).dtype
    if device is None:
        device = "cuda" if profile != "cpu" and torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return RewardModel(tokenizer, model, offset, scale, max_length)


# --------------------------------------------------------------------------------------------
# Measuring a reward model (pure functions of scores)
# --------------------------------------------------------------------------------------------


def gold_accuracy(scores: Sequence[Sequence[float]], golds: Sequence[Sequence[float]], margin: float) -> tuple[float, int]:
    """(accuracy, pairs) over the pairs of replies to the same prompt whose gold scores differ by
    at least `margin` (> 0): how often the model puts the gold-better reply first."""
    if margin <= 0:
        raise ValueError(f"gold_accuracy: margin must be > 0 (pairs gold calls equal cannot be judged), got {margin}")
    agree = total = 0.0
    for s, g in zip(scores, golds, strict=True):
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if abs(g[i] - g[j]) >= margin - 1e-12:
                    total += 1
                    hi, lo = (i, j) if g[i] > g[j] else (j, i)
                    agree += 1.0 if s[hi] > s[lo] else 0.5 if s[hi] == s[lo] else 0.0
    return (agree / total if total else float("nan")), int(total)


def length_slope(scores: Sequence[float], lengths: Sequence[float], golds: Sequence[float],
                 bin_width: float = 0.1) -> float:
    """How much the score rises per unit of length at equal gold: the least-squares slope of
    score on length within bins of gold score (a fixed effect per bin), pooled over bins."""
    bins: dict[int, list[int]] = {}
    for i, g in enumerate(golds):
        bins.setdefault(int(math.floor(g / bin_width + 1e-9)), []).append(i)
    sxy = sxx = 0.0
    for idx in bins.values():
        if len(idx) < 2:
            continue
        mx = statistics.fmean(lengths[i] for i in idx)
        my = statistics.fmean(scores[i] for i in idx)
        sxy += sum((lengths[i] - mx) * (scores[i] - my) for i in idx)
        sxx += sum((lengths[i] - mx) ** 2 for i in idx)
    return sxy / sxx if sxx else float("nan")


# --------------------------------------------------------------------------------------------
# Stage `rm` (notebook 05)
# --------------------------------------------------------------------------------------------


def _load(run_dir, name: str, profile: str, required: bool = True) -> list[dict]:
    path = Path(run_dir) / "comparisons" / name
    if not required and not path.exists():
        return []
    path = require(run_dir, "comparisons", name, profile=profile)
    try:
        return load_comparisons(path)
    except ValueError as err:
        raise_corrupt(run_dir, "comparisons", name, err, profile=profile)


def run_rm(cfg: RewardConfig, run_dir, live_plot: Callable[[int, float], object] | None = None,
           progress: bool = True) -> dict:
    """Stage `rm`: train RUN_DIR/rm/model on RUN_DIR/comparisons/ (simulated and human
    rankings), normalise it on the SFT replies, and measure it on the held-out rankings.

    On track 'hh' it also trains on the HH-RLHF rankings (hh.jsonl) and reports
    `accuracy_hh_heldout`, its pairwise accuracy on HH-RLHF's held-out pairs (hh_heldout.jsonl);
    `train_rankings`, `train_pairs` and the normalisation stay on the toy-world rankings."""
    out = stage_dir(run_dir, "rm")
    sft_path = require(run_dir, "sft", "model", profile=cfg.profile)
    seed_everything(cfg.seed, "rm")  # the new scalar head is drawn from torch's generator
    with StageTimer() as timer:
        train = _load(run_dir, COMPARISONS, cfg.profile) + _load(run_dir, HUMAN_COMPARISONS, cfg.profile, required=False)
        heldout = _load(run_dir, HELDOUT_COMPARISONS, cfg.profile)
        hh_train, hh_heldout = _load_hh(run_dir, cfg) if cfg.track == "hh" else ([], [])
        tokenizer, model = build_reward_model(sft_path, cfg.profile)
        lora, plan = use_lora(cfg, model)
        model = with_lora(model, cfg, "SEQ_CLS") if lora else trainable(model, False)
        losses = fit(model, tokenizer, train + hh_train, cfg, live_plot, progress)
        if lora:
            model = model.merge_and_unload()
        model.eval()

        # Normalise on the SFT policy's replies: every training reply is one of its samples.
        raw = raw_scores(model, tokenizer, [r["context"] for r in train for _ in r["replies"]],
                         [x for r in train for x in r["replies"]], cfg.score_batch_size, cfg.max_length, progress)
        offset, scale = statistics.fmean(raw), statistics.pstdev(raw) or 1.0
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        write_text_atomic(out / NORMALISATION, json.dumps(
            {"offset": offset, "scale": scale, "max_length": cfg.max_length,
             "on": f"{len(raw)} SFT replies to {len(train)} training contexts"}, indent=1))
        rm = RewardModel(tokenizer, model, offset, scale, cfg.max_length)
        rows = score_heldout(rm, heldout, cfg, progress)
        write_jsonl(out / HELDOUT_SCORES, rows)
        people = Annotators(cfg.annotator_sharpness, cfg.annotator_length_bias, seed=cfg.seed)
        metrics = reward_metrics(rows, [r["ranking"] for r in heldout], cfg.gold_margin, people)
        if cfg.track == "hh":

            acc, pairs = preference_accuracy(
                lambda contexts, replies: rm.score(contexts, replies, cfg.score_batch_size, progress), hh_heldout)
            metrics.update(accuracy_hh_heldout=_rounded(acc, 4) if acc is not None else None,
                           hh_heldout_pairs=pairs, hh_train_rankings=len(hh_train))
    return {
        **metrics,
        "train_rankings": len(train),
        "train_pairs": sum(len(r["replies"]) * (len(r["replies"]) - 1) // 2 for r in train),
        "final_loss": round(statistics.fmean(losses[-20:]), 4) if losses else None,
        "train_accuracy_annotator": round(pairwise_accuracy(
            _group(raw, train), [r["ranking"] for r in train]), 4),
        # Beside accuracy_gold: far above it is poor generalisation, as low as it is underfitting.
        "train_accuracy_gold": _rounded(gold_accuracy(
            [s for s, r in zip(_group(raw, train), train, strict=True) if r.get("task")],
            [[gold_score(Task.from_record(r["task"]), x).total for x in r["replies"]] for r in train if r.get("task")],
            cfg.gold_margin)[0], 4),
        "lora": lora,
        "training_plan": plan,
        "seconds": round(timer.seconds, 1),
    }


def _load_hh(run_dir, cfg: RewardConfig) -> tuple[list[dict], list[dict]]:
    """Track 'hh': the HH-RLHF training and held-out rankings stage `comparisons` wrote."""
    try:
        return _load(run_dir, HH_COMPARISONS, cfg.profile), _load(run_dir, HH_HELDOUT_COMPARISONS, cfg.profile)
    except MissingStageOutput as err:
        raise MissingStageOutput(
            f"{err}\nStage `comparisons` writes the HH-RLHF rankings only on track 'hh': run it with "
            "track='hh' (RewardConfig.track, or --set track=hh) before this stage.") from err


def _group(flat: Sequence[float], records: Sequence[dict]) -> list[list[float]]:
    out, i = [], 0
    for r in records:
        out.append(list(flat[i : i + len(r["replies"])]))
        i += len(r["replies"])
    return out


def fit(model, tokenizer, records: Sequence[dict], cfg: RewardConfig,
        live_plot: Callable[[int, float], object] | None = None, progress: bool = True) -> list[float]:
    """Train `model` in place on `records` (rankings) with `ranking_loss`; returns the per-step
    losses. Each step takes `cfg.batch_size` rankings and scores all their replies at once."""
    if not records:
        raise ValueError("the reward model needs at least one ranking; run stage `comparisons` first")
    device = next(model.parameters()).device
    precision = resolve_precision(cfg, device)
    # Encode once: every reply in rank order (best first), so row g of the score matrix is
    # already sorted the way `ranking_loss` expects.
    groups = [[encode(tokenizer, r["context"], r["replies"][i], cfg.max_length) for i in r["ranking"]]
              for r in records]
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(groups) / cfg.batch_size)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    model.config.use_cache = False
    model.train()
    losses: list[float] = []
    order = torch.empty(0, dtype=torch.long)
    bar = tqdm(range(total), desc="reward model", disable=not progress, mininterval=0.5)
    for step in bar:
        while len(order) < cfg.batch_size:
            order = torch.cat([order, torch.randperm(len(groups), generator=gen)])
        idx, order = order[: cfg.batch_size].tolist(), order[cfg.batch_size :]
        batch = [groups[i] for i in idx]
        k = torch.tensor([len(g) for g in batch], device=device)
        ids, mask = _pad([x for g in batch for x in g], tokenizer.pad_token_id, device)
        flat = _forward(model, ids, mask, precision)
        rewards = torch.zeros((len(batch), int(k.max())), device=device)
        rewards = rewards.masked_scatter(torch.arange(int(k.max()), device=device)[None] < k[:, None], flat)
        loss = ranking_loss(rewards, k)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"reward model loss is {loss.item()} at step {step}; lower "
                                     f"RewardConfig.lr (now {cfg.lr}) or use precision='fp32'")
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, total, cfg.lr, max(1, round(cfg.warmup_ratio * total)))
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 10 == 0 or step == total - 1:
            recent = losses[-10:]
            bar.set_postfix(loss=f"{statistics.fmean(recent):.3f}")
            if live_plot is not None:
                live_plot(step, statistics.fmean(recent))
    bar.close()
    model.config.use_cache = True
    model.eval()
    return losses


def score_heldout(rm: RewardModel, heldout: Sequence[dict], cfg: RewardConfig, progress: bool = False) -> list[dict]:
    """One row per held-out reply: its ranking (`group`), position in it, normalised RM score,
    gold score, length in tokens, and the place the annotators gave it (0 = best)."""
    flat = rm.score([r["context"] for r in heldout for _ in r["replies"]],
                    [x for r in heldout for x in r["replies"]], cfg.score_batch_size, progress)
    rows, i = [], 0
    for g, rec in enumerate(heldout):
        task = Task.from_record(rec["task"])
        for j, reply in enumerate(rec["replies"]):
            rows.append({"group": g, "index": j, "family": task.family, "reply": reply,
                         "score": round(flat[i], 5), "gold": gold_score(task, reply).total,
                         "tokens": len(rm.tokenizer(reply, add_special_tokens=False)["input_ids"]),
                         "annotator_place": rec["ranking"].index(j)})
            i += 1
    return rows


def _rounded(x: float, digits: int) -> float | None:
    # No pairs to judge gives NaN, which JSON cannot hold: report it as null.
    return None if math.isnan(x) else round(x, digits)


def _groups(rows: Sequence[dict]) -> list[list[dict]]:
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    return [sorted(groups[g], key=lambda r: r["index"]) for g in sorted(groups)]


def family_table(rows: Sequence[dict], gold_margin: float, annotators: Annotators | None = None) -> dict:
    """Per task family, on the clear pairs of `score_heldout` rows: the reward model's accuracy
    against gold, the annotators' own (their ranking), and, with `annotators`, the ceiling of a
    reward model that had learned their exact utility (sharpness * gold + length_bias * words):
    `{family: {"rm", "annotators", "utility", "pairs"}}`. Where the RM sits far under the
    utility, it failed to learn what the annotators know."""
    out, groups = {}, _groups(rows)
    for family in FAMILIES:
        grps = [g for g in groups if g[0]["family"] == family]
        golds = [[r["gold"] for r in g] for g in grps]
        acc, pairs = gold_accuracy([[r["score"] for r in g] for g in grps], golds, gold_margin)
        if not pairs:
            continue
        entry = {"rm": _rounded(acc, 4),
                 "annotators": _rounded(gold_accuracy([[-r["annotator_place"] for r in g] for g in grps],
                                                      golds, gold_margin)[0], 4)}
        if annotators is not None:
            util = [[annotators.sharpness * r["gold"] + annotators.length_bias * len(r["reply"].split())
                     for r in g] for g in grps]
            entry["utility"] = _rounded(gold_accuracy(util, golds, gold_margin)[0], 4)
        out[family] = {**entry, "pairs": pairs}
    return out


def reward_metrics(rows: Sequence[dict], rankings: Sequence[Sequence[int]], gold_margin: float,
                   annotators: Annotators | None = None) -> dict:
    """The report's `rm.*` figures from `score_heldout` rows: accuracy against gold on clear pairs
    (gold differs by >= `gold_margin`) and on every pair gold does not call equal, against the
    annotators' rankings, the annotators' own accuracy against gold on the clear pairs (for
    comparison), the length bias (normalised score per extra token at equal gold) and the
    per-family table of `family_table`."""
    ordered = _groups(rows)
    scores = [[r["score"] for r in grp] for grp in ordered]
    golds = [[r["gold"] for r in grp] for grp in ordered]
    places = [[-r["annotator_place"] for r in grp] for grp in ordered]
    acc_gold, n_clear = gold_accuracy(scores, golds, gold_margin)
    acc_all, n_all = gold_accuracy(scores, golds, 1e-9)
    return {
        "accuracy_gold": _rounded(acc_gold, 4),
        "accuracy_gold_all": _rounded(acc_all, 4),
        "accuracy_annotator": _rounded(pairwise_accuracy(scores, rankings), 4),
        "annotator_accuracy_gold": _rounded(gold_accuracy(places, golds, gold_margin)[0], 4),
        "length_bias": _rounded(length_slope([r["score"] for r in rows], [r["tokens"] for r in rows],
                                             [r["gold"] for r in rows]), 5),
        "gold_pairs_clear": n_clear,
        "gold_pairs_all": n_all,
        "heldout_rankings": len(ordered),
        "accuracy_gold_by_family": family_table(rows, gold_margin, annotators),
    }
