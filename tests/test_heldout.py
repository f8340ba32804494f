"""The main held-out set and the generalisation probe: what every stage's figures are measured
on, and the check that no stage trained on a main held-out prompt."""

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from rlhf_course.data import SimulatedTrainers, instruction_set
from rlhf_course.heldout import excluded_count, heldout_tasks, probe_tasks, trained_prompts
from rlhf_course.world import FAMILIES, World, bare_request, prompt_key

CFG = SimpleNamespace(eval_prompts=480, seed=0)


@pytest.fixture(scope="module")
def world():
    return World(0)


def test_main_set_is_480_distinct_reserved_prompts_of_every_family_and_seeded(world):
    tasks = heldout_tasks(world, CFG)
    assert len(tasks) == 480 and len({prompt_key(t.messages) for t in tasks}) == 480
    assert Counter(t.family for t in tasks) == {f: 48 for f in FAMILIES}
    assert all(t.split == "main" and world.reserved(t.messages) for t in tasks)
    # Unseen combinations of seen parts: phrasings and entities of the training split.
    assert all(world.template_split(t.template) == "train" for t in tasks)
    assert tasks == heldout_tasks(World(0), CFG) != heldout_tasks(world, SimpleNamespace(eval_prompts=480, seed=1))


def test_probe_is_the_unseen_phrasings_split(world):
    probe = probe_tasks(world, CFG)
    assert len(probe) == 480 and all(world.template_split(t.template) == "heldout" for t in probe)


def test_no_training_draw_yields_a_reserved_prompt(world):
    # Stage by stage, the ways training prompts are drawn: tasks (comparisons, PPO, iterate),
    # the pretraining corpus's threads, the simulated trainers and the instruction set.
    assert not any(world.reserved(t.messages) for t in world.tasks("train", 5000, seed=3))
    demos = SimulatedTrainers().write(world, 800, seed=0)
    assert not any(world.reserved(r["messages"][:-1]) for r in demos)
    # Every fifth instruction is a 'describe the invention' request, never a world task.
    instructions = [r for k, r in enumerate(instruction_set(world, 500, seed=0)) if k % 5 != 4]
    assert not any(world.reserved([{"role": "user", "content": r["prompt"]}]) for r in instructions)
    # Without the reservation about 5% of draws would be reserved: the check is not vacuous.
    raw = [world._build("fact", "train", random.Random(i)) for i in range(2000)]
    assert 0.02 < sum(world.reserved(t.messages) for t in raw) / len(raw) < 0.09


def test_fresh_training_draws_rarely_repeat_a_training_prompt(world):
    # ~500 training prompts per family (as SFT, comparisons and PPO use), then 4,000 fresh draws.
    used = {prompt_key(t.messages) for t in world.tasks("train", 5000, seed=11)}
    fresh = world.tasks("train", 4000, seed=12)
    repeats = sum(prompt_key(t.messages) in used for t in fresh) / len(fresh)
    assert repeats < 0.10, repeats


def test_a_main_prompt_found_in_the_runs_training_files_is_excluded_and_replaced(world, tmp_path):
    first = heldout_tasks(world, CFG)
    assert trained_prompts(tmp_path) == set() and excluded_count(world, CFG, tmp_path) == 0
    typed = first[7]  # a person wrote a demonstration for a main held-out prompt by hand
    (tmp_path / "demos").mkdir()
    (tmp_path / "demos" / "sft_data.jsonl").write_text(json.dumps(
        {"messages": [*typed.prompt, {"role": "assistant", "content": typed.ideal}]}) + "\n")
    assert prompt_key(typed.messages) in trained_prompts(tmp_path)
    assert excluded_count(world, CFG, tmp_path) == 1
    after = heldout_tasks(world, CFG, tmp_path)
    assert len(after) == 480 and typed not in after
    assert prompt_key(typed.messages) not in {prompt_key(t.messages) for t in after}


def test_openers_and_closers_wrap_the_request_and_come_off(world):
    tasks = world.tasks("train", 300, seed=4, families=["harmful"])
    assert len({t.messages[0]["content"].split()[0] for t in tasks}) > 8  # openers vary
    bare = {bare_request(t.messages[0]["content"]) for t in tasks}
    assert all(not b.startswith(("Hi!", "Hello.", "Quick question.")) and not b.endswith("Thanks!") for b in bare)


def test_rankings_of_main_prompts_made_only_to_measure_do_not_count_as_training(world, tmp_path):
    from rlhf_course.rankings import COMPARISONS, HELDOUT_COMPARISONS

    main = heldout_tasks(world, CFG)
    (tmp_path / "comparisons").mkdir()
    (tmp_path / "comparisons" / HELDOUT_COMPARISONS).write_text(
        "".join(json.dumps({"context": t.prompt}) + "\n" for t in main[:20]))
    train = world.tasks("train", 5, seed=1)
    (tmp_path / "comparisons" / COMPARISONS).write_text(
        "".join(json.dumps({"context": t.prompt}) + "\n" for t in train))
    assert trained_prompts(tmp_path) == {prompt_key(t.messages) for t in train}
    assert heldout_tasks(world, CFG, tmp_path) == main
