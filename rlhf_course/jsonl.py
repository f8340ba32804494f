"""JSON Lines files that never lose a record: appends flushed and fsynced before they return
(a dead kernel must not lose a submitted ranking or demonstration), whole-file writes atomic
(a temporary file, then os.replace), and reads that name the file and line of a bad record.

Every record file of a run goes through here: demonstrations, rankings, feedback, flags."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhf_course.runs import write_text_atomic


class DataFormatError(ValueError):
    """A data file cannot be read: the message names the file, the line and what to do."""


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append `record` as one line to the JSON Lines file `path` and fsync before returning.

    The record is serialised first, so one that cannot be written (a set, NaN) raises and leaves
    the file untouched. If the file ends in a line cut off by a crash, the new record starts on a
    fresh line, so it is never glued onto the broken one (`read_jsonl` then reports that line).
    """
    if not isinstance(record, dict):
        raise TypeError(f"append_jsonl({str(path)!r}): a record must be a dict, got {type(record).__name__}")
    line = _dumps(record, f"record for {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+b": writes always go to the end (O_APPEND), and we can still peek at the last byte.
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Write `records` to `path` atomically: a crash leaves the old file or the new one, never half.

    Every record is serialised before anything touches the disk. Returns the path.
    """
    path = Path(path)
    lines = [_dumps(r, f"record {i} for {path}") for i, r in enumerate(records)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(lines))
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON Lines file into a list of dicts (blank lines are skipped).

    Raises `DataFormatError` naming the file and 1-based line number for a line that is not a
    JSON object. A last line with no newline that does not parse is reported as cut off by an
    interrupted write (the records before it are intact) rather than silently dropped.
    """
    return [record for _, record in read_numbered(Path(path))]


def load_checked(path: str | os.PathLike, validate: Callable[[Any], dict[str, Any]],
                 invalid: type[Exception], raise_as: type[Exception] = DataFormatError,
                 advice: str = " Fix or delete that line; the other lines are unaffected.") -> list[dict[str, Any]]:
    """Every record of the JSON Lines file `path`, passed through `validate`; a record it rejects
    (raising `invalid`) raises `raise_as` naming the file and the line, followed by `advice`."""
    out = []
    for line, record in read_numbered(Path(path)):
        try:
            out.append(validate(record))
        except invalid as err:
            raise raise_as(f"{path}, line {line}: {err}.{advice}" if advice else f"{path}, line {line}: {err}") from err
    return out


def read_numbered(path: Path) -> list[tuple[int, dict[str, Any]]]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    out = []
    for i, raw in enumerate(lines, start=1):
        cut_off = i == len(lines)  # the last piece has no newline after it
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataFormatError(
                f"{path}, line {i}: not UTF-8 text ({err.reason} at byte {err.start}). Save the "
                "file as UTF-8, or delete that line; the other lines are unaffected."
            ) from err
        if i == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors add
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            if cut_off:
                raise DataFormatError(
                    f"{path}, line {i}: the last line is cut off (no newline at the end and not "
                    f"valid JSON: {err.msg}). A write was interrupted, e.g. the kernel died while "
                    f"saving. Every earlier line is intact: delete line {i} (everything after the "
                    "last newline) and submit that record again."
                ) from err
            raise DataFormatError(
                f"{path}, line {i}: not valid JSON ({err.msg} at column {err.colno}). Fix or "
                f"delete line {i}; if a process was killed while writing, it is a cut-off record "
                "and the other lines are intact."
            ) from err
        if not isinstance(record, dict):
            raise DataFormatError(
                f"{path}, line {i}: holds a JSON {type(record).__name__}, but each line must be "
                'one object such as {"messages": [...]}. Fix or delete that line.'
            )
        out.append((i, record))
    return out


def _dumps(record: Any, what: str) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{what} cannot be saved as JSON ({err}); use plain str/int/float/bool/list/dict "
            "values, e.g. float(x) for a numpy number"
        ) from err


def check_fields(record: Any, required: Sequence[str], error: type[Exception], name: str, kind: str,
                 where: str = "") -> str:
    """The start of every record check: raise `error` unless `record` is a JSON object (`kind`,
    e.g. "a comparison") holding each of the `required` fields; return the "where: " prefix the
    rest of the check starts its messages with."""
    at = f"{where}: " if where else ""
    if not isinstance(record, Mapping):
        raise error(f"{at}{kind} must be a JSON object, got {type(record).__name__}")
    missing = [k for k in required if k not in record]
    if missing:
        raise error(f"{at}{name} lacks field(s) {missing}; it needs {list(required)}")
    return at
