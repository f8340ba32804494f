"""Stage `comparisons`: rank K alternative replies, the data a reward model learns from.

The ChatGPT post: "we took conversations that AI trainers had with the chatbot. We randomly
selected a model-written message, sampled several alternative completions, and had AI trainers
rank them." InstructGPT's labelers ranked K = 4 to 9 replies per prompt, and every ranking counts
as all K-choose-2 of its pairs.

Here a conversation is a toy-world task (from the demonstrations or a fresh chat with the
policy); the message to replace is chosen at random among the assistant messages the gold
labeler can judge, which in the toy world is the last one; K alternatives are sampled from the
current policy in one batch with the KV cache; a simulated annotator (`world.Annotators`) or a
person (the ranking widget, notebook 04) orders them best first. Each ranking is one JSON line,
written and fsynced before anything else happens, so a dead kernel loses nothing submitted.

The record each ranking becomes, and what is computed from rankings, are in
`rlhf_course.rankings`; this module samples the alternatives and runs the stage.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from rlhf_course.data import SimulatedTrainers
from rlhf_course.generation import generate_replies
from rlhf_course.heldout import heldout_tasks
from rlhf_course.hh import hh_comparisons
from rlhf_course.jsonl import write_jsonl
from rlhf_course.models import load_checkpoint
from rlhf_course.rankings import (
    COMPARISONS,
    HELDOUT_COMPARISONS,
    HH_COMPARISONS,
    HH_HELDOUT_COMPARISONS,
    K_MAX,
    K_MIN,
    ComparisonError,
    RankItem,
    annotator_agreement_on,
    ranking_pairs,
)
from rlhf_course.runs import StageTimer, require, seed_everything, stage_dir
from rlhf_course.world import Annotators, Task, World, gold_score

# --------------------------------------------------------------------------------------------
# Rankings: checking, saving, undoing, expanding to pairs
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Items to rank: a context and K distinct sampled replies
# --------------------------------------------------------------------------------------------


def pick_turn(messages: Sequence[Mapping[str, str]], rng: random.Random,
              judged: Sequence[int] | None = None) -> int:
    """Index of one assistant message chosen at random: among `judged` indices when given (the
    turns a judge can score), else among all assistant messages."""
    candidates = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if judged is not None:
        candidates = [i for i in candidates if i in set(judged)]
    if not candidates:
        raise ComparisonError("the conversation has no assistant message to replace")
    return rng.choice(candidates)


def distinct_replies(samples: Sequence[str], k: int) -> list[str]:
    """The first `k` samples that differ (ignoring whitespace) and are not empty, in order."""
    out, seen = [], set()
    for s in samples:
        key = " ".join(s.split())
        if key and key not in seen:
            seen.add(key)
            out.append(s.strip())
        if len(out) == k:
            break
    return out


def sample_items(model, tokenizer, conversations: Sequence[tuple[Task | None, list[dict], str, int]],
                 k: int, *, temperature: float, max_new_tokens: int, oversample: float = 1.5,
                 batch_size: int = 64, seed: int = 0, id_prefix: str = "c", progress: bool = False,
                 ) -> tuple[list[RankItem], int]:
    """Sample up to `k` distinct replies for each context in one batched pass (KV cache).

    `conversations` holds `(task, context, source, turn)` tuples. Each context gets
    `k * oversample` samples, of which the first `k` distinct ones are kept; a context left with
    fewer than 2 distinct replies cannot be ranked and is dropped. Returns the items and how many
    contexts were dropped.
    """
    if not K_MIN <= k <= K_MAX:
        raise ComparisonError(f"k = {k}: a ranking needs between {K_MIN} and {K_MAX} replies")
    n = max(k, math.ceil(k * oversample))
    flat = [ctx for _, ctx, _, _ in conversations for _ in range(n)]
    samples = generate_replies(model, tokenizer, flat, max_new_tokens=max_new_tokens,
                               temperature=temperature, batch_size=batch_size, seed=seed, progress=progress)
    items, dropped = [], 0
    for i, (task, ctx, source, turn) in enumerate(conversations):
        replies = distinct_replies(samples[i * n : (i + 1) * n], k)
        if len(replies) < K_MIN:
            dropped += 1
            continue
        items.append(RankItem(list(ctx), replies, task, source, turn, f"{id_prefix}-{seed}-{i:06d}"))
    return items, dropped


def annotator_name(annotators) -> str:
    """How a simulated annotator pool signs its rankings, e.g. 'annotators(sharpness=8.0, ...)'."""
    return (f"annotators(sharpness={annotators.sharpness}, length_bias={annotators.length_bias}, "
            f"seed={annotators.seed})")


def rank_with_annotators(items: Sequence[RankItem], annotators, first_item: int = 0) -> list[dict[str, Any]]:
    """Comparison records for `items`, ranked by simulated annotators (item numbers seed their
    noise, starting at `first_item`, so rankings are reproducible)."""
    name = annotator_name(annotators)
    return [it.record(annotators.rank(it.task, it.replies, item=first_item + n), name)
            for n, it in enumerate(items)]


def training_contexts(world, n: int, demo_fraction: float, seed: int) -> list[tuple[Task, list[dict], str, int]]:
    """`n` training contexts as `(task, context, source, turn)`: a `demo_fraction` share from
    simulated trainers' demonstrations (the replaced message chosen by `pick_turn` among the
    turns the gold labeler can judge: in the toy world, the last), the rest fresh training prompts
    for a chat with the policy."""
    if not 0.0 <= demo_fraction <= 1.0:
        raise ValueError(f"demo_fraction = {demo_fraction}: use a share between 0 and 1")
    rng = random.Random(f"comparisons:{seed}")
    n_demo = round(n * demo_fraction)
    out = []
    for task, record in SimulatedTrainers().write_with_tasks(world, n_demo, seed=seed + 1000):
        turn = pick_turn(record["messages"], rng, judged=[len(record["messages"]) - 1])
        out.append((task, record["messages"][:turn], "demonstration", turn))
    for task in world.tasks("train", n - n_demo, seed=seed + 2000):
        out.append((task, task.prompt, "policy", len(task.messages)))
    rng.shuffle(out)
    return out


def run_comparisons(cfg, run_dir, progress: bool = True) -> dict[str, Any]:
    """Stage `comparisons`: rank K replies of the SFT policy for `cfg.prompts` training contexts
    (RUN_DIR/comparisons/comparisons.jsonl) and for the held-out prompts every stage reports on
    (heldout.jsonl, only for measuring the reward model), ranked by simulated annotators.
    Rankings a learner made with the widget (human.jsonl) are left as they are. On track 'hh'
    it also writes `cfg.hh_pairs` HH-RLHF training pairs (hh.jsonl) and `cfg.hh_heldout_pairs`
    of its test pairs (hh_heldout.jsonl) as rankings."""
    out = stage_dir(run_dir, "comparisons")
    sft_path = require(run_dir, "sft", "model", profile=cfg.profile)
    seed_everything(cfg.seed, "comparisons")
    with StageTimer() as timer:
        hh_sets = None
        if cfg.track == "hh":  # first: a dataset that cannot load should stop us before sampling

            hh_sets = hh_comparisons(cfg.hh_preferences, cfg.hh_pairs, cfg.hh_heldout_pairs, seed=cfg.seed)
        world = World(cfg.seed)
        tokenizer, policy = load_checkpoint(sft_path, cfg.profile)
        annotators = Annotators(cfg.annotator_sharpness, cfg.annotator_length_bias, seed=cfg.seed)
        common = dict(temperature=cfg.sample_temperature, max_new_tokens=cfg.max_new_tokens,
                      oversample=cfg.oversample, batch_size=cfg.sample_batch_size, progress=progress)
        items, dropped = sample_items(policy, tokenizer, training_contexts(world, cfg.prompts, cfg.demo_fraction, cfg.seed),
                                      cfg.k, seed=cfg.seed, id_prefix="c", **common)
        records = rank_with_annotators(items, annotators)
        write_jsonl(out / COMPARISONS, records)
        held = [(t, t.prompt, "policy", len(t.messages)) for t in heldout_tasks(world, cfg, run_dir)]
        held_items, held_dropped = sample_items(policy, tokenizer, held, cfg.k, seed=cfg.seed + 1,
                                                id_prefix="h", **common)
        held_records = rank_with_annotators(held_items, annotators, first_item=10**6)
        write_jsonl(out / HELDOUT_COMPARISONS, held_records)
        if hh_sets is not None:
            write_jsonl(out / HH_COMPARISONS, hh_sets[0])
            write_jsonl(out / HH_HELDOUT_COMPARISONS, hh_sets[1])
    sizes = Counter(len(r["replies"]) for r in records)
    agree, judged = annotator_agreement_on(records)
    golds = [gold_score(it.task, x).total for it in items for x in it.replies]
    hh_report = {} if hh_sets is None else {
        "hh_count": len(hh_sets[0]), "hh_heldout_count": len(hh_sets[1]), "hh_skipped": hh_sets[2]}
    return {
        "count": len(records),
        "pairs": sum(len(ranking_pairs(r["ranking"])) for r in records),
        "by_source": dict(Counter(r["source"] for r in records)),
        "k_counts": {str(k): v for k, v in sorted(sizes.items())},
        "dropped_contexts": dropped,
        "heldout_count": len(held_records),
        "heldout_dropped": held_dropped,
        "reply_gold_mean": round(statistics.fmean(golds), 4),
        "annotator_agreement": round(agree / judged, 4) if judged else None,
        "annotator_pairs_judged": judged,
        **hh_report,
        "seconds": round(timer.seconds, 1),
    }


