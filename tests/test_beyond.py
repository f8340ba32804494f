"""Stage `beyond`: PPO, DPO, RLOO and GRPO from one SFT checkpoint, measured and judged alike
(a tiny run: seconds per method)."""

import json

import pytest
from _runs import tiny_run

from rlhf_course import beyond
from rlhf_course.config import BeyondConfig

TINY = {"steps": 2, "batch_size": 8, "num_generations": 2, "eval_prompts": 200, "max_length": 128,
        "max_new_tokens": 8}


def test_unknown_methods_are_named(tmp_path):
    with pytest.raises(ValueError, match="sarsa"):
        beyond.run_beyond(BeyondConfig.preset("cpu", methods="ppo,sarsa"), tmp_path)
    with pytest.raises(ValueError, match="sarsa"):
        beyond.train_method("sarsa", BeyondConfig.preset("cpu"), tmp_path)


def test_every_method_shares_ppo_budget_and_objective():
    cfg = BeyondConfig.preset("cpu", steps=7, batch_size=8, kl_beta=0.3, rl_lr=2e-5, max_new_tokens=16)
    pcfg = beyond.ppo_config(cfg)
    assert (pcfg.steps, pcfg.batch_size, pcfg.init_kl_coef, pcfg.lr, pcfg.max_new_tokens) == (7, 8, 0.3, 2e-5, 16)
    assert pcfg.batch_size % pcfg.minibatch_size == 0
    assert cfg.method_list() == ["ppo", "dpo", "rloo", "grpo"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    run = tiny_run(tmp_path_factory.mktemp("beyond_run"))
    seen = []
    result = beyond.run_beyond(BeyondConfig.preset("cpu", **TINY), run, progress=False, on_method=seen.append)
    return run, result, seen


@pytest.mark.slow
def test_each_method_trains_in_its_own_process_and_is_judged_like_ppo(compared):
    from rlhf_course.models import load_checkpoint

    run, result, seen = compared
    json.dumps(result)
    assert list(result["methods"]) == ["ppo", "dpo", "rloo", "grpo"] and len(seen) == 4
    sft_golds = {row["sft_gold"] for row in result["methods"].values()}
    assert len(sft_golds) == 1  # one judge, one set of held-out prompts, one SFT baseline
    for method, row in result["methods"].items():
        assert row["train_seconds"] > 0 and row["peak_memory_mb"] > 100, method
        assert 0.0 <= row["gold"] <= 1.0 and 0.0 <= row["win_rate_vs_sft"] <= 1.0, method
        assert json.loads((run / "beyond" / method / beyond.TRAINED).read_text())["method"] == method
        load_checkpoint(run / "beyond" / method / "model")
    assert 0 < result["methods"]["dpo"]["pairs"] <= BeyondConfig.preset("cpu").dpo_pairs
    assert result["methods"]["rloo"]["num_generations"] == 2 and result["methods"]["rloo"]["prompts"] == 8


@pytest.mark.slow
def test_a_rerun_evaluates_without_training_again(compared):
    run, result, _ = compared
    stamp = (run / "beyond" / "dpo" / beyond.TRAINED).stat().st_mtime_ns
    again = beyond.run_beyond(BeyondConfig.preset("cpu", **TINY, methods="dpo"), run, progress=False)
    assert (run / "beyond" / "dpo" / beyond.TRAINED).stat().st_mtime_ns == stamp
    assert again["methods"]["dpo"]["gold"] == result["methods"]["dpo"]["gold"]


def _fake_child(script: str):
    import sys

    return lambda method, cfg, run_dir: [sys.executable, "-c", script, str(run_dir)]


def test_a_methods_steps_reach_the_progress_bar_as_they_come(tmp_path, monkeypatch):
    seen = []

    class Bar:  # records what the parent shows, in order
        def __init__(self, **kwargs):
            self.n, self.total = 0, None

        def update(self, k):
            self.n += k
            seen.append((self.n, self.total))

        def close(self):
            pass

    script = (
        "import json, pathlib, sys\n"
        "print('loading the model...', flush=True)\n"
        "for s in (1, 2, 3): print('rlhf-course-progress ' + json.dumps({'step': s, 'total': 3}), flush=True)\n"
        "out = pathlib.Path(sys.argv[1]) / 'beyond' / 'dpo'; out.mkdir(parents=True)\n"
        "(out / 'trained.json').write_text(json.dumps({'method': 'dpo', 'train_seconds': 1.0}))\n"
    )
    monkeypatch.setattr(beyond, "_child_command", _fake_child(script))
    monkeypatch.setattr(beyond, "tqdm", Bar)
    record = beyond._run_child("dpo", BeyondConfig.preset("cpu"), tmp_path)
    assert record == {"method": "dpo", "train_seconds": 1.0}
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_a_failed_method_stops_with_the_end_of_its_output(tmp_path, monkeypatch):
    from rlhf_course.runs import StageStopped

    script = "import sys\nprint('step one fine', flush=True)\nsys.exit('out of memory in step two')\n"
    monkeypatch.setattr(beyond, "_child_command", _fake_child(script))
    with pytest.raises(StageStopped, match=r"(?s)training grpo failed \(exit 1\).*step one fine.*out of memory"):
        beyond._run_child("grpo", BeyondConfig.preset("cpu"), tmp_path, progress=False)


def test_the_child_prints_a_line_per_trl_step(capsys):
    from types import SimpleNamespace

    callback = beyond._progress_callback()
    callback.on_step_end(None, SimpleNamespace(global_step=4, max_steps=10), None)
    line = capsys.readouterr().out
    assert line.startswith(beyond.PROGRESS) and json.loads(line[len(beyond.PROGRESS):]) == {"step": 4, "total": 10}
