"""The demonstration writer: the pure draft functions, the widget driven headlessly, a real model."""

import json

import pytest
from _corpus import synthetic_corpus

from rlhf_course.config import BaseConfig
from rlhf_course.data import ConversationError, validate_conversation
from rlhf_course.demo_widget import (
    DemoDraft,
    DemonstrationWriter,
    SuggestionLog,
    accept_suggestion,
    add_assistant_turn,
    add_user_turn,
    discard_suggestion,
    edit_suggestion,
    finish,
    model_suggester,
    render_transcript,
    suggest,
    undo_last_turn,
)
from rlhf_course.generation import generate_replies
from rlhf_course.jsonl import read_jsonl
from rlhf_course.models import build_model, train_tokenizer


class FakeSuggester:
    """Numbered suggestions, and the messages each call saw."""

    def __init__(self):
        self.seen = []

    def __call__(self, messages):
        self.seen.append(messages)
        return f"  suggestion {len(self.seen)}\n"


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------- pure functions


def test_turns_alternate_starting_with_user():
    d = DemoDraft()
    assert d.next_role == "user"
    with pytest.raises(ValueError, match="user's turn"):
        add_assistant_turn(d, "hello")
    d = add_user_turn(d, "  Hi there\n")
    assert d.next_role == "assistant"
    assert d.messages == [{"role": "user", "content": "Hi there"}]
    with pytest.raises(ValueError, match="assistant's turn"):
        add_user_turn(d, "again")
    d = add_assistant_turn(d, "Hello!")
    assert d.next_role == "user"
    assert [m["role"] for m in d.messages] == ["user", "assistant"]
    assert d.log == ()  # no suggestion was shown, so none is logged


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_text_is_rejected(text):
    with pytest.raises(ValueError, match="empty"):
        add_user_turn(DemoDraft(), text)
    d = add_user_turn(DemoDraft(), "question")
    with pytest.raises(ValueError, match="empty"):
        add_assistant_turn(d, text)
    with pytest.raises(ValueError, match="empty"):
        suggest(d, lambda messages: text)


def test_drafts_are_immutable():
    d0 = DemoDraft()
    d1 = add_user_turn(d0, "q")
    d1.messages.append({"role": "user", "content": "sneaky"})
    assert d0.turns == () and d1.turns == (("user", "q"),)


def test_suggest_sees_the_conversation_and_accept_logs_it():
    fake = FakeSuggester()
    d = add_user_turn(DemoDraft(), "q1")
    with pytest.raises(ValueError, match="no suggestion to accept"):
        accept_suggestion(d)
    d = suggest(d, fake)
    assert fake.seen == [[{"role": "user", "content": "q1"}]]
    assert d.suggestion == "suggestion 1"  # stripped
    d = accept_suggestion(d)
    assert d.suggestion is None
    assert d.messages[-1] == {"role": "assistant", "content": "suggestion 1"}
    assert d.log == (SuggestionLog(1, "suggestion 1", "accepted"),)
    with pytest.raises(ValueError, match="user's turn"):
        suggest(d, fake)


def test_edit_discard_and_resuggest_are_logged():
    fake = FakeSuggester()
    d = suggest(add_user_turn(DemoDraft(), "q1"), fake)
    d = edit_suggestion(d, "suggestion 1, but better")
    d = suggest(add_user_turn(d, "q2"), fake)
    d = discard_suggestion(d)
    with pytest.raises(ValueError, match="no suggestion to discard"):
        discard_suggestion(d)
    d = suggest(d, fake)
    d = suggest(d, fake)  # asking again replaces (and discards) the pending one
    d = add_assistant_turn(d, " suggestion 4 ")  # sent unchanged: that is accepting it
    assert [(e.turn, e.suggested, e.action) for e in d.log] == [
        (1, "suggestion 1", "edited"),
        (3, "suggestion 2", "discarded"),
        (3, "suggestion 3", "discarded"),
        (3, "suggestion 4", "accepted"),
    ]
    assert d.messages[1]["content"] == "suggestion 1, but better"
    assert d.messages[3]["content"] == "suggestion 4"
    with pytest.raises(ValueError, match="no suggestion to edit"):
        edit_suggestion(add_user_turn(d, "q3"), "x")


def test_undo_rewinds_turns_pending_suggestion_and_log():
    fake = FakeSuggester()
    d = accept_suggestion(suggest(add_user_turn(DemoDraft(), "q1"), fake))
    d = suggest(add_user_turn(d, "q2"), fake)
    before_reply = d
    d = accept_suggestion(d)
    d = undo_last_turn(d)  # the accepted reply goes, and its log entry with it
    assert d.turns == before_reply.turns and d.suggestion is None
    assert [e.turn for e in d.log] == [1]
    d = undo_last_turn(suggest(d, fake))  # removes q2 and the suggestion pending for it
    assert d.messages == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "suggestion 1"}]
    assert d.suggestion is None and len(d.log) == 1
    d = undo_last_turn(undo_last_turn(d))
    assert d == DemoDraft()
    with pytest.raises(ValueError, match="Nothing to undo"):
        undo_last_turn(d)


def test_finish_appends_one_line_that_reads_back_and_validates(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"messages": [], "source": "earlier"}) + "\n", encoding="utf-8")
    fake = FakeSuggester()
    d = accept_suggestion(suggest(add_user_turn(DemoDraft(), "When was Ada born?"), fake))
    fresh = finish(d, path, {"trainer": "ada", "round": 1})
    assert fresh == DemoDraft()
    assert len(lines(path)) == 2
    record = list(read_jsonl(path))[-1]
    validate_conversation(record["messages"])
    assert record["messages"] == d.messages
    assert record["source"] == "human"
    assert record["suggestions"] == [{"turn": 1, "suggested": "suggestion 1", "action": "accepted"}]
    assert record["trainer"] == "ada" and record["round"] == 1
    assert record["written_at"].endswith("+00:00")


def test_unfinished_conversation_is_not_written(tmp_path):
    path = tmp_path / "demos.jsonl"
    existing = json.dumps({"messages": [{"role": "user", "content": "a"}], "note": "kept"}) + "\n"
    path.write_text(existing, encoding="utf-8")
    d = add_user_turn(add_assistant_turn(add_user_turn(DemoDraft(), "q1"), "a1"), "q2")
    with pytest.raises(ConversationError):
        finish(d, path)
    with pytest.raises(ConversationError):
        finish(DemoDraft(), path)
    assert path.read_text(encoding="utf-8") == existing
    with pytest.raises(ValueError, match="source"):
        finish(add_assistant_turn(d, "a2"), path, {"source": "model"})  # meta cannot fake the source
    assert path.read_text(encoding="utf-8") == existing
    with pytest.raises(ConversationError):
        finish(d, tmp_path / "never.jsonl")
    assert not (tmp_path / "never.jsonl").exists()


def test_transcript_escapes_html():
    d = suggest(add_user_turn(DemoDraft(), "<script>alert(1)</script>"), lambda m: "<b>bold</b> & more")
    page = render_transcript(d)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page


# --------------------------------------------------------------------------- the widget, headless


def test_widget_writes_a_two_exchange_conversation(tmp_path):
    path = tmp_path / "demos.jsonl"
    fake = FakeSuggester()
    w = DemonstrationWriter(path, fake, meta={"trainer": "tester"})
    assert w.widget.children and "0 conversation(s)" in w.status.value
    assert w.send_assistant.disabled and w.accept.disabled and w.finish.disabled

    w.text.value = "When was Ada Lovelace born?"
    w.send_user.click()
    assert w.text.value == "" and "assistant" in w.status.value
    w.suggest.click()
    assert w.text.value == "suggestion 1"  # pre-filled for editing
    assert "suggestion 1" in w.transcript.value
    w.accept.click()

    w.text.value = "And Alan Turing?"
    w.send_user.click()
    w.suggest.click()
    w.text.value = w.text.value + " He was born in 1912."
    w.send_assistant.click()
    assert "edited" in w.status.value
    w.finish.click()

    assert "1 conversation(s)" in w.status.value and w.draft == DemoDraft()
    (record,) = list(read_jsonl(path))
    validate_conversation(record["messages"])
    assert record["messages"] == [
        {"role": "user", "content": "When was Ada Lovelace born?"},
        {"role": "assistant", "content": "suggestion 1"},
        {"role": "user", "content": "And Alan Turing?"},
        {"role": "assistant", "content": "suggestion 2 He was born in 1912."},
    ]
    assert [(s["turn"], s["action"]) for s in record["suggestions"]] == [(1, "accepted"), (3, "edited")]
    assert record["source"] == "human" and record["trainer"] == "tester"

    # A second writer on the same file counts what is already there.
    assert "1 conversation(s)" in DemonstrationWriter(path, fake).status.value


def test_widget_shows_errors_instead_of_raising(tmp_path):
    path = tmp_path / "demos.jsonl"
    w = DemonstrationWriter(path, FakeSuggester())
    w.text.value = "   "
    w.send_user.click()
    assert "empty" in w.error and "empty" in w.status.value and w.draft == DemoDraft()
    w.text.value = "q"
    w.send_user.click()
    w.finish.click()  # ends on a user turn: refused, nothing written
    assert not path.exists() and w.draft.turns == (("user", "q"),)
    assert w.error.startswith("not saved to demos.jsonl: ends on a user turn")
    assert "ends on a user turn" in w.status.value
    w.discard.click()
    assert "no suggestion" in w.status.value

    def broken(messages):
        raise RuntimeError("model fell over")

    w.suggester = broken
    w.suggest.click()
    assert w.error == "RuntimeError: model fell over" and w.error in w.status.value
    assert not any(b.disabled for b in (w.undo, w.suggest))  # busy state cleared after failure
    w.text.value = "a"
    w.send_assistant.click()
    assert w.error is None


def test_widget_discard_and_undo(tmp_path):
    w = DemonstrationWriter(tmp_path / "d.jsonl", FakeSuggester())
    w.text.value = "q"
    w.send_user.click()
    w.suggest.click()
    w.discard.click()
    assert w.text.value == "" and w.draft.suggestion is None
    w.suggest.click()
    w.text.value = "my own start"
    w.discard.click()
    assert w.text.value == "my own start"  # an edit in progress survives a discard
    w.send_assistant.click()
    assert [e.action for e in w.draft.log] == ["discarded", "discarded"]
    w.undo.click()
    assert w.draft.turns == (("user", "q"),) and w.draft.log == ()


def test_meta_clash_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="messages"):
        DemonstrationWriter(tmp_path / "d.jsonl", FakeSuggester(), meta={"messages": []})


# --------------------------------------------------------------------------- a real tiny model


NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper"]


@pytest.fixture(scope="module")
def tiny():
    """A real tokenizer and an untrained 2-layer model: its babble is enough to test the path
    through `generate_replies`, and skipping pretraining keeps this under a second."""
    corpus = synthetic_corpus(300, chat_every=2, names=NAMES)
    tokenizer = train_tokenizer(corpus, vocab_size=300, model_max_length=128)
    cfg = BaseConfig.preset("cpu", d_model=64, n_layers=2, n_heads=2, d_ff=192, max_seq_len=128)
    return tokenizer, build_model(cfg, tokenizer)


def test_model_suggester_advances_its_seed(tiny):
    tokenizer, model = tiny
    conversation = [{"role": "user", "content": "When was Ada Lovelace born?"}]
    suggester = model_suggester(model, tokenizer, max_new_tokens=8, temperature=1.0, seed=5)
    got = [suggester(conversation) for _ in range(3)]
    expected = [generate_replies(model, tokenizer, [conversation], 8, 1.0, 1, seed=s)[0] for s in (5, 6, 7)]
    assert got == expected
    replay = model_suggester(model, tokenizer, max_new_tokens=8, temperature=1.0, seed=5)
    assert replay(conversation) == got[0]


def test_widget_with_a_real_model(tiny, tmp_path):
    tokenizer, model = tiny
    path = tmp_path / "demos.jsonl"
    w = DemonstrationWriter(path, model_suggester(model, tokenizer, max_new_tokens=8, seed=0))
    w.text.value = "When was Grace Hopper born?"
    w.send_user.click()
    w.suggest.click()
    suggestion = w.draft.suggestion
    assert w.error is None and suggestion, w.status.value
    w.accept.click()
    w.finish.click()
    (record,) = list(read_jsonl(path))
    assert record["messages"][1] == {"role": "assistant", "content": suggestion}
    assert record["suggestions"] == [{"turn": 1, "suggested": suggestion, "action": "accepted"}]
