"""The toy assistant world: seeded facts, ten task families, a gold labeler, simulated annotators.

Every stage of the course is measured against a known truth, so this package is the ground.
It simplifies the real setting on purpose:

- **Facts** are a small fixed cast (people, inventions, towns, modular arithmetic) drawn from a
  seed. The pretraining corpus states all of them, so the tiny model can *know* them; what is
  held out is unseen phrasings of requests and unseen combinations of entities in them.
- **Task families** mirror the behaviours the ChatGPT announcement shows or lists as limitations
  (follow-ups, false premises, harmful requests, benign rephrases, acting in the world, restyling,
  summarising, clarifying questions, facts and arithmetic, verbosity). Each task comes with an
  ideal reply and typical flawed ones.
- **The gold labeler** (`gold_score`) reads a free-text reply and scores it in [0, 1] with a
  breakdown per rubric item (helpful, honest, harmless, concise) and the reasons. It stands in
  for what people actually want; no stage ever trains on it.
- **Simulated annotators** (`Annotators`) rank replies by gold plus Gumbel noise plus a taste for
  longer replies, as the post reports of its trainers, so a reward model learns their biases.

ARCHITECTURE.md at the repo root places this package among the course's layers. Its modules,
each importing only from those listed before it:

- `words`: the fixed vocabularies and phrasing lists (data only).
- `text`: small text helpers (regular expressions, word counts, keyword overlap, message dicts).
- `tasks`: the families and splits, `Person`, `Invention`, `Task`, `prompt_key`, `bare_request`.
- `generator`: `World`, the seeded generator of tasks, held-out sets, rephrasings and corpus.
- `gold`: the gold labeler, `gold_score` and its `Score`.
- `annotators`: `Annotators` and `annotator_agreement`.

Everything the rest of the course imports is re-exported here: `from rlhf_course.world import X`.
"""

from .annotators import Annotators, annotator_agreement
from .generator import World, phrasing_families
from .gold import Score, gold_score
from .tasks import (
    FAMILIES,
    PHRASING_FACTS,
    SPLITS,
    Invention,
    Person,
    Task,
    bare_request,
    prompt_key,
)
from .words import (
    ACT_WRAPPERS,
    BENIGN_WRAPPERS,
    CLARIFY_ASKS,
    CLOSERS,
    FILLER_CLOSERS,
    FILLER_OPENERS,
    HARMFUL_INTENTS,
    HARMFUL_WRAPPERS,
    OPENERS,
)

__all__ = [
    # The world, its tasks and their families and splits.
    "FAMILIES",
    "SPLITS",
    "Invention",
    "Person",
    "Task",
    "World",
    # Prompts and phrasings.
    "PHRASING_FACTS",
    "bare_request",
    "phrasing_families",
    "prompt_key",
    # The gold labeler and the simulated annotators.
    "Annotators",
    "Score",
    "annotator_agreement",
    "gold_score",
    # Word tables that stages reuse.
    "ACT_WRAPPERS",
    "BENIGN_WRAPPERS",
    "CLARIFY_ASKS",
    "CLOSERS",
    "FILLER_CLOSERS",
    "FILLER_OPENERS",
    "HARMFUL_INTENTS",
    "HARMFUL_WRAPPERS",
    "OPENERS",
]
