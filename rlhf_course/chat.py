"""Chat with any checkpoint of a run, with a moderation filter and thumbs up/down feedback.

Notebook 09 closes the loop the ChatGPT post describes at launch: people talk to the model,
"We're using the Moderation API to warn or block certain types of unsafe content", and "Users
are encouraged to provide feedback on problematic model outputs through the UI, as well as on
false positives/negatives from the external content filter which is also part of the
interface." Feedback is appended to a file (`rlhf_course.feedback`) that can become comparison
data for the next `iterate` round.

As in `demo_widget` and `ranking_widget`, the logic is pure functions on a frozen `ChatState`,
driven headlessly by the tests; they live in `chat_state`, with the moderator interface, the
streamed sampling and the fitting of the context. This module holds the rendering and
`ChatWidget`, which only draws. The testable core of generation is `chat_state.stream_reply`, a
KV-cache loop that yields the reply's growing text and ends on exactly what `generate_replies`
returns for the same seed.

What it simplifies: no system prompt; one conversation at a time; the moderator is anything with
`moderate(text, role) -> Verdict` (`rlhf_course.moderation`, or a fake in tests); a reply whose
text the filter blocks is left out of the model's later prompts together with the user turn it
answered (so is an empty reply), and a blocked user turn is never sent, so the model never sees
blocked text. A streamed
reply is checked at every display update, so blocked text never reaches the screen.
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from rlhf_course.chat_state import (
    ChatState,
    Message,
    Moderator,
    add_user_message,
    clear,
    flag,
    flag_kinds,
    rate,
    regenerate,
    respond,
)
from rlhf_course.feedback import FEEDBACK, FLAGS
from rlhf_course.models import load_checkpoint
from rlhf_course.widget_tools import ActionStatus

CHAT_STAGES = ("base", "sft", "ppo", "iterate")
"""The stages whose model (RUN_DIR/<stage>/model) the chat can talk to, least trained first."""


# --------------------------------------------------------------------------- rendering


def available_stages(run_dir: str | os.PathLike) -> list[str]:
    """The stages of `CHAT_STAGES` whose RUN_DIR/<stage>/model exists, least trained first."""
    return [s for s in CHAT_STAGES if (Path(run_dir) / s / "model").is_dir()]


def moderation_notice(message: Message) -> str | None:
    """What the user is told about the filter's verdict on `message` (plain text), or None."""
    if message.verdict is None or message.verdict.label == "allow":
        return None
    what = f"{message.verdict.category or 'unsafe content'}, score {message.verdict.score:.2f}"
    if message.role == "user":
        if message.blocked:
            return f"Blocked by the moderation filter ({what}): this message was not sent to the model."
        return f"The moderation filter warns about this message ({what}); it was sent."
    if message.blocked:
        return f"This reply was blocked by the moderation filter ({what}) and is not shown."
    return f"The moderation filter warns about this reply ({what})."


def context_notice(message: Message) -> str | None:
    """The notice that a reply's prompt did not hold the whole conversation, or None."""
    parts = []
    if message.dropped:
        parts.append(f"the oldest {message.dropped} message{'s' if message.dropped != 1 else ''} "
                     "were left out of this reply's prompt")
    if message.cut:
        parts.append("your message was too long alone and only its end was read")
    if not parts:
        return None
    return "The conversation is longer than the model's context: " + "; ".join(parts) + "."


def render_message(message: Message) -> str:
    """One message as HTML (text escaped; `dir=auto` so right-to-left text reads right)."""
    color = "#e8f0fe" if message.role == "user" else "#e6f4ea"
    who = "you" if message.role == "user" else f"assistant ({html.escape(message.stage or '?')})"
    if message.siblings:
        who += f" · version {len(message.siblings) + 1}"
    notes = []
    if (note := context_notice(message)) is not None:
        notes.append(f'<div class="rlhf-context-notice" style="color:#8a5a00">⚠ {html.escape(note)}</div>')
    if (note := moderation_notice(message)) is not None:
        color = "#fdecea" if message.blocked else "#fff4e5"
        cls = "rlhf-blocked" if message.blocked else "rlhf-warned"
        notes.append(f'<div class="{cls}" style="color:#c62828">⚠ {html.escape(note)}</div>')
    hidden = message.role == "assistant" and message.blocked
    body = "" if hidden else f'<div dir="auto">{html.escape(message.text)}</div>'
    extra = []
    if message.rating:
        extra.append(f"you rated it {'👍' if message.rating == 'up' else '👎'}")
    if message.flagged:
        extra.append(f"you flagged the filter: {message.flagged.replace('_', ' ')}")
    tail = f"<small><i>{html.escape('; '.join(extra))}</i></small>" if extra else ""
    return (f'<div style="background:{color};padding:4px 8px;margin:2px 0;white-space:pre-wrap">'
            f"<b>{who}</b>{''.join(notes)}{body}{tail}</div>")


def render_pending(text: str, stage: str) -> str:
    """The reply being streamed, as HTML."""
    return (f'<div style="background:#e6f4ea;padding:4px 8px;margin:2px 0;white-space:pre-wrap">'
            f'<b>assistant ({html.escape(stage)})</b> <i>writing…</i><div dir="auto">{html.escape(text)}</div></div>')


# --------------------------------------------------------------------------- the widget


class RunModels(Mapping):
    """The chat models of a run, by stage, loaded on first use (`models.load_checkpoint`).

    Keys are `available_stages(run_dir)` when built. Only the last model asked for is kept, so
    switching stages on a GPU profile never holds four models at once.
    """

    def __init__(self, run_dir: str | os.PathLike, profile: str = "cpu"):
        self.run_dir, self.profile = Path(run_dir), profile
        self.stages = available_stages(self.run_dir)
        self._loaded: tuple[str, Any] | None = None

    def __getitem__(self, stage: str):
        if stage not in self.stages:
            raise KeyError(stage)
        if self._loaded is None or self._loaded[0] != stage:

            self._loaded = None  # let the previous model go before loading the next
            self._loaded = (stage, load_checkpoint(self.run_dir / stage / "model", self.profile))
        return self._loaded[1]

    def __contains__(self, stage: object) -> bool:
        return stage in self.stages  # without loading the model, as Mapping's default would

    def __iter__(self):
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)


@dataclass
class MessageRow:
    """The controls under one message: thumbs and a comment (replies), flags (judged messages)."""

    box: widgets.VBox
    html: widgets.HTML
    up: widgets.Button | None = None
    down: widgets.Button | None = None
    comment: widgets.Text | None = None
    flags: dict[str, widgets.Button] = dataclasses.field(default_factory=dict)


_FLAG_LABELS = {"false_positive": ("Filter was wrong to flag", "Harmless text that the filter warned about or blocked"),
                "false_negative": ("Filter should have flagged", "Harmful text that the filter let through")}


class ChatWidget(ActionStatus):
    """Chat with the model of any stage, see replies stream, rate them, flag the filter.

    `models` maps a stage name to `(tokenizer, model)` (a dict in tests, `RunModels` for a run:
    see `ChatWidget.from_run`). Ratings go to the JSON Lines file `feedback_path`, flags (with a
    `moderator`) to `flag_path` (default: flags.jsonl beside it). Replies are sampled at
    `temperature` with seed `seed` + the number of replies so far, `max_new_tokens` at most,
    shown every `every` tokens. The widget holds only a `ChatState`; controls are attributes
    (and `rows`, one `MessageRow` per message) so tests can set `.value` and `.click()`.
    """

    def __init__(self, models: Mapping[str, tuple[Any, Any]], feedback_path: str | os.PathLike, *,
                 stage: str | None = None, moderator: Moderator | None = None,
                 flag_path: str | os.PathLike | None = None, max_new_tokens: int = 64,
                 temperature: float = 0.7, seed: int = 0, every: int = 4):
        stages = list(models)
        if not stages:
            raise ValueError(f"No model to chat with: none of the stages {CHAT_STAGES} has saved a model "
                             "yet. Run the base stage (notebook 01) first.")
        if stage is not None and stage not in stages:
            raise ValueError(f"stage {stage!r} has no model here; choose one of {stages}")
        self.models, self.moderator = models, moderator
        self.feedback_path = Path(feedback_path)
        self.flag_path = Path(flag_path) if flag_path is not None else self.feedback_path.with_name(FLAGS)
        self.max_new_tokens, self.temperature, self.seed, self.every = max_new_tokens, temperature, seed, every
        self.state = ChatState()
        self.error: str | None = None
        """The last action's error message (None if it succeeded), as shown in the status line."""

        self.stage = widgets.Dropdown(options=stages, value=stage or stages[-1], description="Model")
        self.clear = widgets.Button(description="Clear", icon="trash")
        self.history = widgets.VBox()
        self.pending = widgets.HTML()
        self.text = widgets.Textarea(placeholder="Message the assistant",
                                     layout=widgets.Layout(width="100%", height="4em"))
        self.send = widgets.Button(description="Send", icon="paper-plane", button_style="primary")
        self.regenerate = widgets.Button(description="Regenerate", icon="redo")
        self.status = widgets.HTML()
        self.rows: list[MessageRow] = []

        self.send.on_click(lambda _: self._act(self._send, busy="Sampling…"))
        self.regenerate.on_click(lambda _: self._act(self._regenerate, busy="Sampling…"))
        self.clear.on_click(lambda _: self._act(self._clear))
        self.stage.observe(lambda change: self._render(f"Replies now come from {html.escape(change['new'])}."),
                           names="value")
        self.buttons = [self.send, self.regenerate, self.clear]
        self.widget = widgets.VBox([
            widgets.HBox([self.stage, self.clear]),
            self.history, self.pending, self.text,
            widgets.HBox([self.send, self.regenerate]),
            self.status,
        ])
        self._render(f"Chatting with {html.escape(self.stage.value)}. Type a message and press Send.")

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, profile: str = "cpu", **kwargs) -> ChatWidget:
        """A chat with the models of the run in `run_dir`, feedback in RUN_DIR/feedback/."""
        kwargs.setdefault("feedback_path", Path(run_dir) / "feedback" / FEEDBACK)
        return cls(RunModels(run_dir, profile), **kwargs)

    def _ipython_display_(self):
        from IPython.display import display  # IPython only inside a notebook

        display(self.widget)

    # Each handler is pure functions plus what the text box shows afterwards.
    def _send(self) -> str:
        before = self.state
        self.state = add_user_message(self.state, self.text.value, self.moderator)
        if self.state is before:
            return "Type a message first."
        self.text.value = ""
        if self.state.messages[-1].blocked:
            return "Your message was blocked by the moderation filter and not sent."
        return self._reply("Reply")

    def _regenerate(self) -> str:
        before = self.state
        self.state = regenerate(self.state)
        try:
            return self._reply("New version")
        except Exception:
            self.state = before  # a failed regeneration keeps the reply it would have replaced
            raise

    def _clear(self) -> str:
        self.state = clear(self.state)
        return "Cleared: a new conversation."

    def _reply(self, what: str) -> str:
        stage = self.stage.value
        tokenizer, model = self.models[stage]
        self._render_history()
        try:
            for state in respond(self.state, model, tokenizer, stage, max_new_tokens=self.max_new_tokens,
                                 temperature=self.temperature, seed=self.seed, moderator=self.moderator,
                                 every=self.every):
                if state.pending is not None:
                    self.pending.value = render_pending(state.pending, stage)
                else:
                    self.state = state
        finally:
            self.pending.value = ""
        reply = self.state.messages[-1]
        notes = [n for n in (context_notice(reply), moderation_notice(reply)) if n]
        return html.escape(" ".join([f"{what} from {stage}.", *notes]))

    def _rate(self, index: int, rating: str) -> str:
        comment = self.rows[index].comment.value if self.rows[index].comment else ""
        self.state = rate(self.state, index, rating, self.feedback_path, comment)
        return f"Saved your {'👍' if rating == 'up' else '👎'} to {html.escape(self.feedback_path.name)}."

    def _flag(self, index: int, kind: str) -> str:
        self.state = flag(self.state, index, kind, self.flag_path)
        return f"Flag saved to {html.escape(self.flag_path.name)}: thank you."

    def _row(self, i: int, message: Message) -> MessageRow:
        row = MessageRow(box=widgets.VBox(), html=widgets.HTML(render_message(message)))
        controls: list[widgets.Widget] = []
        if message.role == "assistant" and not message.blocked:
            row.up = widgets.Button(description="👍", tooltip="A good reply", layout=widgets.Layout(width="3.5em"),
                                    button_style="success" if message.rating == "up" else "")
            row.down = widgets.Button(description="👎", tooltip="A bad reply", layout=widgets.Layout(width="3.5em"),
                                      button_style="danger" if message.rating == "down" else "")
            row.comment = widgets.Text(placeholder="Comment (optional), then 👍 or 👎")
            row.up.on_click(lambda _, i=i: self._act(lambda: self._rate(i, "up")))
            row.down.on_click(lambda _, i=i: self._act(lambda: self._rate(i, "down")))
            controls += [row.up, row.down, row.comment]
        for kind in flag_kinds(message.verdict):
            label, tip = _FLAG_LABELS[kind]
            b = widgets.Button(description=label, tooltip=tip, icon="flag",
                               layout=widgets.Layout(width="auto"),
                               button_style="warning" if message.flagged == kind else "")
            b.on_click(lambda _, i=i, kind=kind: self._act(lambda: self._flag(i, kind)))
            row.flags[kind] = b
            controls.append(b)
        row.box.children = [row.html, widgets.HBox(controls)] if controls else [row.html]
        return row

    def _render_history(self) -> None:
        self.rows = [self._row(i, m) for i, m in enumerate(self.state.messages)]
        self.history.children = [r.box for r in self.rows]

    def _render(self, message: str = "", color: str = "#555") -> None:
        self._render_history()
        s = self.state
        self.send.disabled = False
        self.regenerate.disabled = not (s.awaiting_reply or (s.messages and s.messages[-1].role == "assistant"))
        self.clear.disabled = not s.messages
        self.status.value = f'<span style="color:{color}">{message}</span>'
