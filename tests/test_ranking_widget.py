"""The ranking widget: the pure session functions, the widget driven headlessly, bad input
through the comparisons API, and a process killed while it saves rankings."""

import dataclasses
import html
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from rlhf_course.ranking_widget import (
    GoldReveal,
    RankDraft,
    RankingWidget,
    click_reply,
    current_draft,
    gold_reveal,
    ordinal,
    progress,
    progress_text,
    render_context,
    reply_letter,
    reset_ranking,
    start_ranking,
    submit_ranking,
    undo_last_ranking,
)
from rlhf_course.rankings import (
    ComparisonError,
    RankItem,
    append_comparison,
    gold_ranking,
    load_comparisons,
)
from rlhf_course.world import World, gold_score


def make_items(n=3, k=3, with_task=True):
    """`n` items from training tasks, each with `k` distinct replies (ideal and flawed ones)."""
    items = []
    for j, task in enumerate(World(0).tasks("train", n)):
        replies = list(dict.fromkeys(task.replies().values()))[:k]
        assert len(replies) == k
        items.append(RankItem(context=task.prompt, replies=replies, task=task if with_task else None,
                              item_id=f"t-{j}"))
    return items


def clicked(session, *order):
    """The session with `order` clicked on its current item."""
    draft = current_draft(session)
    for i in order:
        draft = click_reply(draft, i)
    return dataclasses.replace(session, draft=draft)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "comparisons" / "human.jsonl"


# --------------------------------------------------------------------------- pure functions


def test_letters_and_ordinals():
    assert [reply_letter(i) for i in range(4)] == ["A", "B", "C", "D"]
    assert [ordinal(p) for p in range(1, 10)] == ["1st", "2nd", "3rd", "4th", "5th", "6th", "7th",
                                                  "8th", "9th"]


def test_clicks_place_replies_in_order():
    d = RankDraft(item=0, k=4)
    for i in (2, 0, 3):
        d = click_reply(d, i)
    assert d.order == (2, 0, 3)
    assert d.unplaced == [1] and not d.complete
    d = click_reply(d, 1)
    assert d.order == (2, 0, 3, 1) and d.complete and d.unplaced == []


def test_clicking_a_placed_reply_takes_it_out_and_later_ones_move_up():
    d = RankDraft(item=0, k=4, order=(2, 0, 3))
    d2 = click_reply(d, 0)
    assert d2.order == (2, 3)
    assert click_reply(d2, 0).order == (2, 3, 0)  # clicked again: it goes to the end
    assert d.order == (2, 0, 3)  # the original draft is untouched


@pytest.mark.parametrize("bad", [-1, 3, True, "1", 1.0])
def test_click_refuses_an_index_that_is_not_a_reply(bad):
    with pytest.raises(ValueError, match=r"no reply .*replies 0\.\.2"):
        click_reply(RankDraft(item=0, k=3), bad)


def test_reset_clears_the_order_and_keeps_the_item():
    d = RankDraft(item=2, k=3, order=(1, 0))
    assert reset_ranking(d) == RankDraft(item=2, k=3)


def test_drafts_and_sessions_are_frozen(path):
    s = start_ranking(make_items(1), path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.draft.order = (0,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.done = (0,)


def test_start_ranking_shows_the_first_item_and_sets_the_target(path):
    items = make_items(3)
    s = start_ranking(items, path)
    assert s.draft == RankDraft(item=0, k=3) and s.item is items[0]
    assert (s.ranked, s.target, s.reveal_gold) == (0, 3, False)
    assert start_ranking(items, path, target=10).target == 10
    with pytest.raises(ValueError, match="target must be a positive"):
        start_ranking(items, path, target=0)
    with pytest.raises(ValueError, match="No items to rank"):
        start_ranking([], path)
    assert not path.exists()  # starting a session writes nothing


def test_start_ranking_refuses_a_bad_item_before_anyone_ranks_it(path):
    items = make_items(2)
    items[1].replies = [items[1].replies[0], " " + items[1].replies[0], items[1].replies[2]]
    with pytest.raises(ComparisonError, match=r"item 1 \(id 't-1'\): .*replies 0 and 1 are the same text"):
        start_ranking(items, path)


def test_incomplete_submit_names_the_unplaced_replies_and_writes_nothing(path):
    items = make_items(2, k=4)
    s = clicked(start_ranking(items, path), 2, 0)
    with pytest.raises(ValueError, match=r"replies B, D have no place yet \(2 of 4 placed\)"):
        submit_ranking(s, path)
    s = clicked(s, 1)
    with pytest.raises(ValueError, match=r"reply D has no place yet \(3 of 4 placed\)"):
        submit_ranking(s, path)
    assert not path.exists()
    assert s.draft.order == (2, 0, 1)  # the refusal keeps what was clicked


def test_submit_writes_exactly_one_record_with_the_clicked_order(path):
    items = make_items(3)
    s = clicked(start_ranking(items, path), 2, 0, 1)
    s2 = submit_ranking(s, path, ranker="person:ada")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    (rec,) = load_comparisons(path)
    assert rec == json.loads(lines[0])
    assert rec["ranking"] == [2, 0, 1]
    assert rec["replies"] == items[0].replies and rec["context"] == items[0].context
    assert (rec["id"], rec["ranker"], rec["split"]) == ("t-0", "person:ada", "train")
    assert rec["task"] == items[0].task.to_record()
    # The session moved on only after the save; the old session is unchanged.
    assert s2.draft == RankDraft(item=1, k=3) and s2.done == (0,) and s2.ranked == 1
    assert s.done == () and s.draft.item == 0


def test_ranking_every_item_finishes_the_session(path):
    s = start_ranking(make_items(2), path)
    s = submit_ranking(clicked(s, 0, 1, 2), path)
    s = submit_ranking(clicked(s, 2, 1, 0), path)
    assert s.draft is None and s.item is None and s.done == (0, 1)
    assert [r["ranking"] for r in load_comparisons(path)] == [[0, 1, 2], [2, 1, 0]]
    with pytest.raises(ValueError, match="Every item is ranked"):
        submit_ranking(s, path)
    with pytest.raises(ValueError, match="Every item is ranked"):
        current_draft(s)


def test_undo_removes_the_last_record_and_returns_to_its_item(path):
    items = make_items(3)
    s = start_ranking(items, path)
    s = submit_ranking(clicked(s, 0, 1, 2), path)
    s = submit_ranking(clicked(s, 1, 2, 0), path)
    assert s.draft.item == 2 and s.ranked == 2
    s, removed = undo_last_ranking(s, path)
    assert removed["id"] == "t-1" and removed["ranking"] == [1, 2, 0]
    assert s.draft == RankDraft(item=1, k=3)  # back on that item, to rank it again
    assert s.done == (0,) and s.ranked == 1
    assert [r["id"] for r in load_comparisons(path)] == ["t-0"]
    s = submit_ranking(clicked(s, 2, 1, 0), path)
    assert s.draft.item == 2
    assert [r["ranking"] for r in load_comparisons(path)] == [[0, 1, 2], [2, 1, 0]]


def test_undo_with_nothing_saved_says_so(path):
    s = start_ranking(make_items(2), path)
    with pytest.raises(ValueError, match="Nothing to undo: human.jsonl holds no ranking yet"):
        undo_last_ranking(s, path)
    path.parent.mkdir(parents=True)
    path.write_text("")
    with pytest.raises(ValueError, match="Nothing to undo"):
        undo_last_ranking(s, path)


def test_undo_leaves_a_record_that_is_not_this_sessions_alone(path):
    other = make_items(3)[2]
    append_comparison(path, other.record([0, 1, 2], "annotators"))
    s = start_ranking(make_items(2), path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"Not undone: the last record in human.jsonl \(id 't-2'\)"):
        undo_last_ranking(s, path)
    assert path.read_bytes() == before


def test_progress_counts_saved_rankings_against_the_target(path):
    s = start_ranking(make_items(3), path, target=2)
    assert (progress(s), progress_text(s)) == (0.0, "ranked 0 / 2")
    s = submit_ranking(clicked(s, 0, 1, 2), path)
    assert (progress(s), progress_text(s)) == (0.5, "ranked 1 / 2")
    s = submit_ranking(clicked(s, 0, 1, 2), path)
    s = submit_ranking(clicked(s, 0, 1, 2), path)
    assert (progress(s), progress_text(s)) == (1.0, "ranked 3 / 2")  # going past the target is fine


def test_a_new_session_resumes_after_the_items_already_in_the_file(path):
    items = make_items(3)
    s = start_ranking(items, path)
    s = submit_ranking(clicked(s, 0, 1, 2), path)
    # Say the kernel died here: the same cell, re-run, starts on item 1 with item 0 counted.
    s = start_ranking(items, path)
    assert s.done == (0,) and s.draft.item == 1 and progress_text(s) == "ranked 1 / 3"
    # Ranked out of order (item 1 only), a session starts on item 0 and then skips item 1.
    path.unlink()
    append_comparison(path, items[1].record([0, 1, 2], "person"))
    s = start_ranking(items, path)
    assert s.draft.item == 0
    s = submit_ranking(clicked(s, 0, 1, 2), path)
    assert s.draft.item == 2


def test_gold_reveal_is_off_by_default(path):
    s = submit_ranking(clicked(start_ranking(make_items(2), path), 2, 0, 1), path)
    assert s.reveal is None


def test_gold_reveal_shows_the_gold_order_and_scores(path):
    items = make_items(2)
    s = start_ranking(items, path, reveal_gold=True)
    s = submit_ranking(clicked(s, 2, 0, 1), path)
    task, replies = items[0].task, items[0].replies
    scores = tuple(gold_score(task, r).total for r in replies)
    assert s.reveal == GoldReveal(replies=tuple(replies), learner=(2, 0, 1),
                                  gold=tuple(gold_ranking(task, replies)), scores=scores)
    # Task 0 of World(0): reply A (ideal) scores 1.0, B and C (wrong referent, wrong use) 0.0.
    assert scores == (1.0, 0.0, 0.0) and s.reveal.gold == (0, 1, 2)
    # Pairs C>A, C>B, A>B: the labeler cannot split C and B, agrees on A>B, disagrees on C>A.
    assert s.reveal.agreement == (1, 2)
    # Ranked like the labeler: it agrees on both pairs it can split (A>B, A>C).
    assert dataclasses.replace(s.reveal, learner=s.reveal.gold).agreement == (2, 2)


def test_gold_reveal_needs_a_task(path):
    items = make_items(2, with_task=False)
    assert gold_reveal(items[0], (0, 1, 2)) is None
    s = start_ranking(items, path, reveal_gold=True)
    assert submit_ranking(clicked(s, 0, 1, 2), path).reveal is None


def test_undo_clears_the_reveal(path):
    s = start_ranking(make_items(2), path, reveal_gold=True)
    s = submit_ranking(clicked(s, 0, 1, 2), path)
    assert s.reveal is not None
    s, _ = undo_last_ranking(s, path)
    assert s.reveal is None


def test_render_context_escapes_text():
    out = render_context([{"role": "user", "content": "<script>alert(1)</script> & co"}])
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp; co" in out


# --------------------------------------------------------------------------- the widget, headless


def test_widget_ranks_saves_and_moves_on(path):
    items = make_items(2, k=4)
    w = RankingWidget(items, path, ranker="person:ada")
    assert w.progress.value == "<b>ranked 0 / 2</b>"
    assert [b.description for b in w.reply_buttons] == ["A", "B", "C", "D"]
    assert all("rlhf-reply" in b._dom_classes for b in w.reply_buttons)
    assert "rlhf-submit" in w.submit._dom_classes and "rlhf-undo" in w.undo._dom_classes
    assert html.escape(items[0].context[0]["content"]) in w.context.value
    for i in (3, 1, 0, 2):
        w.reply_buttons[i].click()
    assert [b.description for b in w.reply_buttons] == ["A: 3rd", "B: 2nd", "C: 4th", "D: 1st"]
    w.reply_buttons[1].click()  # take B out: A and C move up
    assert [b.description for b in w.reply_buttons] == ["A: 2nd", "B", "C: 3rd", "D: 1st"]
    w.reply_buttons[1].click()
    w.submit.click()
    assert w.error is None and "Saved D &gt; A &gt; C &gt; B to human.jsonl" in w.message.value
    (rec,) = load_comparisons(path)
    assert rec["ranking"] == [3, 0, 2, 1] and rec["ranker"] == "person:ada"
    assert rec["context"] == items[0].context and rec["replies"] == items[0].replies
    assert w.progress.value == "<b>ranked 1 / 2</b>"
    assert html.escape(items[1].context[0]["content"]) in w.context.value  # next item on screen
    assert [b.description for b in w.reply_buttons] == ["A", "B", "C", "D"]
    assert w.reveal.value == ""  # reveal_gold is off by default


def test_widget_reports_an_incomplete_ranking(path):
    w = RankingWidget(make_items(2), path)
    w.reply_buttons[1].click()
    w.submit.click()
    assert "replies A, C have no place yet" in w.error
    assert "replies A, C have no place yet" in w.message.value
    assert not path.exists()
    w.reset.click()
    assert w.error is None and [b.description for b in w.reply_buttons] == ["A", "B", "C"]


def test_widget_undo(path):
    items = make_items(2)
    w = RankingWidget(items, path)
    assert w.undo.disabled
    w.undo.click()  # a click the browser would not send: the pure function still refuses it
    assert "Nothing to undo" in w.error
    for i in (1, 2, 0):
        w.reply_buttons[i].click()
    w.submit.click()
    assert not w.undo.disabled and path.read_text().count("\n") == 1
    w.undo.click()
    assert w.error is None and "Removed your last ranking (B &gt; C &gt; A)" in w.message.value
    assert load_comparisons(path) == []
    assert w.progress.value == "<b>ranked 0 / 2</b>"
    assert html.escape(items[0].context[0]["content"]) in w.context.value


def test_widget_reveals_gold_only_when_asked(path):
    items = make_items(2)
    w = RankingWidget(items, path, reveal_gold=True)
    for i in (2, 0, 1):
        w.reply_buttons[i].click()
    w.submit.click()
    assert "gold labeler" in w.reveal.value
    assert "agrees with 1 of the 2 pairs" in w.reveal.value
    assert "(1.00)" in w.reveal.value and "(0.00)" in w.reveal.value


def test_widget_disables_the_replies_when_items_run_out(path):
    w = RankingWidget(make_items(1), path)
    for b in w.reply_buttons:
        b.click()
    w.submit.click()
    assert "That was the last item" in w.message.value
    assert "No items left" in w.context.value
    assert w.reply_buttons and all(b.disabled for b in w.reply_buttons)
    assert w.submit.disabled and w.reset.disabled and not w.undo.disabled
    w.reply_buttons[0].click()  # forced anyway: refused with a message, nothing changes
    assert "Every item is ranked" in w.error
    # A widget built on a file that already holds every item starts finished.
    w2 = RankingWidget(make_items(1), path)
    assert "No items left" in w2.context.value and all(b.disabled for b in w2.reply_buttons)


def test_widget_escapes_the_conversation(path):
    items = make_items(1)
    items[0].context = [{"role": "user", "content": "Is <b>bold</b> & safe?"}]
    w = RankingWidget(items, path)
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; safe?" in w.context.value


# --------------------------------------------------------------------------- bad input, nothing lost


def _dup(rec):
    rec["replies"] = [rec["replies"][0], rec["replies"][0], rec["replies"][2]]


def _k(n):
    def set_k(rec):
        rec["replies"] = [f"reply number {i}" for i in range(n)]
        rec["ranking"] = list(range(n))
    return set_k


BAD = {
    "duplicate replies": (_dup, r"replies 0 and 1 are the same text"),
    "a tie": (lambda r: r.update(ranking=[0, [1, 2]]), r"holds a group \[1, 2\]: ties are not allowed"),
    "a repeated place": (lambda r: r.update(ranking=[1, 1, 0]), r"reply 1 appears 2 times .*ties are not allowed"),
    "not a permutation": (lambda r: r.update(ranking=[0, 1, 5]),
                          r"ranking \[0, 1, 5\] is not an order of all 3 replies .*missing \[2\]"),
    "K=1": (_k(1), r"1 replies: a ranking needs between 2 and 9"),
    "K=10": (_k(10), r"10 replies: a ranking needs between 2 and 9"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_rankings_raise_and_lose_nothing(path, case):
    items = make_items(3)
    kept = [append_comparison(path, items[j].record([0, 1, 2], "person")) for j in (0, 1)]
    before = path.read_bytes()
    mutate, message = BAD[case]
    bad = dict(kept[0], id="bad")
    mutate(bad)
    with pytest.raises(ComparisonError, match=message):
        append_comparison(path, bad)
    # The same input through the item, as the widget builds records, fails the same way.
    item = dataclasses.replace(items[2], replies=bad["replies"])
    with pytest.raises(ComparisonError, match=message):
        item.record(bad["ranking"], "person")
    assert path.read_bytes() == before
    assert load_comparisons(path) == kept


# --------------------------------------------------------------------------- killed mid-save

# The same code path as the widget's Submit: click, submit_ranking (append + fsync), then print.
_WRITER = r"""
import dataclasses, sys
from rlhf_course.comparisons import RankItem
from rlhf_course.ranking_widget import click_reply, start_ranking, submit_ranking
from rlhf_course.world import World

path = sys.argv[1]
task = World(0).tasks("train", 1)[0]
replies = list(task.replies().values())[:3]
items = [RankItem(context=task.prompt, replies=replies, task=task, item_id=f"kill-{n:05d}")
         for n in range(5000)]
s = start_ranking(items, path)
print("ready", flush=True)
while s.draft is not None:
    d = s.draft
    for i in (2, 0, 1):
        d = click_reply(d, i)
    s = submit_ranking(dataclasses.replace(s, draft=d), path)
    print(items[d.item].item_id, flush=True)
"""


def test_rankings_survive_a_killed_process(path, tmp_path):
    """SIGKILL a process mid-loop: every id it printed (after its save returned) is in the file."""
    stderr = open(tmp_path / "writer.err", "w+")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env={**os.environ, "MPLBACKEND": "agg"})
    # A watchdog instead of sleeps: if the writer hangs, kill it so readline() returns.
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    printed = []
    try:
        assert proc.stdout.readline() == "ready\n"
        while len(printed) < 20:
            line = proc.stdout.readline()
            if not line:
                stderr.seek(0)
                pytest.fail(f"the writer stopped early (rc={proc.poll()}): {stderr.read()[-2000:]}")
            printed.append(line.strip())
        assert proc.poll() is None, "the writer finished before the kill: give it more items"
        proc.send_signal(signal.SIGKILL)
        # Lines already in the pipe were printed before the kill, so they count too; a line cut
        # short (no newline) cannot happen for these tiny writes, but would not count.
        rest = proc.stdout.read()
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        stderr.close()
    printed += [x for x in rest.split("\n")[:-1] if x]
    assert proc.returncode == -signal.SIGKILL
    records = load_comparisons(path)  # loads without error: no half-written line
    ids = [r["id"] for r in records]
    assert set(printed) <= set(ids)
    assert len(ids) == len(set(ids)) and ids[: len(printed)] == printed
    assert all(r["ranking"] == [2, 0, 1] for r in records)
    assert len(ids) - len(printed) <= 1  # at most the one saved between its fsync and its print
