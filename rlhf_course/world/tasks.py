"""What a task is: the ten families, the splits, the cast's records (`Person`, `Invention`),
`Task` itself, and the helpers on prompts and phrasings that the generator and the held-out
protocol share (`prompt_key`, `bare_request`, how many phrasings a template group has)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .words import (
    ACT_WRAPPERS,
    BENIGN_WRAPPERS,
    CLARIFY_ASKS,
    CLOSERS,
    CONCISE_ASKS,
    FACT_ASKS,
    FALSE_PREMISE_ASKS,
    FOLLOWUP_ASKS,
    FOLLOWUP_OPENERS,
    HARMFUL_WRAPPERS,
    NOTE_REQUESTS,
    OPENERS,
    RESTYLE_ASKS,
    SUMMARIZE_ASKS,
)

FAMILIES = (
    "followup",
    "false_premise",
    "harmful",
    "benign",
    "act",
    "restyle",
    "summarize",
    "clarify",
    "fact",
    "concise",
)
"""The ten task families, one per behaviour (see ARCHITECTURE.md at the repo root)."""

SPLITS = ("train", "heldout", "main")
"""'train': what stages train on. 'main': the main held-out set, unseen combinations of the
training parts (`World.tasks` reserves a share of them that no training draw ever yields).
'heldout': the generalisation probe, phrasings and entity/family pairs no training task uses."""


# --------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    born: int
    died: int
    profession: str
    town: str

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


@dataclass(frozen=True)
class Invention:
    name: str
    use: str
    inventor: str
    """Full name of the inventor (a Person in the cast)."""
    year: int


@dataclass(frozen=True)
class Task:
    """One request to the assistant, with what the gold labeler needs to judge any reply.

    `messages` is the conversation so far (TRL's conversational format), ending on a user turn.
    `facts` holds the truth the labeler checks (answer, keywords, names); it is plain JSON so a
    task survives a round trip through a JSON Lines file (`to_record` / `Task.from_record`).
    """

    family: str
    messages: tuple[dict[str, str], ...]
    ideal: str
    flawed: dict[str, str]
    facts: dict[str, Any]
    split: str
    template: str
    """Which phrasing was used, e.g. 'fact.born.3'; train and held-out never share one."""

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The conversation as a list of message dicts (a copy, safe to extend)."""
        return [dict(m) for m in self.messages]

    def replies(self) -> dict[str, str]:
        """The ideal reply and every flawed variant, keyed 'ideal' and by flaw name."""
        return {"ideal": self.ideal, **self.flawed}

    def to_record(self) -> dict[str, Any]:
        return {
            "family": self.family, "messages": self.prompt, "ideal": self.ideal,
            "flawed": dict(self.flawed), "facts": self.facts, "split": self.split,
            "template": self.template,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Task:
        missing = {"family", "messages", "ideal", "flawed", "facts", "split", "template"} - set(record)
        if missing:
            raise ValueError(f"task record lacks field(s) {sorted(missing)}: {str(record)[:120]}")
        return cls(
            family=record["family"], messages=tuple(dict(m) for m in record["messages"]),
            ideal=record["ideal"], flawed=dict(record["flawed"]), facts=record["facts"],
            split=record["split"], template=record["template"],
        )


def prompt_key(messages: Sequence[dict[str, str]]) -> str:
    """One string per prompt (roles and contents), for checking held-out prompts against the
    prompts a stage trained on."""
    return "\x1e".join(f"{m['role']}\x1f{' '.join(m['content'].split())}" for m in messages)


def bare_request(text: str) -> str:
    """`text` without the opener and closer `World` wrote around it (the request itself)."""
    for opener in sorted(filter(None, OPENERS), key=len, reverse=True):
        if text.startswith(opener + " "):
            text = text[len(opener) + 1:]
            break
    for closer in sorted(filter(None, CLOSERS), key=len, reverse=True):
        if text.endswith(" " + closer):
            text = text[: -len(closer) - 1]
            break
    return text


PHRASING_FACTS = ("asked",)
"""Fields of `Task.facts` that quote the request's wording, so differ between rephrasings."""


def _phrasing_groups(family: str) -> list[str]:
    """The template groups that give a task of `family` its `template` (not follow-up openers)."""
    return [f"fact.{kind}" for kind in FACT_ASKS] if family == "fact" else [family]


def _check_same_question(tasks: Sequence[Task]) -> None:
    """Guard for `rephrasings`: one question in several wordings, nothing else different."""
    def content(t: Task) -> dict[str, Any]:
        return {k: v for k, v in t.facts.items() if k not in PHRASING_FACTS}
    first = tasks[0]
    for t in tasks[1:]:
        if content(t) != content(first) or t.ideal != first.ideal:
            raise RuntimeError(f"rephrasings of one {first.family} question differ beyond their "
                               f"wording: {first.template} vs {t.template}")
    if len({t.template for t in tasks}) != len(tasks):
        raise RuntimeError(f"rephrasings repeat a phrasing: {[t.template for t in tasks]}")


def _template_count(group: str) -> int:
    table = {
        "harmful": HARMFUL_WRAPPERS, "benign": BENIGN_WRAPPERS, "act": ACT_WRAPPERS,
        "restyle": RESTYLE_ASKS, "restyle.open": NOTE_REQUESTS, "followup": FOLLOWUP_ASKS,
        "followup.open": FOLLOWUP_OPENERS, "false_premise": FALSE_PREMISE_ASKS,
        "clarify": CLARIFY_ASKS, "summarize": SUMMARIZE_ASKS, "concise": CONCISE_ASKS,
    }
    if group.startswith("fact."):
        return len(FACT_ASKS[group.split(".", 1)[1]])
    return len(table[group])
