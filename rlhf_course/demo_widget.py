"""The demonstration writer of notebook 02, thin: every action is a tested pure function, the
widget only renders.

It is the ChatGPT post's data collection for SFT: "human AI trainers provided conversations in
which they played both sides—the user and an AI assistant. We gave the trainers access to
model-written suggestions to help them compose their responses." `DemoDraft` and the functions
below it are the whole logic, UI-free; `DemonstrationWriter` wires them to buttons. What it
simplifies: one trainer, one conversation at a time, no system prompt, and a suggestion is one
sample from the current model (OpenAI's tooling is not public).
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from rlhf_course.data import validate_conversation
from rlhf_course.generation import generate_replies
from rlhf_course.jsonl import append_jsonl, read_jsonl
from rlhf_course.widget_tools import ActionStatus

Suggester = Callable[[list[dict]], str]
"""`suggester(messages) -> reply text`: messages alternate user/assistant and end on a user turn."""

ACTIONS = ("accepted", "edited", "discarded")
"""What the trainer did with a model-written suggestion."""

_RECORD_KEYS = ("messages", "source", "suggestions", "written_at")


# --------------------------------------------------------------------------- the pure state


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


class DemonstrationWriter(ActionStatus):
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

    def _show_busy(self, text: str) -> None:
        self._set_status(text, "#555")

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
