"""The hub's datasets in the course's formats: small pure converters for SFT demonstrations
(Dolly, no_robots, OpenAssistant) and for Anthropic's HH-RLHF comparisons, and one loader for
a dataset name on the hub or a local file in the hub's exact schema.

A GPU user trains on real people's demonstrations and preferences with the same code that
trains on the toy world's; the tests read small local files in these schemas (no network)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from rlhf_course.data import (
    ConversationError,
    to_hf_dataset,
    to_preference_dataset,
    validate_conversation,
)
from rlhf_course.jsonl import DataFormatError


def convert_dolly(record: Mapping[str, Any], skipped: Counter | None = None) -> dict[str, Any] | None:
    """One `databricks/databricks-dolly-15k` record (`instruction`, `context`, `response`,
    `category`) as `{"messages": [user, assistant]}`, or None (counted in `skipped`).

    A non-empty `context` (the passage for closed QA, summarisation, extraction) goes into the
    user turn after the instruction, separated by a blank line. Whitespace is trimmed.
    """
    instruction = _clean_text(record.get("instruction"))
    context = _clean_text(record.get("context"))
    response = _clean_text(record.get("response"))
    if not instruction:
        return _skip(skipped, "empty instruction")
    if not response:
        return _skip(skipped, "empty response")
    user = f"{instruction}\n\n{context}" if context else instruction
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}]}


def convert_messages(record: Mapping[str, Any], skipped: Counter | None = None) -> dict[str, Any] | None:
    """One messages-style record (`HuggingFaceH4/no_robots`: `prompt`, `prompt_id`, `messages`,
    `category`) as `{"messages": [...]}`, or None (counted in `skipped`) if it breaks the format.

    A leading system message stays. The conversation must end on the assistant's reply.
    """
    messages = record.get("messages")
    if isinstance(messages, list):
        messages = [{**m, "content": _clean_text(m.get("content"))} if isinstance(m, Mapping) else m
                    for m in messages]
    try:
        return {"messages": validate_conversation(messages)}
    except ConversationError as err:
        return _skip(skipped, err.reason)


def flatten_oasst(rows: Iterable[Mapping[str, Any]], lang: str = "en",
                  skipped: Counter | None = None) -> list[dict[str, Any]]:
    """Turn `OpenAssistant/oasst1` rows (one message per row, linked by `parent_id`) into
    conversations, `[{"messages": [...]}, ...]`.

    Each tree is rebuilt from its root (the prompter message with a null `parent_id`). Messages
    that are deleted, not in `lang` (None for every language), or failed review are dropped with
    everything below them. The walk branches at every prompter follow-up, but at each assistant
    branch (several replies to one prompt) it follows only the best-ranked reply: `rank` 0 is the
    reply the OASST volunteers ranked best, null ranks (unranked) come last, ties keep file order.
    This keeps one good reply per prompt, the choice the OASST authors made for their SFT data,
    instead of training on replies people ranked worse. One conversation is returned per
    assistant message that ends a path (no follow-up of it got a reply), so no conversation is a
    prefix of another.
    """
    rows = list(rows)
    by_id: dict[str, Mapping[str, Any]] = {}
    children: dict[str, list[str]] = {}
    order: dict[str, int] = {}
    for i, row in enumerate(rows):
        mid = row.get("message_id")
        if mid is None:
            _skip(skipped, "row without message_id")
            continue
        by_id[mid], order[mid] = row, i
    for mid, row in by_id.items():
        parent = row.get("parent_id")
        if parent is not None:
            if parent in by_id:
                children.setdefault(parent, []).append(mid)
            else:
                _skip(skipped, "parent message missing")

    def usable(mid: str) -> bool:
        row = by_id[mid]
        reason = ("deleted" if row.get("deleted") else
                  f"language not {lang}" if lang is not None and row.get("lang") != lang else
                  "failed review" if row.get("review_result") is False else
                  "empty text" if not _clean_text(row.get("text")) else
                  "unknown role" if row.get("role") not in ("prompter", "assistant") else None)
        if reason:  # counted once per dropped subtree, at its top message
            _skip(skipped, reason)
        return reason is None

    def rank_key(mid: str) -> tuple[int, float, int]:
        rank = by_id[mid].get("rank")
        return (rank is None, rank if rank is not None else 0, order[mid])

    out: list[dict[str, Any]] = []

    def walk(mid: str, path: list[dict[str, str]]) -> None:
        # Recursion depth is the conversation's length (a few dozen turns at most). Replies are
        # only taken from a prompter's assistant children and vice versa, so roles alternate.
        row = by_id[mid]
        role = "user" if row["role"] == "prompter" else "assistant"
        path = [*path, {"role": role, "content": _clean_text(row["text"])}]
        kids = [c for c in children.get(mid, []) if usable(c)]
        if role == "user":
            replies = [c for c in kids if by_id[c]["role"] == "assistant"]
            if not replies:
                if len(path) == 1:
                    _skip(skipped, "prompt without a usable reply")
                return
            walk(min(replies, key=rank_key), path)
            return
        before = len(out)
        for c in sorted(kids, key=lambda c: order[c]):
            if by_id[c]["role"] == "prompter":
                walk(c, path)
        if len(out) == before:  # no follow-up led to another reply: this path ends here
            out.append({"messages": path})

    roots = [mid for mid, row in by_id.items() if row.get("parent_id") is None]
    for root in sorted(roots, key=lambda m: order[m]):
        if by_id[root].get("role") != "prompter":
            _skip(skipped, "tree root is not a prompter message")
        elif usable(root):
            walk(root, [])
    return out

# A turn label counts only at the very start of the text or after a blank line, because that is
# how HH-RLHF separates turns; "Human:" in the middle of a reply (the red-team data has replies
# that quote the user that way) stays part of the reply. Extra blank lines or spaces around the
# boundary are tolerated, since the label, not the exact padding, is what marks a turn.
_HH_TURN = re.compile(r"(?:\A\s*|\n[ \t]*\n\s*)(Human|Assistant):")

_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript (`"\\n\\nHuman: ...\\n\\nAssistant: ..."`) into
    `[{"role": "user" | "assistant", "content": ...}, ...]`.

    A turn starts at a `Human:` or `Assistant:` label at the start of the text or after a blank
    line; everything up to the next such label is its content, blank lines inside included, and
    is stripped at both ends (inner spacing is kept). The leading blank line may be missing.
    Contents can be empty (HH has records whose last reply is blank) and roles are not checked
    for alternation: deciding what to keep is the caller's job (see `convert_hh`).
    Raises `DataFormatError`, quoting the start of the text, if it holds no turn or does not
    start with a Human turn.
    """
    if not isinstance(text, str):
        raise DataFormatError(f"HH transcript must be a string, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    labels = list(_HH_TURN.finditer(text))
    if not labels:
        raise DataFormatError(
            "HH transcript has no turns: no 'Human:' or 'Assistant:' label at its start or after "
            f"a blank line. It starts {_quote_start(text)}"
        )
    first = labels[0]
    if text[:first.start()].strip() or first.group(1) != "Human":
        raise DataFormatError(
            "HH transcript does not start with a Human turn (expected '\\n\\nHuman: ...' first). "
            f"It starts {_quote_start(text)}"
        )
    ends = [m.start() for m in labels[1:]] + [len(text)]
    return [{"role": _HH_ROLES[m.group(1)], "content": _clean_text(text[m.end():end])}
            for m, end in zip(labels, ends, strict=True)]


def convert_hh(record: Mapping[str, Any], skipped: Counter | None = None) -> dict[str, Any] | None:
    """One `Anthropic/hh-rlhf` record (`chosen`, `rejected`: two transcripts of the same
    conversation that differ in the last reply) in TRL's conversational preference format,
    `{"prompt": [..., user], "chosen": [assistant], "rejected": [assistant]}`, or None (the
    reason counted in `skipped`).

    HH leaves the prompt implicit, repeated in both transcripts; here it is made explicit: the
    turns before each transcript's final assistant reply, which must be the same in both.
    Skipped: a transcript that does not end on an assistant turn, prompts that differ, an empty
    reply, identical replies, and a conversation that breaks the messages rules (checked by
    `validate_conversation`, e.g. two user turns in a row; its reason is the one counted).
    A missing field or a non-string value raises `DataFormatError` naming the field, and so does
    a transcript that `parse_hh_transcript` cannot read.
    """
    turns = {}
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DataFormatError(f"HH record has no {key!r} field (found {sorted(record)}): "
                                  'expected {"chosen": "\\n\\nHuman: ...", "rejected": "\\n\\nHuman: ..."}')
        value = record[key]
        if not isinstance(value, str):
            raise DataFormatError(
                f"HH record field {key!r} is a {type(value).__name__}, not a string: convert_hh "
                "takes the raw transcript text (data already in messages form needs no conversion)"
            )
        try:
            turns[key] = parse_hh_transcript(value)
        except DataFormatError as err:
            raise DataFormatError(f"HH record field {key!r}: {err}") from err
    chosen, rejected = turns["chosen"], turns["rejected"]
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        return _skip(skipped, "final turn is not the assistant's")
    if chosen[:-1] != rejected[:-1]:
        return _skip(skipped, "prompts differ")
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        return _skip(skipped, "empty reply")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        # Nothing to learn from a pair with no preference in it; it would only dilute the loss.
        return _skip(skipped, "chosen equals rejected")
    try:
        clean_chosen = validate_conversation(chosen, where="HH record, field 'chosen'")
        clean_rejected = validate_conversation(rejected, where="HH record, field 'rejected'")
    except ConversationError as err:
        return _skip(skipped, err.reason)
    return {"prompt": clean_chosen[:-1], "chosen": clean_chosen[-1:], "rejected": clean_rejected[-1:]}


def _quote_start(text: str, n: int = 60) -> str:
    return repr(text[:n]) + ("..." if len(text) > n else "")


def _clean_text(value: Any) -> str:
    # Hub text has Windows line ends, trailing spaces and blank padding; none of it is content.
    if not isinstance(value, str):
        return ""
    return value.replace("\r\n", "\n").replace("\r", "\n").strip()


def _skip(skipped: Counter | None, reason: str) -> None:
    if skipped is not None:
        skipped[reason] += 1
    return None

HUB_KINDS: dict[str, tuple[str, Callable[..., Any]]] = {
    "dolly": ("databricks/databricks-dolly-15k", convert_dolly),
    "messages": ("HuggingFaceH4/no_robots", convert_messages),
    "oasst": ("OpenAssistant/oasst1", flatten_oasst),
    "hh": ("Anthropic/hh-rlhf", convert_hh),
}
"""kind -> (the hub dataset it was written for, its converter)."""

_KIND_COLUMNS = {"oasst": {"message_id", "parent_id", "role", "text"},
                 "dolly": {"instruction", "response"}, "messages": {"messages"},
                 "hh": {"chosen", "rejected"}}

# Columns a kind is only inferred from when they hold strings: preference sets already in
# conversational form also have chosen/rejected columns, but of messages, and must not pass for HH.
_KIND_TEXT_COLUMNS = {"hh": {"chosen", "rejected"}}

_PREFERENCE_KINDS = {"hh"}

_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_hub_dataset(name_or_path: str | os.PathLike, kind: str | None = None, split: str = "train",
                     lang: str = "en", skipped: Counter | None = None,
                     cache_dir: str | os.PathLike | None = None):
    """Load an SFT or preference dataset with `datasets.load_dataset` and convert it.

    `name_or_path` is a hub id (needs internet, e.g. "databricks/databricks-dolly-15k") or a
    local JSON/JSONL/parquet/CSV file or a folder of them (works offline; a single file's rows
    become `split`). `kind` is "dolly", "messages" (no_robots and other messages-style sets),
    "oasst" or "hh" (Anthropic/hh-rlhf preference pairs); None infers it from the columns (for
    "hh", string `chosen` and `rejected` columns). `lang` filters OpenAssistant messages. Skipped
    records are counted by reason into `skipped` if given; `cache_dir` overrides where `datasets`
    caches its Arrow files (default ~/.cache/huggingface/datasets). Returns a `datasets.Dataset`:
    for the SFT kinds with one column, `messages`, which TRL's SFTTrainer takes as is; for "hh"
    with columns `prompt`, `chosen` and `rejected` (see `convert_hh`, `to_preference_dataset`).
    """
    import datasets  # deferred: importing datasets costs a second, most callers never need it

    path = Path(name_or_path)
    cache = str(cache_dir) if cache_dir is not None else None
    if path.is_file():
        fmt = _LOCAL_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"load_hub_dataset: {path} has suffix {path.suffix!r}; use one of "
                             f"{', '.join(_LOCAL_FORMATS)}")
        raw = datasets.load_dataset(fmt, data_files={split: str(path)}, split=split, cache_dir=cache)
    elif path.is_dir():
        raw = datasets.load_dataset(str(path), split=split, cache_dir=cache)
    elif str(name_or_path).startswith((".", "/", "~")) or path.suffix.lower() in _LOCAL_FORMATS:
        raise FileNotFoundError(f"load_hub_dataset: no file or folder {name_or_path}; check the path "
                                "(hub ids look like 'databricks/databricks-dolly-15k')")
    else:
        raw = datasets.load_dataset(str(name_or_path), split=split, cache_dir=cache)

    columns = set(raw.column_names)
    if kind is None:
        kind = next((k for k, cols in _KIND_COLUMNS.items()
                     if cols <= columns and _hold_strings(raw, _KIND_TEXT_COLUMNS.get(k, ()))), None)
        if kind is None:
            raise ValueError(f"load_hub_dataset: cannot tell the kind of {name_or_path} from its "
                             f"columns {sorted(columns)}; pass kind= one of {', '.join(HUB_KINDS)}")
    if kind not in HUB_KINDS:
        raise ValueError(f"load_hub_dataset: unknown kind {kind!r}; use one of {', '.join(HUB_KINDS)}")
    missing = _KIND_COLUMNS[kind] - columns
    if missing:
        raise ValueError(f"load_hub_dataset: {name_or_path} lacks the column(s) {sorted(missing)} "
                         f"that kind {kind!r} needs (it has {sorted(columns)}); is kind right?")
    convert = HUB_KINDS[kind][1]
    if kind == "oasst":
        records = flatten_oasst(raw, lang=lang, skipped=skipped)
    else:
        records = [r for r in (convert(row, skipped) for row in raw) if r is not None]
    if kind in _PREFERENCE_KINDS:
        return to_preference_dataset(records)
    return to_hf_dataset(records, columns=())


def _hold_strings(raw: Any, columns: Iterable[str]) -> bool:
    import datasets  # datasets takes seconds to import: only for files in the hub's formats

    return all(isinstance(raw.features[c], datasets.Value)
               and raw.features[c].dtype in ("string", "large_string") for c in columns)
