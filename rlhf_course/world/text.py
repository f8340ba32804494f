"""Small text helpers shared by the task generator, the gold labeler and the annotators:
the regular expressions for years, numbers and words, keyword overlap, word counts, sentence
splitting, filler wrapping, articles and capitals, and message dicts."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from .words import FILLER_CLOSERS, FILLER_OPENERS

YEAR_RE = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
INT_RE = re.compile(r"\b\d+\b")
WORD_RE = re.compile(r"\S+")


_STOP = {"the", "a", "an", "of", "to", "in", "from", "with", "by", "at", "on", "and", "how",
         "much", "many", "up", "is", "it"}


def _content_words(phrase: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", phrase.lower()) if w not in _STOP]


def _overlap(low: str, keys: Sequence[str]) -> float:
    if not keys:
        return 0.0
    return sum(bool(re.search(rf"\b{re.escape(k.lower())}", low)) for k in keys) / len(keys)


def _words(text: str) -> int:
    return len(WORD_RE.findall(text))


def _sentences(doc: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", doc) if s]


def _with_filler(reply: str, rng: random.Random) -> str:
    return f"{rng.choice(FILLER_OPENERS)} {reply} {rng.choice(FILLER_CLOSERS)}"


def _a(noun: str) -> str:
    """'an astronomer', 'a poet'."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def _assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}
