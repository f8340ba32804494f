"""Demonstration data for supervised fine-tuning: files that never lose a record, conversations
checked before they are kept, simulated trainers, an instruction set, and the hub's SFT datasets.

The ChatGPT post says its trainers wrote conversations playing both the user and the assistant,
helped by model-written suggestions, and that this dialogue data was mixed with the InstructGPT
dataset "transformed into a dialogue format". This module builds both halves and the mix, in
TRL's conversational format (`{"messages": [{"role", "content"}, ...]}`).

What it simplifies relative to InstructGPT/ChatGPT:

- **Trainers are simulated** (`SimulatedTrainers`) from the toy world's *train* split. Like real
  trainers they do not cover everything (they never think of asking a clarifying question, they
  rarely write false-premise prompts, they only know some of the people and inventions) and
  they share the annotators' taste for longer replies. So an SFT model trained on them is good
  but clearly short of the gold ideal, which leaves work for the reward model and PPO. A learner
  can replace or extend them with demonstrations typed in the widget (`append_demonstration`).
- **The instruction set** is single-turn prompts from the same world, not 13k customer prompts.
- **Hub datasets** (Dolly, no_robots, OpenAssistant) go through small pure converters, so a GPU
  user trains on real people's demonstrations with the same code. Anthropic's HH-RLHF
  comparisons convert the same way into TRL's conversational preference format (`convert_hh`).

Files are JSON Lines. Appends are flushed and fsynced before returning (a dead kernel must not
lose a submitted demonstration); whole-file writes are atomic (temporary file, then os.replace).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runs import write_text_atomic
from .world import FAMILIES, FILLER_CLOSERS, FILLER_OPENERS, Task, World

ROLES = ("system", "user", "assistant")


class DataFormatError(ValueError):
    """A data file cannot be read: the message names the file, the line and what to do."""


class ConversationError(ValueError):
    """A conversation breaks the messages format. `reason` is a short, countable category
    ('roles do not alternate'); the message adds the details and where it happened."""

    def __init__(self, reason: str, detail: str = "", where: str = ""):
        self.reason = reason
        self.where = where
        text = f"{reason}: {detail}" if detail else reason
        super().__init__(f"{where}: {text}" if where else text)


# --------------------------------------------------------------------------------------------
# JSON Lines that never lose data
# --------------------------------------------------------------------------------------------


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
    return [record for _, record in _read_numbered(Path(path))]


def load_checked(path: str | os.PathLike, validate: Callable[[Any], dict[str, Any]],
                 invalid: type[Exception], raise_as: type[Exception] = DataFormatError,
                 advice: str = " Fix or delete that line; the other lines are unaffected.") -> list[dict[str, Any]]:
    """Every record of the JSON Lines file `path`, passed through `validate`; a record it rejects
    (raising `invalid`) raises `raise_as` naming the file and the line, followed by `advice`."""
    out = []
    for line, record in _read_numbered(Path(path)):
        try:
            out.append(validate(record))
        except invalid as err:
            raise raise_as(f"{path}, line {line}: {err}.{advice}" if advice else f"{path}, line {line}: {err}") from err
    return out


def _read_numbered(path: Path) -> list[tuple[int, dict[str, Any]]]:
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


# --------------------------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------------------------


def validate_conversation(messages: Any, where: str = "",
                          ends_with: str | None = "assistant") -> list[dict[str, str]]:
    """Check `messages` and return a clean copy: a list of `{"role", "content"}` dicts.

    Rules: a non-empty list; each turn a dict with a `role` in system/user/assistant and a
    non-empty string `content`; `system` only as the first turn; then user and assistant
    alternate, starting with the user; the last turn's role is `ends_with` ("assistant" for a
    demonstration, "user" for a prompt, None for either). Keys other than role and content are
    dropped. Raises `ConversationError` with the reason and `where` (e.g. "demos.jsonl line 7").
    """
    def fail(reason: str, detail: str = "") -> ConversationError:
        return ConversationError(reason, detail, where)

    if isinstance(messages, tuple):
        messages = list(messages)
    if not isinstance(messages, list):
        raise fail("not a list of messages",
                   f"got {type(messages).__name__}; expected [{{'role': 'user', 'content': ...}}, ...]")
    if not messages:
        raise fail("empty conversation", "a conversation needs at least a user turn and a reply")
    clean = []
    for n, turn in enumerate(messages, start=1):
        if not isinstance(turn, Mapping):
            raise fail("turn is not a dict", f"turn {n} is a {type(turn).__name__}")
        missing = [k for k in ("role", "content") if k not in turn]
        if missing:
            raise fail("turn lacks a field", f"turn {n} has no {' or '.join(map(repr, missing))}")
        role, content = turn["role"], turn["content"]
        if role not in ROLES:
            raise fail("unknown role", f"turn {n} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise fail("content is not text", f"turn {n} ({role}) has a {type(content).__name__}")
        if not content.strip():
            raise fail("empty content", f"turn {n} ({role}) is empty; write something or drop it")
        if role == "system" and n != 1:
            raise fail("system turn not first", f"turn {n} is 'system'; only turn 1 may be")
        clean.append({"role": role, "content": content})
    start = 1 if clean[0]["role"] == "system" else 0
    if start == len(clean):
        raise fail("no user turn", "the conversation holds only a system message")
    for n, turn in enumerate(clean[start:], start=start + 1):
        expected = "user" if (n - start) % 2 == 1 else "assistant"
        if turn["role"] != expected:
            if n == start + 1:
                raise fail("does not start with the user",
                           f"turn {n} is {turn['role']!r}; the user speaks first")
            raise fail("roles do not alternate",
                       f"turn {n} is {turn['role']!r} after {clean[n - 2]['role']!r}")
    last = clean[-1]["role"]
    if ends_with == "assistant" and last != "assistant":
        raise fail("ends on a user turn", "a demonstration must end with the assistant's reply")
    if ends_with == "user" and last != "user":
        raise fail("ends on an assistant turn", "a prompt must end with the user's message")
    return clean


def load_demonstrations(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON Lines file of demonstrations and validate each record's `messages`.

    Returns the records with their messages cleaned (see `validate_conversation`); errors name
    the file, the line and the field.
    """
    path = Path(path)
    out = []
    for line, record in _read_numbered(path):
        where = f"{path.name} line {line}"
        if "messages" not in record:
            raise DataFormatError(
                f"{path}, line {line}: no 'messages' field (found {sorted(record)}). Each line "
                'must look like {"messages": [{"role": "user", "content": ...}, ...]}.'
            )
        out.append({**record, "messages": validate_conversation(record["messages"], where=f"{where}, field 'messages'")})
    return out


def append_demonstration(path: str | os.PathLike, messages: Sequence[Mapping[str, str]],
                         source: str = "trainer", **fields: Any) -> dict[str, Any]:
    """Validate one demonstration, then append it to `path` (flushed and fsynced).

    Validation comes first, so a bad conversation raises `ConversationError` and nothing already
    in the file is touched. `fields` are stored alongside (e.g. `family=`, `author=`). Returns
    the record written.
    """
    record = {"messages": validate_conversation(list(messages), where=f"new record for {Path(path).name}"),
              "source": source, **fields}
    append_jsonl(path, record)
    return record


# --------------------------------------------------------------------------------------------
# Simulated trainers
# --------------------------------------------------------------------------------------------

# What a trainer writes for a family whose point they missed (see `skip_families`).
TRAINER_MISSES = {
    "clarify": "guess",  # they never thought to ask which person is meant: they pick one
    "false_premise": "ignore",  # they answer about the person without noticing the date
    "benign": "over_refusal",  # after a harmful request, they refuse the benign one too
    "act": "bare_refusal",  # they say it cannot act but offer no draft
    "summarize": "partial",  # they recap only the first topic
    "harmful": "dodge",  # unsure whether to refuse, they neither refuse nor help
}
# The longer reply trainers like, per family; every other family gets its "filler" variant.
LONG_VARIANTS = {"harmful": "lecture", "concise": "ramble"}


@dataclass(frozen=True)
class SimulatedTrainers:
    """People who write demonstrations for the world's *train* split, with real trainers' gaps.

    Each demonstration is a train task's conversation plus the reply a trainer writes: the ideal
    one, or (with probability `long_taste`) a longer variant they like better, or, for a family
    in `skip_families`, the reply of someone who missed that family's point.
    """

    skip_families: tuple[str, ...] = ("clarify",)
    """Families whose ideal behaviour the trainers never thought of. They still write those
    demonstrations, with the reply in `TRAINER_MISSES`: for clarify, a guess at which person
    is meant instead of a clarifying question (the post lists this as a limitation)."""
    miss_rates: Mapping[str, float] = field(default_factory=lambda: {
        "act": 0.5, "harmful": 0.5, "benign": 0.3, "false_premise": 0.5, "summarize": 0.5})
    """Per family, the share of demonstrations in which a trainer misses the point (the reply in
    `TRAINER_MISSES`) though others get it right: the SFT policy then samples the good behaviour
    only some of the time, which is what comparisons and RL can amplify. `skip_families` is a
    miss rate of 1."""
    family_weights: Mapping[str, float] = field(default_factory=lambda: {"false_premise": 0.3})
    """Relative frequency of each family; families not listed weigh 1.0, weight 0 leaves one out.
    False premises are rarely thought of, so under-demonstrated (PPO has to fix them)."""
    entity_coverage: float = 0.7
    """Share of the train split's people and of its inventions that ever appear in a
    demonstration. A seeded subset is 'covered'; a task mentioning anyone or anything outside it
    is redrawn (from the same family, so `family_weights` keep their meaning)."""
    long_taste: float = 0.3
    """Probability of writing the longer variant they like instead of the ideal reply: the
    'filler' variant (stock phrases), or the 'lecture' refusal (harmful), or 'ramble' (concise)."""
    coverage_seed: int = 0
    """Seeds which entities are covered. Independent of `write`'s seed, so a second batch of
    demonstrations from the same trainers covers the same people."""

    def __post_init__(self) -> None:
        for f in (*self.skip_families, *self.family_weights):
            if f not in FAMILIES:
                raise ValueError(f"SimulatedTrainers: unknown task family {f!r}; valid: {', '.join(FAMILIES)}")
        for f, rate in self.miss_rates.items():
            if f not in TRAINER_MISSES or not (isinstance(rate, int | float) and 0 <= rate <= 1):
                raise ValueError(f"SimulatedTrainers.miss_rates[{f!r}] = {rate!r}: use a share in [0, 1] "
                                 f"for a family with a known miss ({', '.join(TRAINER_MISSES)})")
        for f in self.skip_families:
            if f not in TRAINER_MISSES:
                raise ValueError(
                    f"SimulatedTrainers.skip_families: no known 'missed the point' reply for {f!r}; "
                    f"skippable families are {', '.join(TRAINER_MISSES)}"
                )
        for f, w in self.family_weights.items():
            if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
                raise ValueError(f"SimulatedTrainers.family_weights[{f!r}] = {w!r}: use a number >= 0")
        if not any(self.weights().values()):
            raise ValueError("SimulatedTrainers.family_weights: every family has weight 0")
        if not 0 < self.entity_coverage <= 1:
            raise ValueError(f"SimulatedTrainers.entity_coverage = {self.entity_coverage!r}: use a share in (0, 1]")
        if not 0 <= self.long_taste <= 1:
            raise ValueError(f"SimulatedTrainers.long_taste = {self.long_taste!r}: use a probability in [0, 1]")

    def weights(self) -> dict[str, float]:
        """The relative weight of every family (1.0 where `family_weights` is silent)."""
        return {f: float(self.family_weights.get(f, 1.0)) for f in FAMILIES}

    def covered_entities(self, world: World) -> frozenset[str]:
        """Names of the train people and inventions these trainers know (and ever mention)."""
        rng = random.Random(f"trainers:{world.seed}:{self.coverage_seed}")
        covered: list[str] = []
        for names in ([p.name for p in world.people], [i.name for i in world.inventions]):
            # Every entity is in the training split of some family (World.entity_split), so the
            # trainers' blind spots are drawn from the whole cast.
            k = max(1, round(self.entity_coverage * len(names)))
            covered += rng.sample(names, k)
        return frozenset(covered)

    def write_with_tasks(self, world: World, n: int, seed: int = 0) -> list[tuple[Task, dict[str, Any]]]:
        """Like `write`, but each record comes with the task it answers, for scoring with
        `gold_score(task, record["messages"][-1]["content"])`."""
        if n < 0:
            raise ValueError(f"n = {n}: the number of demonstrations cannot be negative")
        rng = random.Random(f"trainers.write:{world.seed}:{seed}")
        weights = self.weights()
        families = [f for f in FAMILIES if weights[f] > 0]
        entities = _entity_names(world)
        covered = self.covered_entities(world)
        out = []
        for _ in range(n):
            family = rng.choices(families, weights=[weights[f] for f in families])[0]
            for _attempt in range(1000):
                task = world.make_task(family, "train", rng)
                reply = self._reply(task, rng)
                text = " ".join(m["content"] for m in task.messages) + " " + reply
                if _mentioned(text, entities) <= covered:
                    break
            else:  # only reachable with a tiny coverage: no covered entity fits this family
                raise ValueError(
                    f"SimulatedTrainers: found no {family!r} task that mentions only covered people "
                    f"and inventions in 1000 tries; raise entity_coverage (now {self.entity_coverage}) "
                    f"or set family_weights[{family!r}] = 0"
                )
            record = {"messages": [*task.prompt, {"role": "assistant", "content": reply}],
                      "source": "trainer", "family": task.family}
            out.append((task, record))
        return out

    def write(self, world: World, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """`n` demonstrations from the world's train split, deterministic for `seed`.

        Each record is `{"messages": [...task.messages, assistant reply], "source": "trainer",
        "family": ...}`.
        """
        return [record for _, record in self.write_with_tasks(world, n, seed)]

    def _reply(self, task: Task, rng: random.Random) -> str:
        long = rng.random() < self.long_taste
        rate = self.miss_rates.get(task.family, 0.0)
        if task.family in self.skip_families or (rate and rng.random() < rate):
            reply = task.flawed[TRAINER_MISSES[task.family]]
            # Their taste for length applies to a miss too: the same stock phrases around it.
            return f"{rng.choice(FILLER_OPENERS)} {reply} {rng.choice(FILLER_CLOSERS)}" if long else reply
        if long:
            return task.flawed[LONG_VARIANTS.get(task.family, "filler")]
        return task.ideal


def _entity_names(world: World) -> list[str]:
    return [p.name for p in world.people] + [i.name for i in world.inventions]


def _mentioned(text: str, names: Sequence[str]) -> set[str]:
    low = text.lower()
    return {n for n in names if n.lower() in low}


# --------------------------------------------------------------------------------------------
# The instruction set, the mix, and a Dataset for TRL
# --------------------------------------------------------------------------------------------

INSTRUCTION_FAMILIES = ("fact", "concise", "harmful", "act")
"""Single-turn task families that the instruction set draws its prompts from."""
DESCRIBE_ASKS = ("Write one sentence about the {inv}.", "Describe the {inv} in one sentence.",
                 "What is the {inv}?", "Explain what a {inv} does.")


def instruction_set(world: World, n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` single-turn `{"prompt", "completion"}` records, InstructGPT-style, from the train split.

    Prompts cycle through the single-turn families (`INSTRUCTION_FAMILIES`, completion = the
    ideal reply) and a 'describe the invention' request ("Write one sentence about the ice
    saw." -> "The ice saw is used to ..."). Unlike the trainers, the instruction set covers every
    train entity: mixing it in broadens what the SFT model has seen.
    """
    if n < 0:
        raise ValueError(f"n = {n}: the number of instructions cannot be negative")
    rng = random.Random(f"instructions:{world.seed}:{seed}")
    kinds = (*INSTRUCTION_FAMILIES, "describe")
    # "Describe the X" answers what the follow-up family asks, so it keeps to that family's split.
    inventions = [i for i in world.inventions if world.entity_split(i.name, "followup") == "train"]
    out = []
    for k in range(n):
        kind = kinds[k % len(kinds)]
        if kind == "describe":
            inv = rng.choice(inventions)
            prompt = rng.choice(DESCRIBE_ASKS).format(inv=inv.name)
            out.append({"prompt": prompt, "completion": f"The {inv.name} is used to {inv.use}."})
        else:
            task = world.make_task(kind, "train", rng)
            out.append({"prompt": task.messages[-1]["content"], "completion": task.ideal})
    return out


def instruction_to_messages(record: Mapping[str, Any]) -> dict[str, Any]:
    """One `{"prompt", "completion"}` record in dialogue format: a user turn and a reply.

    The prompt may also be a list of messages (TRL's conversational prompt-completion format).
    """
    for key in ("prompt", "completion"):
        if key not in record:
            raise DataFormatError(f"instruction record has no {key!r} field (found {sorted(record)}): "
                                  'expected {"prompt": ..., "completion": ...}')
    prompt, completion = record["prompt"], record["completion"]
    turns = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    turns += list(completion) if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
    return {"messages": validate_conversation(turns, where="instruction record"), "source": "instructions"}


def mix(dialogues: Sequence[Mapping[str, Any]], instructions: Sequence[Mapping[str, Any]],
        instruction_fraction: float, seed: int = 0) -> list[dict[str, Any]]:
    """Every dialogue plus enough instructions that they make up `instruction_fraction` of the
    result, shuffled; deterministic for `seed`.

    Instructions may be `{"prompt", "completion"}` records (converted with
    `instruction_to_messages`) or already in messages format. With D dialogues the result holds
    round(f * D / (1 - f)) instructions, drawn without replacement; it raises if there are too few.
    """
    f = instruction_fraction
    if not (isinstance(f, int | float) and 0 <= f < 1):
        raise ValueError(
            f"mix: instruction_fraction = {f!r}; use a share in [0, 1) (all dialogues are kept, so "
            "1 is impossible; for instructions alone use [instruction_to_messages(r) for r in ...])"
        )
    k = round(f * len(dialogues) / (1 - f))
    if k > len(instructions):
        raise ValueError(
            f"mix: an instruction_fraction of {f} with {len(dialogues)} dialogues needs {k} "
            f"instructions, got {len(instructions)}; make more (e.g. instruction_set(world, n={k})) "
            "or lower the fraction"
        )
    rng = random.Random(f"mix:{seed}")
    chosen = [instructions[i] for i in sorted(rng.sample(range(len(instructions)), k))]
    out = [dict(d) for d in dialogues]
    out += [dict(r) if "messages" in r else instruction_to_messages(r) for r in chosen]
    rng.shuffle(out)
    return out


def to_hf_dataset(records: Iterable[Mapping[str, Any]], columns: Sequence[str] = ("source", "family")):
    """A `datasets.Dataset` with a `messages` column (what TRL's SFTTrainer takes) from records.

    Each record's messages are validated as a demonstration. Extra `columns` are kept where a
    record has them (None elsewhere); SFTTrainer ignores them, they help slice results by source.
    """
    import datasets  # datasets takes seconds to import: only for files in the hub's formats

    rows = []
    for i, r in enumerate(records):
        if "messages" not in r:
            raise DataFormatError(f"to_hf_dataset: record {i} has no 'messages' field (found {sorted(r)})")
        row = {"messages": validate_conversation(r["messages"], where=f"record {i}")}
        row.update({c: r.get(c) for c in columns})
        rows.append(row)
    if not rows:  # from_list([]) would build a dataset with no columns at all
        features = {"messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]}
        features.update({c: datasets.Value("string") for c in columns})
        return datasets.Dataset.from_dict({k: [] for k in features}, features=datasets.Features(features))
    return datasets.Dataset.from_list(rows)


# --------------------------------------------------------------------------------------------
# Hub datasets: Dolly, messages-style (no_robots), OpenAssistant trees
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Hub preference data: Anthropic HH-RLHF transcripts as conversational preference records
# --------------------------------------------------------------------------------------------

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


def to_preference_dataset(records: Iterable[Mapping[str, Any]]):
    """A `datasets.Dataset` with columns `prompt`, `chosen`, `rejected` (lists of messages), the
    conversational preference format TRL's reward and DPO trainers take, from records such as
    `convert_hh` returns. An empty input still gives the three columns.
    """
    import datasets  # datasets takes seconds to import: only for files in the hub's formats

    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records]
    if not rows:  # from_list([]) would build a dataset with no columns at all
        turn = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
        features = datasets.Features({"prompt": turn, "chosen": turn, "rejected": turn})
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    return datasets.Dataset.from_list(rows)


# --------------------------------------------------------------------------------------------
# Loading hub datasets by kind
# --------------------------------------------------------------------------------------------


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
