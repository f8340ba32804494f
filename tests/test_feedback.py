"""Feedback: records, appending and loading with errors that say where, comparisons made from
thumbs (which pairs, which feedback makes none), and a process killed while it saves."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from rlhf_course.feedback import (
    FEEDBACK_RANKER,
    FeedbackError,
    append_feedback,
    feedback_record,
    feedback_to_comparisons,
    load_feedback,
    save_feedback_comparisons,
)
from rlhf_course.jsonl import DataFormatError
from rlhf_course.rankings import load_comparisons, preference_rows, validate_comparison

Q1 = [{"role": "user", "content": "When was Ada Lovelace born?"}]
Q2 = [*Q1, {"role": "assistant", "content": "In 1815."}, {"role": "user", "content": "And Alan Turing?"}]


def fb(context, reply, rating, siblings=(), rid=None, comment="", stage="sft"):
    return feedback_record(context, reply, stage, rating, comment, siblings, record_id=rid)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "feedback" / "feedback.jsonl"


# --------------------------------------------------------------------------- records and files


def test_a_record_holds_everything_about_the_rating():
    r = feedback_record(Q2, "Alan Turing was born in 1912.", "ppo", "up", "  spot on  ",
                        ["He was born in 1913."], record_id="x1")
    assert r["context"] == Q2 and r["reply"] == "Alan Turing was born in 1912."
    assert (r["id"], r["stage"], r["rating"], r["comment"]) == ("x1", "ppo", "up", "spot on")
    assert r["siblings"] == ["He was born in 1913."] and r["rated_at"].endswith("+00:00")
    assert feedback_record(Q1, "a", "sft", "down")["id"] != feedback_record(Q1, "a", "sft", "down")["id"]


@pytest.mark.parametrize("change,message", [
    (dict(rating="meh"), r"rating must be one of \('up', 'down'\)"),
    (dict(context=Q2[:2]), r"context: .*ends on the user turn the reply answers"),
    (dict(context=[]), r"context: empty conversation"),
    (dict(stage=" "), r"stage must be a non-empty string"),
    (dict(siblings="earlier"), r"siblings must be a list of strings"),
    (dict(reply=None), r"reply must be a string"),
])
def test_bad_records_are_refused(path, change, message):
    good = fb(Q1, "In 1815.", "up", rid="ok")
    with pytest.raises(FeedbackError, match=message):
        append_feedback(path, {**good, **change})
    assert not path.exists()


def test_append_and_load_round_trip_one_line_per_record(path):
    records = [append_feedback(path, fb(Q1, "In 1815.", "up", rid="a")),
               append_feedback(path, fb(Q2, "", "down", rid="b", comment="empty reply"))]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert load_feedback(path) == records
    with pytest.raises(FeedbackError, match="lacks field"):
        append_feedback(path, {"reply": "x"})
    assert load_feedback(path) == records


def test_load_errors_name_the_file_and_line(path):
    append_feedback(path, fb(Q1, "In 1815.", "up", rid="a"))
    bad = {**fb(Q1, "In 1815.", "up", rid="b"), "rating": 5}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(bad) + "\n")
    with pytest.raises(DataFormatError, match=rf"{path}, line 2: rating must be one of"):
        load_feedback(path)
    path.write_text(path.read_text(encoding="utf-8").splitlines()[0] + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"line 2: not valid JSON"):
        load_feedback(path)


# --------------------------------------------------------------------------- comparisons


def test_a_liked_reply_ranks_above_its_disliked_sibling():
    records = [fb(Q1, "In 1816.", "down", rid="d"),
               fb(Q1, "Ada Lovelace was born in 1815.", "up", siblings=["In 1816."], rid="u")]
    (c,) = feedback_to_comparisons(records)
    assert validate_comparison(c) == c
    assert c["context"] == Q1 and c["replies"] == ["Ada Lovelace was born in 1815.", "In 1816."]
    assert (c["ranking"], c["ranker"], c["source"], c["id"]) == ([0, 1], FEEDBACK_RANKER, "feedback", "fb-u-d")
    assert (c["turn"], c["task"], c["split"]) == (1, None, None)
    (row,) = preference_rows([c])
    assert row["chosen"][0]["content"] == "Ada Lovelace was born in 1815."
    assert row["rejected"][0]["content"] == "In 1816."


def test_pairs_across_conversations_with_the_same_context():
    # Two conversations asked the same thing; ratings in different contexts never meet.
    records = [fb(Q1, "1815.", "up", rid="u1"), fb(Q1, "Born 1815 in London.", "up", rid="u2"),
               fb(Q1, "I do not know.", "down", rid="d1"),
               fb(Q2, "1912.", "up", rid="u3"), fb(Q2, "1815.", "down", rid="d3")]
    pairs = {(c["id"], tuple(c["replies"])) for c in feedback_to_comparisons(records)}
    assert pairs == {("fb-u1-d1", ("1815.", "I do not know.")),
                     ("fb-u2-d1", ("Born 1815 in London.", "I do not know.")),
                     ("fb-u3-d3", ("1912.", "1815."))}


def test_feedback_that_makes_no_pair():
    records = [
        fb(Q1, "only liked", "up", siblings=["an unrated sibling"], rid="a"),  # nothing disliked here
        fb(Q2, "only disliked", "down", rid="b"),  # nothing liked here
        fb(Q2, "  ", "up", rid="c", comment="blank reply"),  # an empty reply cannot be ranked
        fb([{"role": "user", "content": "Hi"}], "Hello!", "down", rid="d"),
        fb([{"role": "user", "content": "Hi"}], "Hello!  ", "up", rid="e"),  # same reply, re-rated
    ]
    assert feedback_to_comparisons(records) == []


def test_the_latest_rating_of_a_reply_counts():
    records = [fb(Q1, "A", "up", rid="1"), fb(Q1, "B", "down", rid="2"), fb(Q1, "A", "down", rid="3"),
               fb(Q1, "B", "up", rid="4")]
    (c,) = feedback_to_comparisons(records)
    assert c["replies"] == ["B", "A"] and c["id"] == "fb-4-3"


def test_save_feedback_comparisons_adds_only_new_pairs(tmp_path):
    human = tmp_path / "comparisons" / "human.jsonl"
    records = [fb(Q1, "good", "up", rid="u"), fb(Q1, "bad", "down", rid="d")]
    assert [c["id"] for c in save_feedback_comparisons(records, human)] == ["fb-u-d"]
    assert save_feedback_comparisons(records, human) == []
    records.append(fb(Q1, "worse", "down", rid="w"))
    assert [c["id"] for c in save_feedback_comparisons(records, human)] == ["fb-u-w"]
    assert [c["id"] for c in load_comparisons(human)] == ["fb-u-d", "fb-u-w"]


# --------------------------------------------------------------------------- killed mid-save

_WRITER = r"""
import sys
from rlhf_course.feedback import append_feedback, feedback_record

path = sys.argv[1]
context = [{"role": "user", "content": "When was Ada Lovelace born? 👍🏽"}]
print("ready", flush=True)
for n in range(100000):
    rid = f"kill-{n:06d}"
    append_feedback(path, feedback_record(context, f"reply {n}", "sft", "up" if n % 2 else "down",
                                          record_id=rid))
    print(rid, flush=True)
"""


def test_feedback_survives_a_killed_process(path, tmp_path):
    """SIGKILL a process mid-loop: every id it printed (after its save returned) is in the file."""
    stderr = open(tmp_path / "writer.err", "w+")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=stderr, text=True, env={**os.environ, "MPLBACKEND": "agg"})
    watchdog = threading.Timer(120, proc.kill)  # if the writer hangs, readline() still returns
    watchdog.start()
    printed = []
    try:
        assert proc.stdout.readline() == "ready\n"
        while len(printed) < 30:
            line = proc.stdout.readline()
            if not line:
                stderr.seek(0)
                pytest.fail(f"the writer stopped early (rc={proc.poll()}): {stderr.read()[-2000:]}")
            printed.append(line.strip())
        assert proc.poll() is None, "the writer finished before the kill: give it more records"
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()  # lines already in the pipe were printed before the kill
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
        stderr.close()
    printed += [x for x in rest.split("\n")[:-1] if x]
    assert proc.returncode == -signal.SIGKILL
    records = load_feedback(path)  # loads without error: no half-written line
    ids = [r["id"] for r in records]
    assert ids[: len(printed)] == printed and len(ids) == len(set(ids))
    assert len(ids) - len(printed) <= 1  # at most the one saved between its fsync and its print
    assert all(r["context"][0]["content"].endswith("👍🏽") for r in records)
