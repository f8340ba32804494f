"""What chat users say back: thumbs up or down on replies, and flags on the moderation filter.

The ChatGPT post asks its users for exactly this: "Users are encouraged to provide feedback on
problematic model outputs through the UI". Here the chat widget (notebook 09) writes one JSON
line per click, flushed and fsynced before the click returns, and `feedback_to_comparisons`
turns the ratings into comparison records (`rankings.comparison_record`), so a learner's own
judgements join the rankings the reward model of the next `iterate` round trains on.

A record:

    {"id": "3f2a...", "context": [messages ending on a user turn], "reply": "the rated reply",
     "stage": "ppo", "rating": "up" | "down", "comment": "", "siblings": [earlier versions of
     the same turn, oldest first, from Regenerate], "rated_at": "2026-11-22T10:00:00+00:00"}

Flags: a user says the filter got a message wrong (`flag_record`, `append_flag`, one JSON line
each in RUN_DIR/feedback/flags.jsonl), about a `Verdict`, the filter's decision on one message.
The verdict is defined here because the chat, its flags and the filter trained by stage
`moderation` all speak it, and the chat must not depend on a stage.

What it simplifies: one rating per click (a later click on the same reply supersedes the
earlier one rather than editing it, so the file stays append-only); no user ids; a thumbs-up is
only ever compared with a thumbs-down, never with an unrated reply.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhf_course.data import ConversationError, validate_conversation
from rlhf_course.jsonl import append_jsonl, check_fields, load_checked
from rlhf_course.rankings import append_comparison, comparison_record, load_comparisons
from rlhf_course.world import HARMFUL_INTENTS

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
    at = check_fields(record, _REQUIRED, FeedbackError, "feedback", "a feedback record", where)
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
    `rankings.comparison_record` makes (source 'feedback', no task, id
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

LABELS = ("allow", "warn", "block")
"""A verdict's label: let the message through, show it with a warning, or hold it back."""

ROLES = ("user", "assistant")
"""Who wrote the message: what the user typed, or what the model answered."""

CATEGORIES = tuple(intent["id"] for intent in HARMFUL_INTENTS)
"""The harm categories, one per harmful intent of the world ('break_in', 'poison', ...)."""

FLAG_KINDS = ("false_positive", "false_negative")
"""A user's report: the filter flagged a harmless message, or let a harmful one through."""

FLAGS = "flags.jsonl"
"""Users' reports of the filter's mistakes; the chat keeps them in RUN_DIR/feedback/."""


@dataclass(frozen=True)
class Verdict:
    """The filter's decision on one message."""

    label: str
    """'allow', 'warn' or 'block' (LABELS)."""
    category: str | None
    """The most likely harm (an intent id such as 'break_in'); None when allowed."""
    score: float
    """Probability of harm in [0, 1]; the label is this against the moderator's thresholds."""
    role: str
    """'user' or 'assistant': whose message was judged."""

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {self.label!r}")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if isinstance(self.score, bool) or not isinstance(self.score, int | float) or not 0 <= self.score <= 1:
            raise ValueError(f"score must be a probability in [0, 1], got {self.score!r}")
        if self.category is not None and self.category not in CATEGORIES:
            raise ValueError(f"category must be None or one of {CATEGORIES}, got {self.category!r}")

    @property
    def flagged(self) -> bool:
        """Warned or blocked: what precision and recall count as a positive."""
        return self.label != "allow"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FlagError(ValueError):
    """A flag record that cannot be used; the message names the field and says why."""


def validate_flag(record: Any, where: str = "") -> dict[str, Any]:
    """Check one flag record (`flag_record` makes them) and return a copy of it."""
    at = check_fields(record, ("text", "role", "verdict", "kind", "comment", "flagged_at"), FlagError, "flag",
                      "a flag record", where)
    for key in ("text", "comment", "flagged_at"):
        if not isinstance(record[key], str):
            raise FlagError(f"{at}{key} must be a string, got {type(record[key]).__name__}")
    if not record["text"].strip():
        raise FlagError(f"{at}text must be the flagged message, got an empty string")
    if record["role"] not in ROLES:
        raise FlagError(f"{at}role must be one of {ROLES}, got {record['role']!r}")
    if record["kind"] not in FLAG_KINDS:
        raise FlagError(f"{at}kind must be one of {FLAG_KINDS}, got {record['kind']!r}")
    verdict = record["verdict"]
    try:
        verdict = Verdict(**verdict) if isinstance(verdict, Mapping) else verdict
    except (TypeError, ValueError) as err:
        raise FlagError(f"{at}verdict is not a verdict ({err})") from err
    if not isinstance(verdict, Verdict):
        raise FlagError(f"{at}verdict must be a Verdict or its dict, got {type(verdict).__name__}")
    if verdict.role != record["role"]:
        raise FlagError(f"{at}verdict.role {verdict.role!r} differs from role {record['role']!r}")
    # A false positive is a flag on a harmless message; a false negative, a harmful one allowed.
    if (record["kind"] == "false_positive") != verdict.flagged:
        raise FlagError(f"{at}kind {record['kind']!r} does not fit a {verdict.label!r} verdict: "
                        "false_positive is for warned or blocked messages, false_negative for allowed ones")
    return {**record, "verdict": verdict.as_dict()}


def flag_record(text: str, role: str, verdict: Verdict, kind: str, comment: str = "") -> dict[str, Any]:
    """A checked record of a user saying the filter got `text` wrong: 'false_positive' (it
    warned or blocked a harmless message) or 'false_negative' (it allowed a harmful one)."""
    return validate_flag({
        "text": text, "role": role,
        "verdict": verdict.as_dict() if isinstance(verdict, Verdict) else verdict,
        "kind": kind, "comment": comment.strip() if isinstance(comment, str) else comment,
        "flagged_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })


def append_flag(path: str | os.PathLike, record: Mapping[str, Any]) -> dict[str, Any]:
    """Check `record` and append it to the JSON Lines file `path`, flushed and fsynced before
    returning. A bad record raises and leaves the file as it was."""
    record = validate_flag(record, where=f"new flag for {path}")
    append_jsonl(path, record)
    return record


def load_flags(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every flag record of `path`, checked; an error names the file and line."""
    return load_checked(path, validate_flag, FlagError, raise_as=FlagError, advice="")
