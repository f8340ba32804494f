"""The chat's logic, UI-free: what `chat.ChatWidget` runs, driven headlessly by the tests.

It holds the moderator interface (`Verdict`, `Moderator`, flags on the filter's verdicts), the
streamed sampling (`stream_reply`, a KV-cache loop that yields the reply's growing text and ends
on exactly what `generate_replies` returns for the same seed), fitting a conversation into the
model's context (`fit_context`), and the frozen `ChatState` with the pure functions that send,
reply, regenerate, clear, rate and flag. See `chat` for what the chat simplifies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from rlhf_course.feedback import (
    LABELS,
    append_feedback,
    append_flag,
    feedback_record,
    flag_record,
)
from rlhf_course.generation import encode_prompts

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

    Immutable like `demo_widget.DemoDraft`: every function returns a new state.
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
