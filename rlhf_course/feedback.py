"""Feedback on chat replies: thumbs up or down and a comment, kept as data for the next round.

The ChatGPT post asks its users for exactly this: "Users are encouraged to provide feedback on
problematic model outputs through the UI". Here the chat widget (notebook 09) writes one JSON
line per click, flushed and fsynced before the click returns, and `feedback_to_comparisons`
turns the ratings into comparison records (`comparisons.comparison_record`), so a learner's own
judgements join the rankings the reward model of the next `iterate` round trains on.

A record:

    {"id": "3f2a...", "context": [messages ending on a user turn], "reply": "the rated reply",
     "stage": "ppo", "rating": "up" | "down", "comment": "", "siblings": [earlier versions of
     the same turn, oldest first, from Regenerate], "rated_at": "2026-11-22T10:00:00+00:00"}

What it simplifies: one rating per click (a later click on the same reply supersedes the
earlier one rather than editing it, so the file stays append-only); no user ids; a thumbs-up is
only ever compared with a thumbs-down, never with an unrated reply.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhf_course.comparisons import append_comparison, comparison_record, load_comparisons
from rlhf_course.data import (
    ConversationError,
    append_jsonl,
    load_checked,
    validate_conversation,
)

FEEDBACK = "feedback.jsonl"
"""Ratings from the chat widget, in RUN_DIR/feedback/."""
RATINGS = ("up", "down")
"""A thumbs-up or a thumbs-down."""
FEEDBACK_RANKER = "feedback:thumbs"
"""How comparisons made from feedback sign themselves (`ranker` of the comparison record)."""

_REQUIRED = ("id", "context", "reply", "stage", "rating", "comment", "siblings", "rated_at")


class FeedbackError(ValueError):
    """A feedback record that cannot be used; the message says which field and why."""


def validate_feedback(record: Any, where: str = "") -> dict[str, Any]:
    """Check one feedback record (see the module docstring) and return a copy of it."""
    at = f"{where}: " if where else ""
    if not isinstance(record, Mapping):
        raise FeedbackError(f"{at}a feedback record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise FeedbackError(f"{at}feedback lacks field(s) {missing}; it needs {list(_REQUIRED)}")
    try:
        validate_conversation(record["context"], ends_with="user")
    except ConversationError as err:
        raise FeedbackError(f"{at}context: {err} (it is the conversation before the reply, so it "
                            "ends on the user turn the reply answers)") from err
    for key in ("id", "stage"):
        if not isinstance(record[key], str) or not record[key].strip():
            raise FeedbackError(f"{at}{key} must be a non-empty string, got {record[key]!r}")
    # An empty reply is still worth a thumbs-down; it just never becomes a comparison.
    for key in ("reply", "comment", "rated_at"):
        if not isinstance(record[key], str):
            raise FeedbackError(f"{at}{key} must be a string, got {type(record[key]).__name__}")
    if record["rating"] not in RATINGS:
        raise FeedbackError(f"{at}rating must be one of {RATINGS}, got {record['rating']!r}")
    siblings = record["siblings"]
    if not isinstance(siblings, list) or not all(isinstance(s, str) for s in siblings):
        raise FeedbackError(f"{at}siblings must be a list of strings (earlier versions of the reply)")
    return dict(record)


def feedback_record(context: Sequence[Mapping[str, str]], reply: str, stage: str, rating: str,
                    comment: str = "", siblings: Sequence[str] = (), *,
                    record_id: str | None = None) -> dict[str, Any]:
    """A checked feedback record on `reply`, the answer `stage`'s model gave to `context`.

    `siblings` are the earlier versions of the same turn (each Regenerate keeps the one it
    replaced), oldest first. The id is random unless given; the time is now (UTC).
    """
    record = {
        "id": uuid.uuid4().hex if record_id is None else record_id,
        "context": [{"role": m["role"], "content": m["content"]} for m in context],
        "reply": reply,
        "stage": stage,
        "rating": rating,
        "comment": comment.strip() if isinstance(comment, str) else comment,
        "siblings": list(siblings),
        "rated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return validate_feedback(record)


def append_feedback(path: str | os.PathLike, record: Mapping[str, Any]) -> dict[str, Any]:
    """Check `record` and append it to the JSON Lines file `path`, flushed and fsynced: once this
    returns, a killed kernel cannot lose it. A bad record raises and leaves the file alone."""
    record = validate_feedback(record, where=f"new record for {path}")
    append_jsonl(path, record)
    return record


def load_feedback(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and check every record of a feedback file; an error names the file and line."""
    return load_checked(path, validate_feedback, FeedbackError)


def _key(text: str) -> str:
    # Replies that differ only in whitespace are the same reply (as `validate_ranking` says).
    return " ".join(text.split())


def feedback_to_comparisons(records: Iterable[Mapping[str, Any]],
                            ranker: str = FEEDBACK_RANKER) -> list[dict[str, Any]]:
    """Comparison records (pairs, K = 2) made from thumbs: a liked reply ranks above a disliked one.

    Records are grouped by context (the exact conversation before the reply). In each group,
    every thumbs-up reply is paired with every thumbs-down reply, liked first. That covers both
    cases the chat produces: a reply liked after Regenerate ranks above its disliked siblings
    (siblings answer the same context), and a liked reply ranks above a disliked reply to the
    same context in another conversation. Each pair is one record in the format
    `comparisons.comparison_record` makes (source 'feedback', no task, id
    `fb-<liked id>-<disliked id>`), so `rm` and `iterate` read it like any human ranking.

    No pair comes from: a thumbs-up with no thumbs-down in its context, or the reverse (nothing
    to compare it with); a rating superseded by a later rating of the same reply in the same
    context (the latest click counts); empty replies; siblings nobody rated (being regenerated
    is not a thumbs-down); or comments (kept for people to read, not turned into labels).
    """
    latest: dict[str, dict[str, dict[str, Any]]] = {}  # context -> reply -> its latest record
    contexts: dict[str, list[dict[str, str]]] = {}
    for rec in records:
        rec = validate_feedback(rec)
        context = [{"role": m["role"], "content": m["content"]} for m in rec["context"]]
        ckey = repr([(m["role"], m["content"]) for m in context])
        contexts.setdefault(ckey, context)
        if _key(rec["reply"]):
            group = latest.setdefault(ckey, {})
            group.pop(_key(rec["reply"]), None)  # re-inserted last: its latest rating, latest place
            group[_key(rec["reply"])] = rec
    out = []
    for ckey, group in latest.items():
        liked = [r for r in group.values() if r["rating"] == "up"]
        disliked = [r for r in group.values() if r["rating"] == "down"]
        for up in liked:
            for down in disliked:
                out.append(comparison_record(contexts[ckey], [up["reply"], down["reply"]], [0, 1], ranker,
                                             source="feedback", item_id=f"fb-{up['id']}-{down['id']}"))
    return out


def save_feedback_comparisons(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> list[dict[str, Any]]:
    """Append to the comparisons file `path` the pairs `feedback_to_comparisons` makes that it
    does not hold yet (by id), and return those. Re-running it after more feedback adds only
    the new pairs. RUN_DIR/comparisons/human.jsonl is where stage `rm` and every `iterate` round
    (as replay) read human rankings from."""
    path = Path(path)
    have = {r.get("id") for r in load_comparisons(path)} if path.exists() else set()
    new = [c for c in feedback_to_comparisons(records) if c["id"] not in have]
    for c in new:
        append_comparison(path, c)
    return new
