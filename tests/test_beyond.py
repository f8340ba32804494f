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
