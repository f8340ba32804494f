"""Notebook widgets, thin: every action is a tested pure function, the widget only renders.

The demonstration writer (notebook 02) is the ChatGPT post's data collection for SFT: "human AI
trainers provided conversations in which they played both sides—the user and an AI assistant.
We gave the trainers access to model-written suggestions to help them compose their responses."
`DemoDraft` and the functions below it are the whole logic, UI-free; `DemonstrationWriter` wires
them to buttons. What it simplifies: one trainer, one conversation at a time, no system prompt,
and a suggestion is one sample from the current model (OpenAI's tooling is not public).

The ranking widget (notebook 04) collects the post's "comparison data, which consisted of two or
more model responses ranked by quality". `RankingSession` and the functions after it are the
logic; `RankingWidget` only draws. Each ranking is appended and fsynced through
`comparisons.append_comparison` before the next item appears. What it simplifies: one ranker,
strict orders only (no ties), no per-reply ratings or comments.
"""

from __future__ import annotations

import dataclasses
import html
import os
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from rlhf_course.data import append_jsonl, read_jsonl, validate_conversation
from rlhf_course.generation import generate_replies
from rlhf_course.rankings import (
    ComparisonError,
    RankItem,
    agreement,
    append_comparison,
    gold_ranking,
    load_comparisons,
    undo_last_comparison,
)
from rlhf_course.world import gold_score

Suggester = Callable[[list[dict]], str]
"""`suggester(messages) -> reply text`: messages alternate user/assistant and end on a user turn."""

ACTIONS = ("accepted", "edited", "discarded")
"""What the trainer did with a model-written suggestion."""

_RECORD_KEYS = ("messages", "source", "suggestions", "written_at")


# --------------------------------------------------------------------------- the pure state


def run_action(handler: Callable[[], str]) -> tuple[str | None, str | None]:
    """(message, error) of a widget action: a ValueError (ConversationError, ComparisonError) is
    an expected refusal shown as is; anything else (a failing model, a full disk) is shown with
    its type, so the notebook says what happened instead of dying."""
    try:
        return handler(), None
    except ValueError as e:
        return None, str(e)
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class SuggestionLog:
    """One model-written suggestion and what the trainer did with it."""

    turn: int
    """Index in `messages` of the assistant turn the suggestion was for."""
    suggested: str
    """The text the model wrote."""
    action: str
    """'accepted' (used as is), 'edited' (used after changes) or 'discarded'."""


@dataclass(frozen=True)
class DemoDraft:
    """A conversation being written: its turns, the pending suggestion, and the suggestion log.

    Immutable: every function below returns a new draft, so the widget can keep one reference
    and a test can compare before and after.
    """

    turns: tuple[tuple[str, str], ...] = ()
    """(role, content) pairs, alternating user/assistant, starting with user."""
    suggestion: str | None = None
    """The model-written suggestion for the next assistant turn, if one is shown."""
    log: tuple[SuggestionLog, ...] = ()
    """Every suggestion already accepted, edited or discarded, in order."""

    @property
    def messages(self) -> list[dict]:
        """The turns as `{"role", "content"}` dicts (a fresh list: mutating it changes nothing)."""
        return [{"role": role, "content": content} for role, content in self.turns]

    @property
    def next_role(self) -> str:
        """Whose turn it is: 'user' on an empty draft or after an assistant turn, else 'assistant'."""
        return "assistant" if self.turns and self.turns[-1][0] == "user" else "user"


def _clean(text: str, what: str) -> str:
    # Trailing newlines from a text area are noise; inner whitespace is the trainer's choice.
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"The {what} is empty: type some text first.")
    return text.strip()


def _expect(draft: DemoDraft, role: str) -> None:
    if draft.next_role != role:
        if role == "user":
            raise ValueError(
                "It is the assistant's turn: write the reply (or ask for a suggestion), "
                "or Undo the last user turn."
            )
        raise ValueError("It is the user's turn: write the user's message first.")


def add_user_turn(draft: DemoDraft, text: str) -> DemoDraft:
    """Append a user message. Raises ValueError if `text` is blank or it is the assistant's turn."""
    _expect(draft, "user")
    return dataclasses.replace(draft, turns=(*draft.turns, ("user", _clean(text, "user message"))))


def suggest(draft: DemoDraft, suggester: Suggester) -> DemoDraft:
    """Ask `suggester` for the next assistant turn and show it as the pending suggestion.

    A suggestion already pending is replaced and logged as discarded (the trainer saw it and
    asked for another). A blank suggestion raises ValueError and leaves the draft unchanged.
    """
    _expect(draft, "assistant")
    text = suggester(draft.messages)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("The model suggested an empty reply: ask again, or write the reply yourself.")
    if draft.suggestion is not None:
        draft = discard_suggestion(draft)
    return dataclasses.replace(draft, suggestion=text.strip())


def add_assistant_turn(draft: DemoDraft, text: str) -> DemoDraft:
    """Append an assistant message written (or edited) by the trainer.

    If a suggestion is pending, it is logged as 'accepted' when `text` equals it (ignoring
    surrounding whitespace) and 'edited' otherwise. Raises ValueError on blank text or when it is
    the user's turn.
    """
    _expect(draft, "assistant")
    text = _clean(text, "assistant reply")
    log = draft.log
    if draft.suggestion is not None:
        action = "accepted" if text == draft.suggestion.strip() else "edited"
        log = (*log, SuggestionLog(len(draft.turns), draft.suggestion, action))
    return DemoDraft(turns=(*draft.turns, ("assistant", text)), suggestion=None, log=log)


def accept_suggestion(draft: DemoDraft) -> DemoDraft:
    """Use the pending suggestion as the assistant turn, unchanged."""
    if draft.suggestion is None:
        raise ValueError("There is no suggestion to accept: press 'Suggest reply' first.")
    return add_assistant_turn(draft, draft.suggestion)


def edit_suggestion(draft: DemoDraft, text: str) -> DemoDraft:
    """Use `text`, the trainer's edit of the pending suggestion, as the assistant turn.

    Logged as 'edited', or as 'accepted' if the edit left the text as it was.
    """
    if draft.suggestion is None:
        raise ValueError("There is no suggestion to edit: press 'Suggest reply' first.")
    return add_assistant_turn(draft, text)


def discard_suggestion(draft: DemoDraft) -> DemoDraft:
    """Drop the pending suggestion and log it as 'discarded'."""
    if draft.suggestion is None:
        raise ValueError("There is no suggestion to discard.")
    entry = SuggestionLog(len(draft.turns), draft.suggestion, "discarded")
    return dataclasses.replace(draft, suggestion=None, log=(*draft.log, entry))


def undo_last_turn(draft: DemoDraft) -> DemoDraft:
    """Remove the last message, with any pending suggestion and the log entries of removed turns.

    The draft goes back to how it was before that message, so the saved log only describes
    turns that are in the saved conversation.
    """
    if not draft.turns:
        raise ValueError("Nothing to undo: the conversation is empty.")
    turns = draft.turns[:-1]
    log = tuple(e for e in draft.log if e.turn < len(turns))
    return DemoDraft(turns=turns, suggestion=None, log=log)


def demonstration_record(draft: DemoDraft, meta: Mapping[str, Any] | None = None) -> dict:
    """The JSON record `finish` writes: messages, source 'human', the suggestion log, time, meta.

    `meta` (e.g. `{"trainer": "ada"}`) may not reuse the record's own keys.
    """
    meta = dict(meta or {})
    clash = sorted(set(meta) & set(_RECORD_KEYS))
    if clash:
        raise ValueError(f"meta may not set {clash}: those keys belong to the record itself.")
    return {
        "messages": draft.messages,
        "source": "human",
        "suggestions": [dataclasses.asdict(e) for e in draft.log],
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **meta,
    }


def finish(draft: DemoDraft, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> DemoDraft:
    """Validate the conversation, append it to the JSON Lines file `path`, return a fresh draft.

    The line is flushed and fsynced before this returns (a dead kernel loses nothing). A
    conversation that fails `data.validate_conversation` (e.g. it ends on a user turn) raises
    `ConversationError` and nothing is written.
    """
    record = demonstration_record(draft, meta)
    validate_conversation(record["messages"], where=f"not saved to {Path(path).name}")
    append_jsonl(path, record)
    return DemoDraft()


def count_records(path: str | os.PathLike) -> int:
    """How many records the JSON Lines file `path` holds (0 if it does not exist yet)."""
    return sum(1 for _ in read_jsonl(path)) if Path(path).exists() else 0


def model_suggester(
    model, tokenizer, max_new_tokens: int = 64, temperature: float = 0.7, seed: int = 0
) -> Suggester:
    """A suggester that samples one reply from `model` (e.g. the base model in notebook 02).

    The seed advances by one per call, so asking again gives a different suggestion, and a
    session replays the same suggestions from the same `seed`.
    """
    calls = 0

    def suggester(messages: list[dict]) -> str:
        nonlocal calls
        seed_now, calls = seed + calls, calls + 1
        (reply,) = generate_replies(
            model, tokenizer, [messages], max_new_tokens, temperature, batch_size=1, seed=seed_now
        )
        return reply

    return suggester


# --------------------------------------------------------------------------- the widget


def render_transcript(draft: DemoDraft) -> str:
    """The draft as HTML (every text escaped): one block per turn, then the pending suggestion."""
    blocks = []
    for i, (role, content) in enumerate(draft.turns):
        color = "#e8f0fe" if role == "user" else "#e6f4ea"
        blocks.append(
            f'<div style="background:{color};padding:4px 8px;margin:2px 0;white-space:pre-wrap">'
            f"<b>{i}. {role}</b><br>{html.escape(content)}</div>"
        )
    if draft.suggestion is not None:
        blocks.append(
            '<div style="border:1px dashed #999;padding:4px 8px;margin:2px 0;white-space:pre-wrap">'
            f"<i>suggestion (model-written)</i><br>{html.escape(draft.suggestion)}</div>"
        )
    if not blocks:
        blocks.append("<i>Empty conversation: start with the user's first message.</i>")
    return "".join(blocks)


class DemonstrationWriter:
    """Write demonstrations in a notebook, playing both the user and the assistant.

    Each assistant turn can start from a model-written suggestion (`suggester`, see
    `model_suggester`): accept it, edit it in the text area and send it, or discard it. Finished
    conversations are appended to the JSON Lines file `path` at once, with `meta` in each record.
    The widget holds only the current `DemoDraft`; display it with `display(writer)` or as the
    last expression of a cell. Controls are attributes so tests can set `.value` and `.click()`.
    """

    def __init__(self, path: str | os.PathLike, suggester: Suggester, meta: Mapping[str, Any] | None = None):
        self.path, self.suggester, self.meta = Path(path), suggester, dict(meta or {})
        demonstration_record(DemoDraft(), self.meta)  # a clashing meta key fails now, not at Finish
        self.draft = DemoDraft()
        self.saved = count_records(self.path)
        self.error: str | None = None
        """The last action's error message (None if it succeeded), as shown in the status line."""

        self.transcript = widgets.HTML()
        self.text = widgets.Textarea(
            placeholder="Type the user's message, or the assistant's reply",
            layout=widgets.Layout(width="100%", height="6em"),
        )
        self.send_user = widgets.Button(description="Send as user", icon="user")
        self.suggest = widgets.Button(description="Suggest reply", icon="magic")
        self.accept = widgets.Button(description="Accept suggestion", icon="check", button_style="success")
        self.send_assistant = widgets.Button(description="Send as assistant", icon="reply")
        self.discard = widgets.Button(description="Discard suggestion", icon="times")
        self.undo = widgets.Button(description="Undo", icon="undo")
        self.finish = widgets.Button(description="Finish conversation", icon="save", button_style="primary")
        self.status = widgets.HTML()

        self.send_user.on_click(lambda _: self._act(self._send_user))
        self.suggest.on_click(lambda _: self._act(self._suggest, busy="Sampling a suggestion…"))
        self.accept.on_click(lambda _: self._act(self._accept))
        self.send_assistant.on_click(lambda _: self._act(self._send_assistant))
        self.discard.on_click(lambda _: self._act(self._discard))
        self.undo.on_click(lambda _: self._act(self._undo))
        self.finish.on_click(lambda _: self._act(self._finish))

        self.buttons = [self.send_user, self.suggest, self.accept, self.send_assistant,
                        self.discard, self.undo, self.finish]
        self.widget = widgets.VBox([
            self.transcript,
            self.text,
            widgets.HBox([self.send_user, self.suggest, self.accept, self.send_assistant]),
            widgets.HBox([self.discard, self.undo, self.finish]),
            self.status,
        ])
        self._render()

    def _ipython_display_(self):
        from IPython.display import display  # IPython only inside a notebook

        display(self.widget)

    # Each handler is one pure function plus what the text area should show afterwards.
    def _send_user(self) -> str:
        self.draft = add_user_turn(self.draft, self.text.value)
        self.text.value = ""
        return "User turn added. Now the assistant's reply: write it, or ask for a suggestion."

    def _suggest(self) -> str:
        self.draft = suggest(self.draft, self.suggester)
        # Pre-filled, so editing the suggestion is just typing, then 'Send as assistant'.
        self.text.value = self.draft.suggestion
        return "Suggestion shown and copied into the text box: accept, edit and send, or discard."

    def _accept(self) -> str:
        self.draft = accept_suggestion(self.draft)
        self.text.value = ""
        return "Suggestion accepted. Next: the user's message, or Finish."

    def _send_assistant(self) -> str:
        pending = self.draft.suggestion is not None
        self.draft = add_assistant_turn(self.draft, self.text.value)
        self.text.value = ""
        how = f" (suggestion {self.draft.log[-1].action})" if pending else ""
        return f"Assistant turn added{how}. Next: the user's message, or Finish."

    def _discard(self) -> str:
        suggestion = self.draft.suggestion
        self.draft = discard_suggestion(self.draft)
        if self.text.value.strip() == (suggestion or "").strip():
            self.text.value = ""  # only clear the box if the trainer had not started editing
        return "Suggestion discarded."

    def _undo(self) -> str:
        self.draft = undo_last_turn(self.draft)
        return "Last turn removed."

    def _finish(self) -> str:
        self.draft = finish(self.draft, self.path, self.meta)
        self.saved = count_records(self.path)
        return f"Saved to {html.escape(str(self.path))}. Start the next conversation."

    def _act(self, handler: Callable[[], str], busy: str | None = None) -> None:
        """Run a handler; show its message, or the error it raised, in the status line."""
        if busy:
            self._set_status(busy, "#555")
            for b in self.buttons:
                b.disabled = True
        message, self.error = run_action(handler)
        if self.error is None:
            self._render(message, "#1e7d32")
        else:
            self._render(html.escape(self.error), "#c62828")

    def _set_status(self, message: str, color: str) -> None:
        self.status.value = (
            f'<span style="color:{color}">{message}</span> &nbsp;·&nbsp; '
            f"{self.saved} conversation(s) in {html.escape(self.path.name)}"
        )

    def _render(self, message: str = "", color: str = "#555") -> None:
        d = self.draft
        self.transcript.value = render_transcript(d)
        # Disabled buttons guide the order; the pure functions still refuse a wrong one.
        pending = d.suggestion is not None
        self.send_user.disabled = d.next_role != "user"
        self.suggest.disabled = self.send_assistant.disabled = d.next_role != "assistant"
        self.accept.disabled = self.discard.disabled = not pending
        self.undo.disabled = not d.turns
        self.finish.disabled = d.next_role != "user" or not d.turns
        self._set_status(message or f"Next: the {d.next_role}'s turn.", color)


# =========================================================================== ranking replies
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
    """`comparisons.gold_ranking`: the gold labeler's order, best first."""
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
    """A session over `items` (`comparisons.RankItem`s) saving to the JSON Lines file `path`.

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
    `comparisons.append_comparison` before the new session is built, so once the learner sees
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


class RankingWidget:
    """Rank K replies to a conversation by clicking them, best first; one JSON line per ranking.

    `items` are `comparisons.RankItem`s; rankings go to the JSON Lines file `path` (e.g.
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

    def _act(self, handler: Callable[[], str]) -> None:
        """Run a handler; show its message, or the error it raised, in the message area."""
        message, self.error = run_action(handler)
        if self.error is None:
            self._render(message, "#1e7d32")
        else:
            self._render(html.escape(self.error), "#c62828")

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
