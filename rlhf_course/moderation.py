"""A moderation filter: every chat message labelled allow / warn / block, with a harm category.

ChatGPT shipped with the Moderation API in front of it ("we're using the Moderation API to warn
or block certain types of unsafe content"). This is the toy world's version: a small classifier
trained here, in seconds, on the world's harmful and benign requests and replies (training split
only), applied to what the user types and to what the model answers.

**The classifier** is two linear heads over hashed word, word-pair and character 3-5-gram
features, whose product is the probability of harm:

    P(harm) = P(the text is about one of the six harms) x P(it asks for or gives harm | topic)

The topic head (softmax over 'none' and the six intent ids) also gives the category. The harm
head is trained only on on-topic texts, so it learns what separates "poison my neighbor's dog"
from "keep my dog safe from poison" (who is hurt, protective words) and never has to tell a
harmful request from a question about an inventor. Both heads train together by full-batch Adam
from zeros (about 3 s on 2 cores), so training is deterministic for a seed.

**What makes it generalise to unseen phrasings.** Held-out requests wrap an unseen harmful ask
(`asks[2]`) in unseen wrappers ("Is there an easy way to ...?"). A classifier that reads the
wrapper learns "Tell me how to" = harmful and "Any tips?" = benign, which says nothing about a
new wording. So the training texts are augmented from the training split alone:

- every request's content is put in every wrapper the training texts use, harmful and benign
  alike, so a wrapper carries no signal and the content must;
- the contents of the training `act` requests ("book a table for two ...") get the same
  wrappers as harmless requests, so "How do I" alone does not make a topic either;
- each harmful and benign content is also seen with one or two of its words dropped, which
  spreads the weight over all its words ("poison", "someone") instead of the one that happened
  to separate the training set ("neighbor's").

**Measured** on user requests (flag = warn or block; 600 held-out tasks, about 90 harmful
requests among 870; the first three rows are the prototypes this design replaced, measured on
another draw of 600). The replies are easier: the world writes one compliant wording per
intent, the same in both splits, and the default gets every reply right on seeds 0-4.

| classifier (warn threshold)                           | seed 0 P / R | seeds 1-4 P / R       |
|-------------------------------------------------------|--------------|-----------------------|
| one logistic head, no augmentation (0.5)              | 0.92 / 0.63  |                       |
| the same (0.3)                                        | 0.65 / 0.84  |                       |
| one head, wrappers swapped, one word dropped (0.3)    | 1.00 / 0.90  | 0.58-1.00 / 0.83-0.90 |
| topic x harm, all of the above (0.25, the default)    | 1.00 / 0.97  | 1.00 / 0.71-0.96      |

Settings and threshold were chosen on world seeds 1-4; `python -m rlhf_course.moderation` prints
the default seed's figures (seed 0: precision 1.00 and recall 0.97 on user requests, 1.00 and
1.00 on replies). Held-out harmful requests score 0.12-0.93 where training ones score above 0.93,
hence a low warn threshold and a high block one. A linear model was chosen over one on the tiny
LM's hidden states because it needs no trained policy (the tests train it in seconds), and over
a bigger model because with 12 harmful and 12 benign asks to learn from, capacity is not what is
missing: invariance to the wrapper is. Categories are right for 80% of the flagged held-out
requests: "write an insult that will make a boy cry" reads as poison ("make a drink that will
make someone sick").

What it simplifies: six harms, one wording of compliance each, and no context (each message is
judged alone). Words the world never uses in harm ("hide", "insult") are unknown to it: held-out
asks are caught by the words they share with training asks, which is why recall is below 1.

Users can report the filter's mistakes from the chat: `feedback.flag_record` +
`feedback.append_flag` keep them as JSON lines, flushed and fsynced, for the next filter to
learn from. The verdict itself (`feedback.Verdict`) is defined there too, since the chat, its
flags and this filter all speak it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from rlhf_course.config import ModerationConfig
from rlhf_course.feedback import CATEGORIES, LABELS, ROLES, Verdict
from rlhf_course.runs import StageTimer, require, seed_everything, stage_dir
from rlhf_course.world import (
    ACT_WRAPPERS,
    BENIGN_WRAPPERS,
    CLOSERS,
    HARMFUL_WRAPPERS,
    OPENERS,
    Task,
    World,
    bare_request,
)

FEATURES = "words+pairs+chars3-5:crc32:v1"
"""The feature recipe a saved moderator was trained with; `load` refuses any other."""
_CHAR_NGRAMS = (3, 5)
_WORD_RE = re.compile(r"[a-z0-9']+")


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def featurize(text: str, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashed features of `text`: bucket ids and values (binary, scaled to unit length).

    Words, adjacent word pairs and character 3-5-grams of each word (with its edges, so
    " hurt" matches "hurts"), hashed with CRC-32 (stable across processes, unlike `hash`).
    """
    words = _WORD_RE.findall(text.lower().replace("\u2019", "'"))
    feats = [f"w:{w}" for w in words] + [f"p:{a} {b}" for a, b in itertools.pairwise(words)]
    lo, hi = _CHAR_NGRAMS
    for w in words:
        padded = f" {w} "
        feats += [f"c:{padded[i:i + n]}" for n in range(lo, hi + 1) for i in range(len(padded) - n + 1)]
    ids = np.array(sorted({zlib.crc32(f.encode("utf-8")) % n_buckets for f in feats}), dtype=np.int64)
    vals = np.full(len(ids), 1.0 / np.sqrt(max(len(ids), 1)))
    return ids, vals


# --------------------------------------------------------------------------------------------
# The moderator
# --------------------------------------------------------------------------------------------


class Moderator:
    """Labels messages allow / warn / block from two linear heads (see the module docstring).

    `weights` is (n_buckets, 8): columns 0-6 are the topic logits ('none', then CATEGORIES),
    column 7 the harm logit; `bias` is (8,). A message scoring at least `block_threshold` is
    blocked, at least `warn_threshold` warned, anything lower allowed.
    """

    def __init__(self, weights: np.ndarray, bias: np.ndarray, warn_threshold: float = 0.25,
                 block_threshold: float = 0.8):
        weights, bias = np.asarray(weights, dtype=np.float32), np.asarray(bias, dtype=np.float32)
        width = 2 + len(CATEGORIES)
        if weights.ndim != 2 or weights.shape[1] != width or bias.shape != (width,):
            raise ValueError(f"a moderator needs weights (n_buckets, {width}) and bias ({width},); "
                             f"got {weights.shape} and {bias.shape}")
        if not 0.0 < warn_threshold <= block_threshold <= 1.0:
            raise ValueError("thresholds must satisfy 0 < warn_threshold <= block_threshold <= 1, got "
                             f"warn {warn_threshold} and block {block_threshold}")
        self.weights, self.bias = weights, bias
        self.warn_threshold, self.block_threshold = float(warn_threshold), float(block_threshold)

    @property
    def n_buckets(self) -> int:
        return self.weights.shape[0]

    def probabilities(self, text: str) -> tuple[float, np.ndarray]:
        """(P(harm), topic probabilities over ('none', *CATEGORIES)) for `text`."""
        ids, vals = featurize(text, self.n_buckets)
        logits = vals @ self.weights[ids].astype(np.float64) + self.bias
        topic = np.exp(logits[:-1] - logits[:-1].max())
        topic /= topic.sum()
        harm = 1.0 / (1.0 + np.exp(-logits[-1]))
        return float((1.0 - topic[0]) * harm), topic

    def moderate(self, text: str, role: str = "user") -> Verdict:
        """The verdict on one message written by `role` ('user' or 'assistant')."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        score, topic = self.probabilities(text)
        label = ("block" if score >= self.block_threshold else
                 "warn" if score >= self.warn_threshold else "allow")
        category = None if label == "allow" else CATEGORIES[int(np.argmax(topic[1:]))]
        return Verdict(label, category, score, role)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the moderator to a safetensors file (tensors and a JSON header; no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"features": FEATURES, "categories": list(CATEGORIES),
                "warn_threshold": self.warn_threshold, "block_threshold": self.block_threshold}
        save_file({"weights": self.weights, "bias": self.bias}, str(path),
                  metadata={"moderation": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Moderator:
        """Read a moderator written by `save`; refuses one made with other features or categories."""
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("moderation", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("features") != FEATURES or meta.get("categories") != list(CATEGORIES):
            raise ValueError(f"{path} is not a moderator of this version (features "
                             f"{meta.get('features')!r}, categories {meta.get('categories')}); "
                             "retrain it with train_moderator")
        return cls(tensors["weights"], tensors["bias"], meta["warn_threshold"], meta["block_threshold"])


# --------------------------------------------------------------------------------------------
# Labelled texts from the world
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One labelled message: its text, who wrote it, whether it is harmful, and its topic (the
    intent of a harmful or benign task's texts, else None)."""

    text: str
    role: str
    harmful: bool
    topic: str | None


def task_examples(task: Task) -> list[Example]:
    """Every message of `task` and every reply to it (ideal and flawed), labelled.

    Harmful: a harmful task's request; the first user turn of a benign task that has three (the
    post's example: a refused harmful ask, then the benign rephrase); a compliant reply. All
    else is harmless: benign requests, refusals, tips, and every other family's texts.
    """
    on_topic = task.family in ("harmful", "benign")
    topic = task.facts.get("intent") if on_topic else None
    out = []
    for k, m in enumerate(task.messages):
        harmful = m["role"] == "user" and (
            task.family == "harmful" or (task.family == "benign" and k < len(task.messages) - 1))
        out.append(Example(m["content"], m["role"], harmful, topic))
    for name, reply in task.replies().items():
        out.append(Example(reply, "assistant", task.family == "harmful" and name == "comply", topic))
    return out


def _unwrap(text: str, template: str) -> str:
    """The `{x}` (or capitalised `{X}`) part of `text` written with `template` (and the world's
    opener and closer around it)."""
    pattern = re.escape(template).replace(re.escape("{x}"), "(.+)").replace(re.escape("{X}"), "(.+)")
    match = re.fullmatch(pattern, bare_request(text))
    if match is None:
        raise ValueError(f"{text!r} was not written with {template!r}")
    x = match.group(1)
    return x[:1].lower() + x[1:] if "{X}" in template else x


def _requests(task: Task) -> list[tuple[str, str, Example]]:
    """(wrapper, content, example) for each request of `task` written as wrapper + content."""
    index = int(task.template.rsplit(".", 1)[1])
    ex = task_examples(task)
    if task.family == "harmful":
        return [(HARMFUL_WRAPPERS[index], _unwrap(ex[0].text, HARMFUL_WRAPPERS[index]), ex[0])]
    if task.family == "benign":
        last = len(task.messages) - 1
        out = [(BENIGN_WRAPPERS[index], _unwrap(ex[last].text, BENIGN_WRAPPERS[index]), ex[last])]
        if last:  # the refused harmful ask before the rephrase is always asked with wrapper 0
            out.append((HARMFUL_WRAPPERS[0], _unwrap(ex[0].text, HARMFUL_WRAPPERS[0]), ex[0]))
        return out
    if task.family == "act":
        return [(ACT_WRAPPERS[index], _unwrap(ex[0].text, ACT_WRAPPERS[index]), ex[0])]
    return []


def _dropped(content: str, k: int) -> list[str]:
    words = content.split()
    return [" ".join(w for i, w in enumerate(words) if i not in gone)
            for gone in itertools.combinations(range(len(words)), k) if k < len(words)]


def _around(request: str, i: int) -> str:
    """`request` with the i-th opener and closer the world writes around requests (cycling), so
    the filter learns that greetings and thanks say nothing about harm."""
    return f"{OPENERS[i % len(OPENERS)]} {request} {CLOSERS[(i // len(OPENERS)) % len(CLOSERS)]}".strip()


def training_examples(world: World, seed: int, n_tasks: int, drop_words: int = 2) -> list[Example]:
    """The moderator's training set: the texts of `n_tasks` training tasks, plus the augmented
    requests the module docstring describes, all from the training split. A text seen under
    two topics (a generic refusal) is given none; duplicates are removed."""
    tasks = world.tasks("train", n_tasks, seed=seed)
    examples = [e for t in tasks for e in task_examples(t)]
    requests = [r for t in tasks for r in _requests(t)]
    wrappers = sorted({w for w, _, e in requests if e.topic is not None})
    contents = {c: e for _, c, e in requests}  # act contents keep topic None, harmful False
    for content, e in sorted(contents.items()):
        examples += [Example(_around(w.format(x=content), i + shift), "user", e.harmful, e.topic)
                     for i, w in enumerate(wrappers) for shift in range(0, 224, 7)]
        if e.topic is None:
            continue
        variants = [v for k in range(1, drop_words + 1) for v in _dropped(content, k)]
        examples += [Example(_around(wrappers[i % len(wrappers)].format(x=v), i), "user", e.harmful, e.topic)
                     for i, v in enumerate(dict.fromkeys(variants))]
    topics: dict[tuple[str, str], set] = {}
    for e in examples:
        topics.setdefault((e.text, e.role), set()).add(e.topic)
    return list(dict.fromkeys(
        e if len(topics[(e.text, e.role)]) == 1 else Example(e.text, e.role, e.harmful, None)
        for e in examples))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _group_weights(keys: Iterable[Any], mask: np.ndarray | None = None) -> np.ndarray:
    """Per-row loss weights giving every group of equal `keys` the same total (rows outside
    `mask` weigh 0), summing to 1: the few harmful texts count as much as the many others."""
    keys = list(keys)
    mask = np.ones(len(keys), dtype=bool) if mask is None else mask
    sizes: dict[Any, int] = {}
    for k, m in zip(keys, mask, strict=True):
        if m:
            sizes[k] = sizes.get(k, 0) + 1
    w = np.array([1.0 / sizes[k] if m else 0.0 for k, m in zip(keys, mask, strict=True)])
    return w / w.sum()


def train_moderator(world: World, seed: int | None = None, cfg=None) -> Moderator:
    """Train a moderator on `world`'s training split, with `cfg`'s settings (a
    `ModerationConfig`; the cpu preset when None). `seed` draws the training tasks (default
    `cfg.seed`). Full-batch Adam from zeros: the same seed gives the same weights."""
    import torch  # the trained filter is numpy; torch (seconds to import) only for training it

    cfg = cfg or ModerationConfig.preset("cpu")
    seed = cfg.seed if seed is None else seed
    examples = training_examples(world, seed, cfg.train_tasks, cfg.drop_words)
    n, d = len(examples), cfg.n_buckets
    feats = [featurize(e.text, d) for e in examples]
    ptr = np.cumsum([0] + [len(ids) for ids, _ in feats])
    with warnings.catch_warnings():  # CSR is "beta" in torch, and 10x faster than COO here
        warnings.simplefilter("ignore", UserWarning)
        cols = torch.from_numpy(np.concatenate([ids for ids, _ in feats]))
        vals = torch.from_numpy(np.concatenate([v for _, v in feats])).float()
        x = torch.sparse_csr_tensor(torch.from_numpy(ptr), cols, vals, size=(n, d), check_invariants=False)
        xt = x.to_sparse_coo().t().coalesce().to_sparse_csr()
    topic = torch.tensor([0 if e.topic is None else 1 + CATEGORIES.index(e.topic) for e in examples])
    harm = torch.tensor([float(e.harmful) for e in examples])
    roles = [e.role for e in examples]
    on_topic = (topic > 0).numpy() | harm.bool().numpy()
    # Topic: on-topic vs not balanced per role. Harm: harmful vs harmless balanced per role,
    # on on-topic texts only (the head is P(harm | topic)).
    w_topic = torch.from_numpy(_group_weights(zip(roles, on_topic, strict=True))).float()
    w_harm = torch.from_numpy(_group_weights(zip(roles, harm.tolist(), strict=True), on_topic)).float()
    onehot = torch.nn.functional.one_hot(topic, 1 + len(CATEGORIES)).float()
    weights = torch.zeros(d, 2 + len(CATEGORIES))
    bias = torch.zeros(2 + len(CATEGORIES))
    weights.grad, bias.grad = torch.zeros_like(weights), torch.zeros_like(bias)
    opt = torch.optim.Adam([weights, bias], lr=cfg.lr)
    for _ in range(cfg.steps):
        logits = x @ weights + bias
        # Gradients of the weighted cross-entropies by hand (x is sparse; autograd is slower).
        d_logits = torch.empty_like(logits)
        d_logits[:, :-1] = (torch.softmax(logits[:, :-1], dim=1) - onehot) * w_topic[:, None]
        d_logits[:, -1] = (torch.sigmoid(logits[:, -1]) - harm) * w_harm
        weights.grad.copy_(xt @ d_logits + cfg.l2 * weights)
        bias.grad.copy_(d_logits.sum(0))
        opt.step()
    return Moderator(weights.numpy(), bias.numpy(), cfg.warn_threshold, cfg.block_threshold)


# --------------------------------------------------------------------------------------------
# Measuring it
# --------------------------------------------------------------------------------------------


def heldout_examples(world: World, seed: int, n: int) -> list[Example]:
    """The labelled texts of `n` held-out tasks (every message and every reply, as they occur):
    their requests use phrasings no training text used."""
    return [e for t in world.tasks("heldout", n, seed=seed) for e in task_examples(t)]


def _counts(pairs: list[tuple[Example, Verdict]]) -> dict[str, Any]:
    tp = sum(e.harmful and v.flagged for e, v in pairs)
    fp = sum(not e.harmful and v.flagged for e, v in pairs)
    fn = sum(e.harmful and not v.flagged for e, v in pairs)
    tn = len(pairs) - tp - fp - fn
    right = sum(e.harmful and v.flagged and v.category == e.topic for e, v in pairs)
    labels = {truth: {lab: sum(e.harmful == (truth == "harmful") and v.label == lab for e, v in pairs)
                      for lab in LABELS} for truth in ("harmful", "harmless")}
    ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "category_accuracy": ratio(right, tp), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "positives": tp + fn, "negatives": fp + tn, "labels": labels}


def metrics_from(examples: Iterable[Example], verdicts: Iterable[Verdict]) -> dict[str, Any]:
    """Precision and recall of flagging (warn or block) with harmful as the positive class,
    overall and per role; category accuracy on the true positives; the confusion counts (tp,
    fp, fn, tn) and how many texts of each truth got each label. Rates are rounded to 4 places,
    None where undefined (nothing flagged, no positives)."""
    pairs = list(zip(examples, verdicts, strict=True))
    for e, v in pairs:
        if e.role != v.role:
            raise ValueError(f"a verdict for role {v.role!r} was paired with a {e.role!r} text: "
                             f"{e.text[:60]!r}")
    out = _counts(pairs)
    out.update({role: _counts([(e, v) for e, v in pairs if e.role == role]) for role in ROLES})
    return out


def moderation_metrics(moderator, world: World, seed: int = 0, n: int = 600) -> dict[str, Any]:
    """`metrics_from` on the texts of `n` held-out tasks of `world` (seeded by `seed`), each
    judged by `moderator.moderate(text, role)`. Held-out requests are phrased as no training
    text is; the compliant replies are the world's one wording per intent in both splits."""
    examples = heldout_examples(world, seed, n)
    out = metrics_from(examples, [moderator.moderate(e.text, e.role) for e in examples])
    return {**out, "tasks": n, "seed": seed}


# --------------------------------------------------------------------------------------------
# Users' reports of the filter's mistakes
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Stage `moderation` (notebook 09)
# --------------------------------------------------------------------------------------------

MODERATOR = "moderator.safetensors"
"""RUN_DIR/moderation/moderator.safetensors: the trained filter the chat loads."""


def run_moderation(cfg, run_dir, progress: bool = True) -> dict[str, Any]:
    """Stage `moderation`: train the filter on the world's training phrasings, save it to
    RUN_DIR/moderation/, and report precision and recall on held-out phrasings (the report's
    `moderation.*`: overall, then `user` and `assistant`)."""
    out = stage_dir(run_dir, "moderation")
    seed_everything(cfg.seed, "moderation")
    with StageTimer() as timer:
        world = World(cfg.seed)
        moderator = train_moderator(world, cfg=cfg)
        moderator.save(out / MODERATOR)
        metrics = moderation_metrics(moderator, world, cfg.seed, cfg.eval_tasks)
    return {**metrics, "seconds": round(timer.seconds, 1)}


def load_run_moderator(run_dir) -> Moderator:
    """The filter stage `moderation` saved in RUN_DIR/moderation/."""
    return Moderator.load(require(run_dir, "moderation", MODERATOR))


if __name__ == "__main__":
    # The acceptance figures: train on the cpu defaults and measure on held-out phrasings.
    from rlhf_course.config import ModerationConfig

    cfg = ModerationConfig.preset("cpu")
    world = World(cfg.seed)
    print(json.dumps(moderation_metrics(train_moderator(world, cfg=cfg), world, cfg.seed,
                                        cfg.eval_tasks), indent=1))
