"""Chat with any checkpoint of a run, with a moderation filter and thumbs up/down feedback.

Notebook 09 closes the loop the ChatGPT post describes at launch: people talk to the model,
"We're using the Moderation API to warn or block certain types of unsafe content", and "Users
are encouraged to provide feedback on problematic model outputs through the UI, as well as on
false positives/negatives from the external content filter which is also part of the
interface." Feedback is appended to a file (`rlhf_course.feedback`) that can become comparison
data for the next `iterate` round.

As in `widgets`, the logic is pure functions on a frozen `ChatState`, driven headlessly by the
tests; `ChatWidget` only draws. The testable core of generation is `stream_reply`, a KV-cache
loop that yields the reply's growing text and ends on exactly what `generate_replies` returns
for the same seed.

What it simplifies: no system prompt; one conversation at a time; the moderator is anything with
`moderate(text, role) -> Verdict` (`rlhf_course.moderation`, or a fake in tests); a reply whose
text the filter blocks is left out of the model's later prompts together with the user turn it
answered (so is an empty reply), and a blocked user turn is never sent, so the model never sees
blocked text. A streamed
reply is checked at every display update, so blocked text never reaches the screen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import os
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ipywidgets as widgets
import torch
from transformers import DynamicCache

from rlhf_course.feedback import (
    FEEDBACK,
    FLAGS,
    LABELS,
    append_feedback,
    append_flag,
    feedback_record,
    flag_record,
)
from rlhf_course.generation import encode_prompts
from rlhf_course.models import load_checkpoint
from rlhf_course.widgets import run_action

CHAT_STAGES = ("base", "sft", "ppo", "iterate")
"""The stages whose model (RUN_DIR/<stage>/model) the chat can talk to, least trained first."""


# --------------------------------------------------------------------------- moderation interface


class Verdict(Protocol):
    """What a moderator says about one text (the interface `feedback.Verdict` implements)."""

    @property
    def label(self) -> str:
        """'allow', 'warn' or 'block'."""

    @property
    def category(self) -> str | None:
        """What kind of unsafe content, or None."""

    @property
    def score(self) -> float:
        """How confident the filter is, 0 to 1."""

    @property
    def role(self) -> str:
        """Whose text it judged: 'user' or 'assistant'."""


class Moderator(Protocol):
    """Anything that judges a text written by `role` ('user' or 'assistant')."""

    def moderate(self, text: str, role: str) -> Verdict: ...


def _moderate(moderator: Moderator | None, text: str, role: str) -> Verdict | None:
    if moderator is None:
        return None
    verdict = moderator.moderate(text, role)
    if getattr(verdict, "label", None) not in LABELS:
        raise ValueError(f"The moderator returned label {getattr(verdict, 'label', None)!r} for a "
                         f"{role} message; a verdict's label must be one of {LABELS}.")
    return verdict


def write_flag(path: str | os.PathLike, text: str, role: str, verdict: Verdict, kind: str,
               comment: str = "") -> dict:
    """Append a user's flag on the filter's `verdict` about `text` to the JSON Lines file `path`
    (`feedback.flag_record`, checked, flushed and fsynced); returns the record."""
    return append_flag(path, flag_record(text, role, verdict, kind, comment))


def flag_kinds(verdict: Verdict | None) -> tuple[str, ...]:
    """Which flags make sense on a verdict, as `moderation` defines them: a warned or blocked
    text was flagged, so it can only have been a false positive; an allowed one only a false
    negative; none without a verdict."""
    if verdict is None:
        return ()
    return ("false_negative",) if verdict.label == "allow" else ("false_positive",)


# --------------------------------------------------------------------------- sampling, streamed


def _sample_stream(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float,
                   generator: torch.Generator) -> Iterator[int]:
    """Token ids sampled after one prompt (1, T), one at a time, with a KV cache.

    The same computation as `generation.sample_tokens` on a batch of one (the same mask, positions,
    random draws and inverse-CDF sampling), so a seed gives the same tokens as `generate_replies`.
    """
    prompt_len = input_ids.shape[1]
    mask = torch.ones(1, prompt_len + max_new_tokens, dtype=torch.long, device=input_ids.device)
    positions = torch.arange(prompt_len, device=input_ids.device)[None]
    # Filled in place by each call; `cache=` needs transformers >= 5.24, as in `sample_tokens`.
    tokens, cache = input_ids, DynamicCache(config=model.config)
    for i in range(max_new_tokens):
        with torch.no_grad():
            step = model(input_ids=tokens, attention_mask=mask[:, : prompt_len + i], position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        logits = step.logits[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            u = torch.rand(1, 1, generator=generator, device=input_ids.device)
            nxt = torch.searchsorted(probs.cumsum(-1), u).squeeze(1).clamp_(max=logits.shape[-1] - 1)
        yield int(nxt)
        tokens, positions = nxt[:, None], positions[:, -1:] + 1


def stream_reply(model, tokenizer, messages: Sequence[Mapping[str, str]], max_new_tokens: int,
                 temperature: float, seed: int, every: int = 4) -> Iterator[str]:
    """Sample a reply to `messages` (ending on a user turn), yielding its text as it grows.

    A new text is yielded every `every` tokens, each one a prefix of the next; the last is the
    whole reply, equal to `generate_replies(model, tokenizer, [messages], max_new_tokens,
    temperature, batch_size=1, seed=seed)[0]`. A character whose bytes are split over tokens
    is held back until it is complete (byte-level BPE would otherwise show '\\ufffd' for a moment).
    """
    if every < 1:
        raise ValueError(f"every = {every}: update the text at least every 1 token")
    device = next(model.parameters()).device
    (prompt,) = encode_prompts(tokenizer, [[dict(m) for m in messages]], max_new_tokens)
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    tokens: list[int] = []
    shown: str | None = None
    try:
        ids = torch.tensor([prompt], dtype=torch.long, device=device)
        for token in _sample_stream(model, ids, max_new_tokens, temperature, generator):
            if token == tokenizer.eos_token_id:
                break
            tokens.append(token)
            if len(tokens) % every == 0:
                text = tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")
                if text and text != shown:
                    shown = text
                    yield text
    finally:
        model.train(was_training)
    final = tokenizer.decode(tokens, skip_special_tokens=True)
    if final != shown:
        yield final


# --------------------------------------------------------------------------- fitting the context


def prompt_length(tokenizer, messages: Sequence[Mapping[str, str]]) -> int:
    """How many tokens `messages` take in the chat template, assistant header included (as
    `generation.encode_prompts` encodes them)."""
    text = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, tokenize=False)
    # verbose=False: measuring a too-long conversation is the point, not a mistake to warn about.
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def context_budget(tokenizer, model, max_new_tokens: int) -> int:
    """Tokens a prompt may take so that it and a reply of `max_new_tokens` fit the model."""
    limit = min(tokenizer.model_max_length, 10**6)
    limit = min(limit, getattr(model.config, "max_position_embeddings", None) or limit)
    return limit - max_new_tokens


def fit_context(tokenizer, messages: Sequence[Mapping[str, str]], max_tokens: int) -> tuple[list[dict], int]:
    """`(messages that fit in max_tokens prompt tokens, how many were dropped)`.

    The oldest exchanges (a user turn and its reply) go first, so what is left still starts on a
    user turn; a leading system turn stays. If the last user turn alone is too long, it keeps
    its end (the latest words, usually the question) and loses its beginning; compare its
    content to tell. Raises ValueError when `messages` do not end on a user turn, or when
    `max_tokens` cannot hold even a short user turn.
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("fit_context: the messages must end on the user turn to reply to.")
    head = messages[:1] if messages[0]["role"] == "system" else []
    body, dropped = messages[len(head):], 0
    while len(body) > 1 and prompt_length(tokenizer, head + body) > max_tokens:
        n = 2 if body[1]["role"] == "assistant" else 1
        body, dropped = body[n:], dropped + n
    if prompt_length(tokenizer, head + body) <= max_tokens:
        return head + body, dropped
    text = body[-1]["content"]

    def fits(n: int) -> bool:
        return prompt_length(tokenizer, head + [{"role": "user", "content": text[len(text) - n:]}]) <= max_tokens

    lo, hi = 0, len(text)  # fits(lo), not fits(hi): find the longest end of the text that fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    # Do not start on a combining mark or a joiner cut off from the character it belongs to.
    kept = text[len(text) - lo:]
    while kept and (unicodedata.combining(kept[0]) or kept[0] in "\u200d\ufe0f"):
        kept = kept[1:]
    if not kept.strip():
        raise ValueError(f"fit_context: max_tokens = {max_tokens} cannot hold even a short user "
                         "turn in the chat template; allow longer prompts or fewer new tokens.")
    return head + [{"role": "user", "content": kept}], dropped


# --------------------------------------------------------------------------- the pure state


@dataclass(frozen=True)
class Message:
    """One message on screen, with what the filter said about it and what the user did to it."""

    role: str
    """'user' or 'assistant'."""
    text: str
    """What the user typed, or the model wrote (kept even when blocked, for flags)."""
    stage: str | None = None
    """The stage whose model wrote a reply (None for the user's turns)."""
    siblings: tuple[str, ...] = ()
    """Earlier versions of this reply, oldest first, each replaced by Regenerate."""
    verdict: Verdict | None = None
    """The moderator's verdict on `text` (None without a moderator)."""
    dropped: int = 0
    """How many of the oldest messages were left out of this reply's prompt (context full)."""
    cut: bool = False
    """Whether the user turn this reply answers was too long alone and lost its beginning."""
    seed: int | None = None
    """The seed the reply was sampled with."""
    rating: str | None = None
    """The user's latest thumbs on this reply: 'up', 'down' or None."""
    flagged: str | None = None
    """The user's latest flag on the filter's verdict, one of `FLAG_KINDS`, or None."""

    @property
    def blocked(self) -> bool:
        """The filter blocked this text: a user turn not sent, or a reply not shown."""
        return self.verdict is not None and self.verdict.label == "block"

    @property
    def warned(self) -> bool:
        """The filter let this text through with a warning."""
        return self.verdict is not None and self.verdict.label == "warn"


@dataclass(frozen=True)
class ChatState:
    """A conversation on screen: its messages, the reply being streamed, the samples drawn.

    Immutable like `widgets.DemoDraft`: every function returns a new state.
    """

    messages: tuple[Message, ...] = ()
    """Every message shown, blocked ones included."""
    pending: str | None = None
    """The text of the reply being sampled, while it streams."""
    earlier: tuple[str, ...] = ()
    """Versions of the reply about to be sampled that Regenerate replaced (its siblings-to-be)."""
    samples: int = 0
    """Replies sampled so far; reply n uses seed + n, so Regenerate gives a new sample."""

    @property
    def awaiting_reply(self) -> bool:
        """The last message is a user turn that was sent and has no reply yet."""
        return bool(self.messages) and self.messages[-1].role == "user" and not self.messages[-1].blocked


def _visible(messages: Sequence[Message]) -> list[dict]:
    """What the model may see: no blocked user turn, no blocked or empty reply nor the turn it
    answered (a conversation has no empty turns: `data.validate_conversation`)."""
    out: list[dict] = []
    for m in messages:
        if m.role == "user" and not m.blocked:
            out.append({"role": "user", "content": m.text})
        elif m.role == "assistant":
            if m.blocked or not m.text.strip():
                out.pop()  # the user turn it answered
            else:
                out.append({"role": "assistant", "content": m.text})
    return out


def reply_context(state: ChatState, index: int | None = None) -> list[dict]:
    """The conversation before the reply at `index` (default: the reply to sample next), as the
    model sees it: ends on the user turn the reply answers."""
    if index is None:
        if not state.awaiting_reply:
            raise ValueError("There is no message to reply to: type one and press Send.")
        index = len(state.messages)
    return _visible(state.messages[:index])


def add_user_message(state: ChatState, text: str, moderator: Moderator | None = None) -> ChatState:
    """Append the user's `text`, judged by `moderator`; blank text leaves the state as it is.

    A blocked message is shown (with why) but never sent. Raises ValueError while the last
    message still waits for its reply (Regenerate samples it).
    """
    if not isinstance(text, str) or not text.strip():
        return state
    if state.awaiting_reply:
        raise ValueError("Your last message has no reply yet: press Regenerate to sample one, or Clear.")
    text = text.strip()
    message = Message("user", text, verdict=_moderate(moderator, text, "user"))
    return dataclasses.replace(state, messages=(*state.messages, message), earlier=())


def regenerate(state: ChatState) -> ChatState:
    """Take the last reply away, to sample it again; it becomes a sibling of the next version.

    On a message still waiting for its reply (sampling failed), nothing is taken away.
    """
    if state.awaiting_reply:
        return state
    if not state.messages or state.messages[-1].role != "assistant":
        raise ValueError("There is no reply to regenerate: send a message first.")
    last = state.messages[-1]
    return dataclasses.replace(state, messages=state.messages[:-1], earlier=(*last.siblings, last.text))


def defuse_special_tokens(tokenizer, messages: Sequence[Mapping[str, str]]) -> list[dict]:
    """`messages` with every special token's text (e.g. '<|end|>') in a message broken by a
    word joiner (U+2060), so that typing it cannot end a turn or start a fake one: the chat
    template's own markers stay the only ones the model sees."""
    specials = [t for t in tokenizer.all_special_tokens if len(t) > 1]
    out = []
    for m in messages:
        content = m["content"]
        for token in specials:
            content = content.replace(token, token[0] + "\u2060" + token[1:])
        out.append({**m, "content": content})
    return out


def respond(state: ChatState, model, tokenizer, stage: str, *, max_new_tokens: int = 64,
            temperature: float = 0.7, seed: int = 0, moderator: Moderator | None = None,
            every: int = 4, max_tokens: int | None = None) -> Iterator[ChatState]:
    """Sample the reply to the last user turn, yielding states whose `pending` text grows.

    The prompt is `reply_context(state)` fitted into `max_tokens` (default: what the model holds
    beside `max_new_tokens`) by `fit_context`; the reply records how much was dropped. With a
    moderator, every streamed text is judged before it is shown: a block stops sampling and the
    reply (as far as it got) is kept blocked; otherwise the finished reply gets its own verdict.
    The last state yielded holds the reply and no pending text.
    """
    context = defuse_special_tokens(tokenizer, reply_context(state))
    budget = context_budget(tokenizer, model, max_new_tokens) if max_tokens is None else max_tokens
    prompt, dropped = fit_context(tokenizer, context, budget)
    reply_seed = seed + state.samples
    text, verdict = "", None
    # The last text streamed is the whole reply, so its verdict is the reply's. closing(): a
    # block stops the sampling loop at once (and puts the model back in its mode).
    with contextlib.closing(stream_reply(model, tokenizer, prompt, max_new_tokens, temperature,
                                         reply_seed, every)) as stream:
        for text in stream:
            verdict = _moderate(moderator, text, "assistant") if text else None
            if verdict is not None and verdict.label == "block":
                break
            yield dataclasses.replace(state, pending=text)
    message = Message("assistant", text, stage=stage, siblings=state.earlier, verdict=verdict,
                      dropped=dropped, cut=prompt[-1]["content"] != context[-1]["content"], seed=reply_seed)
    yield ChatState(messages=(*state.messages, message), samples=state.samples + 1)


def clear(state: ChatState) -> ChatState:
    """An empty conversation; the sample count goes on, so it does not replay the same replies."""
    return ChatState(samples=state.samples)


def _assistant(state: ChatState, index: int) -> Message:
    if not 0 <= index < len(state.messages) or state.messages[index].role != "assistant":
        raise ValueError(f"Message {index} is not a reply: only replies can be rated.")
    return state.messages[index]


def _set(state: ChatState, index: int, **changes: Any) -> ChatState:
    messages = list(state.messages)
    messages[index] = dataclasses.replace(messages[index], **changes)
    return dataclasses.replace(state, messages=tuple(messages))


def rate(state: ChatState, index: int, rating: str, path: str | os.PathLike, comment: str = "") -> ChatState:
    """Save a thumbs `rating` ('up'/'down') and `comment` on the reply at `index` to the feedback
    file `path` (appended and fsynced, see `feedback.append_feedback`) and show it as rated.

    Rating again appends a new record; the latest counts. A blocked reply cannot be rated (the
    user has not seen it): flag the filter instead.
    """
    message = _assistant(state, index)
    if message.blocked:
        raise ValueError("This reply was blocked, so there is nothing to rate: if the filter was "
                         "wrong, flag it as a false positive.")
    append_feedback(path, feedback_record(reply_context(state, index), message.text, message.stage or "?",
                                          rating, comment, message.siblings))
    return _set(state, index, rating=rating)


def flag(state: ChatState, index: int, kind: str, path: str | os.PathLike, comment: str = "") -> ChatState:
    """Save the user's flag `kind` on the filter's verdict about message `index` to `path` (see
    `write_flag`). Only a judged message can be flagged, with a kind `flag_kinds` allows."""
    if not 0 <= index < len(state.messages):
        raise ValueError(f"There is no message {index} to flag.")
    message = state.messages[index]
    allowed = flag_kinds(message.verdict)
    if kind not in allowed:
        if not allowed:
            raise ValueError("The filter did not judge this message, so there is nothing to flag.")
        raise ValueError(f"A {message.verdict.label!r} verdict can only be flagged as {' or '.join(allowed)}, "
                         f"not {kind!r}.")
    write_flag(path, message.text, message.role, message.verdict, kind, comment)
    return _set(state, index, flagged=kind)


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


class ChatWidget:
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

        self.send.on_click(lambda _: self._act(self._send, busy=True))
        self.regenerate.on_click(lambda _: self._act(self._regenerate, busy=True))
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

    def _act(self, handler: Callable[[], str], busy: bool = False) -> None:
        """Run a handler; show its message, or the error it raised, in the status line."""
        if busy:
            self.status.value = '<span style="color:#555">Sampling…</span>'
            for b in self.buttons:
                b.disabled = True
        message, self.error = run_action(handler)
        if self.error is None:
            self._render(message, "#1e7d32")
        else:
            self._render(html.escape(self.error), "#c62828")

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
