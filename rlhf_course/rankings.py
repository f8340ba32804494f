"""Rankings: the record a person or a simulated annotator writes when ordering K replies, and
the pairs it implies.

A ranking is one JSON line, validated before it is written and fsynced before anything else
happens, so a dead kernel loses nothing submitted. The collection stage (`comparisons`), the
ranking widget, the chat's feedback and the hh track all write this one format; the reward
model, PPO's prompts and the beyond-PPO methods read it.

A record:

    {"id": "c-0-000012", "context": [messages ending on a user turn], "replies": [K strings],
     "ranking": [indices of replies, best first], "ranker": "annotators(sharpness=8.0, ...)",
     "ranked_at": "2026-11-22T10:00:00+00:00", "source": "policy" | "demonstration",
     "turn": index of the replaced assistant message, "split": "train" | "heldout",
     "family": task family, "task": the toy-world task record (for the gold labeler), or null}

On track 'hh', HH-RLHF's pairs become records of the same shape (K = 2, the chosen reply first,
source "hh-rlhf", no task) in files of their own; see `rlhf_course.hh`.
"""

from __future__ import annotations

import itertools
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhf_course.data import to_preference_dataset, validate_conversation
from rlhf_course.jsonl import append_jsonl, check_fields, load_checked, write_jsonl
from rlhf_course.world import Task, gold_score

K_MIN, K_MAX = 2, 9
"""Replies per ranking: at least a pair; at most nine, InstructGPT's largest K."""

COMPARISONS = "comparisons.jsonl"
"""Rankings used to train the reward model (training prompts), in RUN_DIR/comparisons/."""

HELDOUT_COMPARISONS = "heldout.jsonl"
"""Rankings of the policy's replies to held-out prompts, only for measuring the reward model."""

HUMAN_COMPARISONS = "human.jsonl"
"""Rankings a learner made with the widget (notebook 04), in RUN_DIR/comparisons/."""

HH_COMPARISONS = "hh.jsonl"
"""Track 'hh': HH-RLHF training pairs as rankings of K=2 (they train the reward model too)."""

HH_HELDOUT_COMPARISONS = "hh_heldout.jsonl"
"""Track 'hh': HH-RLHF test pairs as rankings, only for measuring the reward model."""

_REQUIRED = ("context", "replies", "ranking", "ranker")


class ComparisonError(ValueError):
    """A ranking or comparison record that cannot be used; the message says what and where."""


def validate_ranking(replies: Sequence[str], ranking: Sequence[int], where: str = "") -> list[int]:
    """Check that `ranking` orders every one of `replies` exactly once, best first, and return it
    as a list of ints. Raises `ComparisonError` for K outside 2..9, duplicate replies (nobody can
    rank a reply against itself), ties and orders that are not a permutation of 0..K-1."""
    at = f"{where}: " if where else ""
    if isinstance(replies, str) or not isinstance(replies, Sequence):
        raise ComparisonError(f"{at}replies must be a list of strings, got {type(replies).__name__}")
    k = len(replies)
    if not K_MIN <= k <= K_MAX:
        raise ComparisonError(f"{at}{k} replies: a ranking needs between {K_MIN} and {K_MAX} "
                              "(InstructGPT used 4 to 9); sample more or drop some")
    for i, r in enumerate(replies):
        if not isinstance(r, str) or not r.strip():
            raise ComparisonError(f"{at}reply {i} is empty or not text: every reply must be a non-empty string")
    seen: dict[str, int] = {}
    for i, r in enumerate(replies):
        key = " ".join(r.split())
        if key in seen:
            raise ComparisonError(
                f"{at}replies {seen[key]} and {i} are the same text ({r[:60]!r}); a ranking compares "
                "distinct replies: drop the duplicate (or sample another) and rank the rest")
        seen[key] = i
    if isinstance(ranking, (str, bytes, Mapping)) or not hasattr(ranking, "__iter__"):
        raise ComparisonError(f"{at}ranking must be a list of reply indices, best first; got {ranking!r}")
    ranking = list(ranking)  # also a numpy array or a tuple
    for pos, x in enumerate(ranking):
        if isinstance(x, (list, tuple, set)):
            raise ComparisonError(
                f"{at}position {pos} of the ranking holds a group {list(x)}: ties are not allowed; "
                "order every reply strictly, best first")
        try:  # operator.index accepts Python and numpy integers (argsort output), not floats
            if isinstance(x, bool):
                raise TypeError
            operator.index(x)
        except TypeError:
            raise ComparisonError(f"{at}ranking entry {x!r} at position {pos} is not a reply index (an int)") from None
    ranking = [operator.index(x) for x in ranking]
    counts = {x: ranking.count(x) for x in ranking}
    repeated = sorted(x for x, c in counts.items() if c > 1)
    if repeated:
        raise ComparisonError(
            f"{at}reply {repeated[0]} appears {counts[repeated[0]]} times in the ranking {list(ranking)}: "
            "ties are not allowed; each reply takes exactly one place")
    if sorted(ranking) != list(range(k)):
        missing = sorted(set(range(k)) - set(ranking))
        extra = sorted(set(ranking) - set(range(k)))
        detail = (f"missing {missing}" if missing else "") + ("; " if missing and extra else "") + (
            f"no reply has index {extra}" if extra else "")
        raise ComparisonError(
            f"{at}ranking {list(ranking)} is not an order of all {k} replies (0..{k - 1}): {detail}")
    return [int(x) for x in ranking]


def validate_comparison(record: Any, where: str = "") -> dict[str, Any]:
    """Check one comparison record (see the module docstring) and return it unchanged."""
    at = check_fields(record, _REQUIRED, ComparisonError, "comparison", "a comparison", where)
    context = record["context"]
    try:
        validate_conversation(list(context) + [{"role": "assistant", "content": "-"}])
    except (ValueError, TypeError) as err:
        raise ComparisonError(f"{at}context: {err} (it must alternate user/assistant and end on a user turn)") from err
    validate_ranking(record["replies"], record["ranking"], where)
    if not isinstance(record["ranker"], str) or not record["ranker"].strip():
        raise ComparisonError(f"{at}ranker must say who ranked (e.g. 'person:ada' or 'annotators(...)')")
    return dict(record)


def comparison_record(context: Sequence[Mapping[str, str]], replies: Sequence[str], ranking: Sequence[int],
                      ranker: str, *, task: Task | None = None, source: str = "policy",
                      turn: int | None = None, item_id: str | None = None) -> dict[str, Any]:
    """A checked comparison record, stamped with the current time (UTC)."""
    record = {
        "id": item_id,
        "context": [{"role": m["role"], "content": m["content"]} for m in context],
        "replies": list(replies),
        "ranking": list(ranking),
        "ranker": ranker,
        "ranked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "turn": len(context) if turn is None else turn,
        "split": task.split if task else None,
        "family": task.family if task else None,
        "task": task.to_record() if task else None,
    }
    return validate_comparison(record)


def append_comparison(path: str | os.PathLike, record: Mapping[str, Any]) -> dict[str, Any]:
    """Check `record` and append it to the JSON Lines file `path`, flushed and fsynced before
    returning: once this returns, a killed kernel or process cannot lose it. A bad record raises
    and leaves the file as it was."""
    record = validate_comparison(record, where=f"new record for {path}")
    append_jsonl(path, record)
    return record


def load_comparisons(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and check every record of a comparisons file; errors name the file and line."""
    return load_checked(path, validate_comparison, ComparisonError)


def undo_last_comparison(path: str | os.PathLike) -> dict[str, Any] | None:
    """Remove the last record of `path` and return it (None when the file is empty or absent).

    The file is rewritten atomically (a new file renamed over the old one), so a crash during the
    undo leaves either every record or every record but the last, never a broken file."""
    path = Path(path)
    if not path.exists():
        return None
    records = load_comparisons(path)
    if not records:
        return None
    write_jsonl(path, records[:-1])
    return records[-1]


def ranking_pairs(ranking: Sequence[int]) -> list[tuple[int, int]]:
    """All K-choose-2 (preferred, rejected) index pairs a ranking implies, best-first order."""
    return [(ranking[i], ranking[j]) for i, j in itertools.combinations(range(len(ranking)), 2)]


def preference_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Expand rankings into TRL's conversational preference rows, one per pair:
    `{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}`,
    plus `group` (which ranking the pair came from) and `k`."""
    rows = []
    for g, rec in enumerate(records):
        for win, lose in ranking_pairs(rec["ranking"]):
            rows.append({
                "prompt": [dict(m) for m in rec["context"]],
                "chosen": [{"role": "assistant", "content": rec["replies"][win]}],
                "rejected": [{"role": "assistant", "content": rec["replies"][lose]}],
                "group": rec.get("id") or str(g),
                "k": len(rec["replies"]),
            })
    return rows


def rankings_dataset(records: Iterable[Mapping[str, Any]]):
    """The rankings as a `datasets.Dataset` of preference pairs (prompt, chosen, rejected; see
    `preference_rows`), the conversational format TRL's RewardTrainer and DPOTrainer read."""
    return to_preference_dataset(preference_rows(records))


def gold_ranking(task: Task, replies: Sequence[str]) -> list[int]:
    """How the gold labeler orders `replies` (best first; equal scores keep their order)."""
    scores = [gold_score(task, r).total for r in replies]
    return sorted(range(len(replies)), key=lambda i: -scores[i])


@dataclass
class RankItem:
    """One context and the K alternative replies to rank (not yet ranked)."""

    context: list[dict[str, str]]
    """The conversation up to the replaced assistant message (ends on a user turn)."""
    replies: list[str]
    """K distinct replies sampled from the policy."""
    task: Task | None = None
    """The toy-world task behind the context, so the gold labeler can judge (None for real data)."""
    source: str = "policy"
    """'policy' (a chat with the current policy) or 'demonstration' (a trainer's conversation)."""
    turn: int | None = None
    """Index of the replaced assistant message in the original conversation (None: the end of
    `context`, i.e. a reply to its last user turn)."""
    item_id: str = ""
    """A stable id, e.g. 'c-0-000012' (seed and position)."""
    meta: dict[str, Any] = field(default_factory=dict)

    def record(self, ranking: Sequence[int], ranker: str) -> dict[str, Any]:
        """The comparison record for this item ranked as `ranking` by `ranker` (checked)."""
        return comparison_record(self.context, self.replies, ranking, ranker, task=self.task,
                                 source=self.source, turn=self.turn, item_id=self.item_id)


def longer_wins(records: Iterable[Mapping[str, Any]], tolerance: float = 1e-9) -> tuple[float, int]:
    """(share, pairs): among ranked pairs whose replies gold scores equal (within `tolerance`)
    but whose lengths in words differ, how often the ranker put the longer reply first. 0.5 is
    no taste for length; the simulated annotators, like the post's trainers, sit above it."""
    longer = total = 0
    for rec in records:
        if not rec.get("task"):
            continue
        task = Task.from_record(rec["task"])
        golds = [gold_score(task, r).total for r in rec["replies"]]
        words = [len(r.split()) for r in rec["replies"]]
        for win, lose in ranking_pairs(rec["ranking"]):
            if abs(golds[win] - golds[lose]) <= tolerance and words[win] != words[lose]:
                total += 1
                longer += words[win] > words[lose]
    return (longer / total if total else float("nan")), total


def annotator_agreement_on(records: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(agreed, judged): over the ranked pairs whose gold scores differ, how many the ranking
    orders as gold does. On the policy's own replies this is the annotators' real accuracy."""
    agreed = judged = 0
    for rec in records:
        if not rec.get("task"):
            continue
        task = Task.from_record(rec["task"])
        a, j = agreement(rec["ranking"], [gold_score(task, r).total for r in rec["replies"]])
        agreed, judged = agreed + a, judged + j
    return agreed, judged


def agreement(ranking: Sequence[int], scores: Sequence[float]) -> tuple[int, int]:
    """(agreed, judged): of a ranking's K-choose-2 pairs that `scores` separate (different
    values), how many the ranking orders the same way as the scores."""
    judged = [(w, lo) for w, lo in ranking_pairs(ranking) if scores[w] != scores[lo]]
    return sum(scores[w] > scores[lo] for w, lo in judged), len(judged)


def pairwise_accuracy(scores: Sequence[Sequence[float]], rankings: Sequence[Sequence[int]]) -> float:
    """Share of all ranked pairs (K-choose-2 per ranking) that `scores` order the same way.
    A pair the model scores exactly equal counts half. `scores[g][i]` is reply i of ranking g."""
    agree = total = 0.0
    for s, ranking in zip(scores, rankings, strict=True):
        for win, lose in ranking_pairs(ranking):
            total += 1
            agree += 1.0 if s[win] > s[lose] else 0.5 if s[win] == s[lose] else 0.0
    return agree / total if total else float("nan")
