"""Demonstration data for supervised fine-tuning: conversations checked before they are kept,
simulated trainers, an instruction set, the mix of the two, and Datasets for TRL.

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
- **Hub datasets** (Dolly, no_robots, OpenAssistant, HH-RLHF) are converted to the same formats
  by `rlhf_course.hub`, so a GPU user trains on real people's demonstrations with the same code.

Files are JSON Lines, written through `rlhf_course.jsonl` (appends fsynced, whole files atomic).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_course.jsonl import DataFormatError, append_jsonl, read_numbered
from rlhf_course.world import FAMILIES, FILLER_CLOSERS, FILLER_OPENERS, Task, World

ROLES = ("system", "user", "assistant")


class ConversationError(ValueError):
    """A conversation breaks the messages format. `reason` is a short, countable category
    ('roles do not alternate'); the message adds the details and where it happened."""

    def __init__(self, reason: str, detail: str = "", where: str = ""):
        self.reason = reason
        self.where = where
        text = f"{reason}: {detail}" if detail else reason
        super().__init__(f"{where}: {text}" if where else text)


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
    for line, record in read_numbered(path):
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
