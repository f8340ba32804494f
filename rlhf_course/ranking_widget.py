"""The ranking widget of notebook 04, thin: every action is a tested pure function, the widget
only renders.

It collects the ChatGPT post's "comparison data, which consisted of two or more model responses
ranked by quality". `RankingSession` and the functions after it are the logic; `RankingWidget`
only draws. Each ranking is appended and fsynced through `rankings.append_comparison` before
the next item appears. What it simplifies: one ranker, strict orders only (no ties), no
per-reply ratings or comments.
"""

from __future__ import annotations

import dataclasses
import html
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from rlhf_course.rankings import (
    ComparisonError,
    RankItem,
    agreement,
    append_comparison,
    gold_ranking,
    load_comparisons,
    undo_last_comparison,
)
from rlhf_course.widget_tools import ActionStatus
from rlhf_course.world import gold_score

# --------------------------------------------------------------------------- the pure state


def reply_letter(i: int) -> str:
    """How replies are named on screen and in messages: 'A' for reply 0, 'B' for reply 1, …"""
    return string.ascii_uppercase[i]


def ordinal(place: int) -> str:
    """'1st', '2nd', '3rd', '4th', … for a 1-based place (K is at most 9, so no '11th' cases)."""
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(place, "th")
    return f"{place}{suffix}"


def _letters(indices) -> str:
    return ", ".join(reply_letter(i) for i in indices)


@dataclass(frozen=True)
class RankDraft:
    """The ranking being clicked for one item: which item, how many replies, the order so far."""

    item: int
    """Index of the item in the session's `items`."""
    k: int
    """How many replies the item has."""
    order: tuple[int, ...] = ()
    """Reply indices in the order they were clicked, best first."""

    @property
    def unplaced(self) -> list[int]:
        """Reply indices not clicked yet, in reply order."""
        return [i for i in range(self.k) if i not in self.order]

    @property
    def complete(self) -> bool:
        """True once every reply has a place."""
        return len(self.order) == self.k


@dataclass(frozen=True)
class GoldReveal:
    """The learner's ranking next to the gold labeler's, for the item just submitted."""

    replies: tuple[str, ...]
    """The replies that were ranked."""
    learner: tuple[int, ...]
    """The submitted order, best first."""
    gold: tuple[int, ...]
    """`rankings.gold_ranking`: the gold labeler's order, best first."""
    scores: tuple[float, ...]
    """`world.gold_score(task, reply).total` for each reply, indexed like the replies."""

    @property
    def agreement(self) -> tuple[int, int]:
        """(agreed, judged): of the learner's K-choose-2 pairs that the gold labeler separates
        (different scores), how many it orders the same way."""
        return agreement(self.learner, self.scores)


@dataclass(frozen=True)
class RankingSession:
    """Everything the ranking widget knows: the items, which are saved, the one being ranked.

    Immutable, like `DemoDraft`: each function returns a new session. The file is the record of
    truth; `done` mirrors which items of this session it holds.
    """

    items: tuple[RankItem, ...]
    """The items to rank, in the order they are shown."""
    target: int
    """How many rankings the learner aims for (the progress label's denominator)."""
    draft: RankDraft | None
    """The item on screen and the order clicked so far; None once every item is ranked."""
    done: tuple[int, ...] = ()
    """Indices of items whose ranking is saved, in the order they were saved."""
    reveal_gold: bool = False
    """Whether a submission is followed by the gold labeler's ranking of the same replies."""
    reveal: GoldReveal | None = None
    """The gold comparison for the last submission (only when `reveal_gold` and it has a task)."""

    @property
    def ranked(self) -> int:
        """How many items of this session are saved in the file."""
        return len(self.done)

    @property
    def item(self) -> RankItem | None:
        """The item on screen, or None when none is left."""
        return None if self.draft is None else self.items[self.draft.item]


def _same_item(item: RankItem, record: Mapping[str, Any]) -> bool:
    # The id alone is not enough: ids restart per seed, and a file can mix several runs.
    context = [{"role": m["role"], "content": m["content"]} for m in item.context]
    return (record.get("id") == item.item_id and record["context"] == context
            and record["replies"] == list(item.replies))


def _next_item(session: RankingSession, done: tuple[int, ...], after: int) -> RankDraft | None:
    # Move forward first, then wrap around to anything skipped or undone earlier.
    n = len(session.items)
    for j in [*range(after + 1, n), *range(after + 1)]:
        if j not in done:
            return RankDraft(item=j, k=len(session.items[j].replies))
    return None


def start_ranking(items: Iterable[RankItem], path: str | os.PathLike, target: int | None = None,
                  reveal_gold: bool = False) -> RankingSession:
    """A session over `items` (`rankings.RankItem`s) saving to the JSON Lines file `path`.

    Every item is checked now (2 to 9 distinct non-empty replies, a context ending on a user
    turn), so a bad item fails here, naming it, rather than after the learner ranked it. Items
    already ranked in `path` count as done, so re-running the cell after a dead kernel resumes
    where it stopped. `target` defaults to the number of items.
    """
    items = tuple(items)
    if not items:
        raise ValueError("No items to rank: build some with the comparisons stage first.")
    for i, item in enumerate(items):
        try:
            item.record(list(range(len(item.replies))), ranker="check")
        except ComparisonError as err:
            raise ComparisonError(f"item {i} (id {item.item_id!r}): {err}") from err
    target = len(items) if target is None else target
    if not isinstance(target, int) or target < 1:
        raise ValueError(f"target must be a positive number of rankings, got {target!r}")
    saved = load_comparisons(path) if Path(path).exists() else []
    done = tuple(i for i, item in enumerate(items) if any(_same_item(item, r) for r in saved))
    session = RankingSession(items=items, target=target, draft=None, done=done, reveal_gold=reveal_gold)
    return dataclasses.replace(session, draft=_next_item(session, done, after=-1))


def current_draft(session: RankingSession) -> RankDraft:
    """The draft on screen; raises ValueError when every item is already ranked."""
    if session.draft is None:
        raise ValueError("Every item is ranked: there is nothing left to click. Undo last to redo one.")
    return session.draft


def click_reply(draft: RankDraft, i: int) -> RankDraft:
    """Give reply `i` the next place; clicking a reply that already has a place takes it out.

    Taking out (rather than refusing) lets a learner fix a slip without Reset: the replies after
    it move up one place. Raises ValueError for an index that is not a reply.
    """
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < draft.k:
        raise ValueError(f"There is no reply {i!r}: this item has replies 0..{draft.k - 1}.")
    if i in draft.order:
        return dataclasses.replace(draft, order=tuple(j for j in draft.order if j != i))
    return dataclasses.replace(draft, order=(*draft.order, i))


def reset_ranking(draft: RankDraft) -> RankDraft:
    """The same item with no reply placed."""
    return dataclasses.replace(draft, order=())


def gold_reveal(item: RankItem, order: Sequence[int]) -> GoldReveal | None:
    """The gold labeler's view of `item` ranked as `order`; None when the item has no task."""
    if item.task is None:
        return None
    return GoldReveal(
        replies=tuple(item.replies),
        learner=tuple(order),
        gold=tuple(gold_ranking(item.task, item.replies)),
        scores=tuple(gold_score(item.task, r).total for r in item.replies),
    )


def submit_ranking(session: RankingSession, path: str | os.PathLike,
                   ranker: str = "person") -> RankingSession:
    """Save the clicked order as a comparison record in `path`, then move to the next item.

    The record (`item.record(order, ranker)`) is appended and fsynced by
    `rankings.append_comparison` before the new session is built, so once the learner sees
    the next item the previous ranking is on disk. An incomplete order raises ValueError naming
    the replies still unplaced, and nothing is written.
    """
    draft = current_draft(session)
    if not draft.complete:
        missing = draft.unplaced
        raise ValueError(
            f"Not saved: {'reply' if len(missing) == 1 else 'replies'} {_letters(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no place yet ({len(draft.order)} of "
            f"{draft.k} placed). Click every reply, best first, then Submit."
        )
    item = session.items[draft.item]
    append_comparison(path, item.record(list(draft.order), ranker))
    done = (*session.done, draft.item)
    return dataclasses.replace(
        session, done=done, draft=_next_item(session, done, after=draft.item),
        reveal=gold_reveal(item, draft.order) if session.reveal_gold else None,
    )


def undo_last_ranking(session: RankingSession, path: str | os.PathLike) -> tuple[RankingSession, dict]:
    """Remove the last record of `path` and show its item again, unranked.

    Returns the new session and the removed record. Only a record of one of this session's
    items is removed: anything else (another notebook's rankings in the same file) raises
    ValueError and the file is left alone, as it is when there is nothing to undo.
    """
    path = Path(path)
    saved = load_comparisons(path) if path.exists() else []
    if not saved:
        raise ValueError(f"Nothing to undo: {path.name} holds no ranking yet.")
    last = saved[-1]
    matches = [j for j, item in enumerate(session.items) if _same_item(item, last)]
    if not matches:
        raise ValueError(
            f"Not undone: the last record in {path.name} (id {last.get('id')!r}) is not one of the "
            "items in this widget; remove it by hand if it should go."
        )
    removed = undo_last_comparison(path)
    j = matches[0]
    done = tuple(d for d in session.done if d != j)
    draft = RankDraft(item=j, k=len(session.items[j].replies))
    return dataclasses.replace(session, done=done, draft=draft, reveal=None), removed


def progress(session: RankingSession) -> float:
    """Rankings saved over the target, capped at 1.0 (for a progress bar)."""
    return min(1.0, session.ranked / session.target)


def progress_text(session: RankingSession) -> str:
    """The progress label: 'ranked N / target'."""
    return f"ranked {session.ranked} / {session.target}"


# --------------------------------------------------------------------------- the widget


def _order_text(order: Sequence[int]) -> str:
    return html.escape(" > ".join(reply_letter(i) for i in order))


def render_context(messages: Sequence[Mapping[str, str]]) -> str:
    """The conversation before the replies, as HTML (every text escaped), one block per turn."""
    blocks = []
    for m in messages:
        color = "#e8f0fe" if m["role"] == "user" else "#e6f4ea"
        blocks.append(
            f'<div style="background:{color};padding:4px 8px;margin:2px 0;white-space:pre-wrap">'
            f"<b>{html.escape(m['role'])}</b><br>{html.escape(m['content'])}</div>"
        )
    return "".join(blocks)


def render_reveal(reveal: GoldReveal) -> str:
    """HTML table: place by place, the learner's reply and the gold labeler's, with gold scores."""

    def cell(i: int) -> str:
        reply = reveal.replies[i]
        text = html.escape(reply if len(reply) <= 60 else reply[:57] + "...")
        return f"<b>{reply_letter(i)}</b> ({reveal.scores[i]:.2f}) {text}"

    rows = "".join(
        f"<tr><td>{ordinal(p + 1)}</td><td>{cell(mine)}</td><td>{cell(gold)}</td></tr>"
        for p, (mine, gold) in enumerate(zip(reveal.learner, reveal.gold, strict=True))
    )
    agreed, judged = reveal.agreement
    summary = (f"The gold labeler agrees with {agreed} of the {judged} pairs it can tell apart."
               if judged else "The gold labeler scores these replies all the same.")
    return ("<div><b>The gold labeler on the item you just ranked</b> (gold score, 0 to 1, in brackets)"
            "<table><tr><th>place</th><th>you</th><th>gold</th></tr>"
            f"{rows}</table>{summary}</div>")


class RankingWidget(ActionStatus):
    """Rank K replies to a conversation by clicking them, best first; one JSON line per ranking.

    `items` are `rankings.RankItem`s; rankings go to the JSON Lines file `path` (e.g.
    RUN_DIR/comparisons/human.jsonl) with `ranker` in each record. `target` is how many rankings
    to aim for (default: all items); with `reveal_gold=True`, each submission shows the gold
    labeler's order of the same replies. The widget holds only a `RankingSession`; every action
    is one of the pure functions above. Controls are attributes (and carry CSS classes
    `rlhf-reply`, `rlhf-reset`, `rlhf-submit`, `rlhf-undo`, …) so tests can click them.
    """

    def __init__(self, items: Iterable[RankItem], path: str | os.PathLike, ranker: str = "person",
                 target: int | None = None, reveal_gold: bool = False):
        self.path, self.ranker = Path(path), ranker
        self.session = start_ranking(items, self.path, target, reveal_gold)
        self.error: str | None = None
        """The last action's error message (None if it succeeded), as shown in the message area."""

        self.context = widgets.HTML()
        self.replies = widgets.VBox()
        self.reply_buttons: list[widgets.Button] = []
        self.reset = widgets.Button(description="Reset", icon="eraser")
        self.submit = widgets.Button(description="Submit", icon="save", button_style="primary")
        self.undo = widgets.Button(description="Undo last", icon="undo")
        self.progress = widgets.HTML()
        self.message = widgets.HTML()
        self.reveal = widgets.HTML()
        for w, name in [(self.context, "context"), (self.replies, "replies"), (self.reset, "reset"),
                        (self.submit, "submit"), (self.undo, "undo"), (self.progress, "progress"),
                        (self.message, "message"), (self.reveal, "reveal")]:
            w.add_class(f"rlhf-{name}")

        self.reset.on_click(lambda _: self._act(self._reset))
        self.submit.on_click(lambda _: self._act(self._submit))
        self.undo.on_click(lambda _: self._act(self._undo))
        self._shown: int | None = None  # which item the reply buttons were built for
        self.widget = widgets.VBox([
            self.progress, self.context, self.replies,
            widgets.HBox([self.reset, self.submit, self.undo]),
            self.message, self.reveal,
        ])
        self._render("Click the replies from best to worst, then Submit.")

    def _ipython_display_(self):
        from IPython.display import display  # IPython only inside a notebook

        display(self.widget)

    # Each handler is one pure function and the message to show after it.
    def _click(self, i: int) -> str:
        draft = click_reply(current_draft(self.session), i)
        self.session = dataclasses.replace(self.session, draft=draft)
        if i in draft.order:
            return f"{reply_letter(i)} is {ordinal(draft.order.index(i) + 1)}."
        return f"{reply_letter(i)} taken out; the replies after it moved up."

    def _reset(self) -> str:
        self.session = dataclasses.replace(self.session, draft=reset_ranking(current_draft(self.session)))
        return "Cleared: click the replies from best to worst."

    def _submit(self) -> str:
        order = current_draft(self.session).order
        self.session = submit_ranking(self.session, self.path, self.ranker)
        saved = f"Saved {_order_text(order)} to {html.escape(self.path.name)}."
        if self.session.draft is None:
            return saved + " That was the last item."
        if self.session.ranked == self.session.target:
            return saved + " Target reached; rank more if you like."
        return saved + " Next item."

    def _undo(self) -> str:
        self.session, removed = undo_last_ranking(self.session, self.path)
        was = _order_text(removed["ranking"])
        return f"Removed your last ranking ({was}) from {html.escape(self.path.name)}: rank it again."

    def _build_buttons(self, item: RankItem) -> None:
        self.reply_buttons, rows = [], []
        for i, reply in enumerate(item.replies):
            b = widgets.Button(description=reply_letter(i), tooltip=reply,
                               layout=widgets.Layout(width="7em", flex="0 0 auto"))
            b.add_class("rlhf-reply")
            b.add_class(f"rlhf-reply-{reply_letter(i)}")
            b.on_click(lambda _, i=i: self._act(lambda: self._click(i)))
            text = widgets.HTML(f'<div style="white-space:pre-wrap;padding:4px">{html.escape(reply)}</div>')
            self.reply_buttons.append(b)
            rows.append(widgets.HBox([b, text]))
        self.replies.children = rows

    def _render(self, message: str = "", color: str = "#555") -> None:
        s = self.session
        # Buttons are rebuilt only for a new item (K can differ); when none is left, the last
        # item's stay on screen, disabled, so the learner still sees what was just ranked.
        want = s.draft.item if s.draft else (self._shown if self._shown is not None else s.done[-1])
        if want != self._shown:
            self._build_buttons(s.items[want])
            self._shown = want
        if s.draft is None:
            self.context.value = (f"<i>No items left: all {len(s.items)} are ranked. "
                                  "The last one's replies stay below for reference.</i>")
        else:
            item = s.item
            self.context.value = (f"<small>item {html.escape(item.item_id or str(s.draft.item))}</small>"
                                  + render_context(item.context))
            for i, b in enumerate(self.reply_buttons):
                placed = i in s.draft.order
                b.description = (f"{reply_letter(i)}: {ordinal(s.draft.order.index(i) + 1)}"
                                 if placed else reply_letter(i))
                b.button_style = "info" if placed else ""
        # Disabled buttons guide the order; the pure functions still refuse a wrong one.
        for b in self.reply_buttons:
            b.disabled = s.draft is None
        self.reset.disabled = s.draft is None or not s.draft.order
        self.submit.disabled = s.draft is None
        self.undo.disabled = not s.done
        self.progress.value = f"<b>{progress_text(s)}</b>"
        self.message.value = f'<span style="color:{color}">{message}</span>'
        self.reveal.value = render_reveal(s.reveal) if s.reveal else ""
