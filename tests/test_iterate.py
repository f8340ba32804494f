"""Stage `iterate`: rounds of comparisons on the current policy, an extended reward model and PPO
from the current policy, on a tiny run (seconds per round)."""

import json

import pytest
import torch
from _runs import TINY_PPO, TINY_RM, tiny_run

from rlhf_course import iterate as it
from rlhf_course.config import IterateConfig, PPOConfig, RewardConfig


def _configs(steps=2):
    return (RewardConfig.preset("cpu", **{**TINY_RM, "prompts": 12}),
            PPOConfig.preset("cpu", **{**TINY_PPO, "steps": steps}))


def test_config_checks_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="rounds"):
        it.run_iterate(IterateConfig.preset("cpu", rounds=0), tmp_path)
    with pytest.raises(ValueError, match="start"):
        it.run_iterate(IterateConfig.preset("cpu", start="base"), tmp_path)


def test_stage_configs_take_the_round_fields_and_the_presets_rest():
    cfg = IterateConfig.preset("cpu", prompts=77, rm_epochs=0.5, rm_lr=1e-5, ppo_steps=3, seed=4)
    rcfg, pcfg = it.stage_configs(cfg)
    assert (rcfg.prompts, rcfg.epochs, rcfg.lr, rcfg.seed) == (77, 0.5, 1e-5, 4)
    assert (pcfg.steps, pcfg.seed) == (3, 4)
    assert rcfg.k == RewardConfig.preset("cpu").k and pcfg.init_kl_coef == PPOConfig.preset("cpu").init_kl_coef


def test_it_needs_the_stages_before_it(tmp_path):
    from rlhf_course.runs import MissingStageOutput

    with pytest.raises(MissingStageOutput, match="ppo"):
        it.run_iterate(IterateConfig.preset("cpu"), tmp_path)


@pytest.fixture(scope="module")
def iterated(tmp_path_factory):
    from rlhf_course.ppo import run_ppo

    run = tiny_run(tmp_path_factory.mktemp("iterate_run"))
    run_ppo(PPOConfig.preset("cpu", **TINY_PPO), run, progress=False)
    seen = []
    cfg = IterateConfig.preset("cpu", rounds=2, heldout_prompts=8)
    result = it.run_iterate(cfg, run, progress=False, on_round=seen.append, configs=_configs())
    return run, cfg, result, seen


@pytest.mark.slow
def test_rounds_report_their_metrics_and_save_their_models(iterated):
    from rlhf_course.models import load_checkpoint
    from rlhf_course.reward import load_reward_model_from

    run, _, result, seen = iterated
    assert [m["round"] for m in result["rounds"]] == [1, 2] and seen == result["rounds"]
    assert result["gold_first"] == result["rounds"][0]["gold"] and result["gold_last"] == result["rounds"][1]["gold"]
    json.dumps(result)  # the report can hold it
    for m in result["rounds"]:
        folder = it.round_dir(run, m["round"])
        assert json.loads((folder / it.ROUND).read_text()) == m
        assert 0 < m["comparisons"] <= 12 and 0 < m["fresh_rankings"] <= 8
        # the new rankings plus as many replayed old ones (there are more old ones than new)
        assert m["rm_train_rankings"] == 2 * m["comparisons"]
        for key in ("rm_accuracy_fresh_before", "rm_accuracy_fresh", "gold", "proxy_reward", "kl_to_sft",
                    "reply_words", "win_rate_vs_sft", "win_rate_vs_previous"):
            assert m[key] is None or isinstance(m[key], float), key
        assert 0.0 <= m["win_rate_vs_previous"] <= 1.0
        load_reward_model_from(folder / "rm")
    # The extended reward model moved away from stage rm's.
    first = load_reward_model_from(it.round_dir(run, 1) / "rm")
    original = load_reward_model_from(run / "rm")
    assert any(not torch.equal(a, b) for a, b in zip(first.model.parameters(), original.model.parameters(), strict=True))
    # The last round's policy and held-out replies are the stage's.
    load_checkpoint(run / "iterate" / "model")
    assert (run / "iterate" / "samples.jsonl").read_text() == \
        (it.round_dir(run, 2) / "ppo" / "samples.jsonl").read_text()


@pytest.mark.slow
def test_each_round_starts_from_the_policy_before_it(iterated):
    run, *_ = iterated
    for n in (1, 2):
        history = [json.loads(x) for x in (it.round_dir(run, n) / "ppo" / "history.jsonl").read_text().splitlines()]
        # Started from SFT, the first rollout's KL to SFT would be exactly 0 (see test_ppo).
        assert history[0]["kl"] != 0.0, f"round {n} started from the SFT policy"


@pytest.mark.slow
def test_a_rerun_keeps_finished_rounds(iterated):
    run, cfg, result, _ = iterated
    stamp = (it.round_dir(run, 1) / it.ROUND).stat().st_mtime_ns
    again = it.run_iterate(cfg, run, progress=False, configs=_configs())
    assert again["rounds"] == result["rounds"]
    assert (it.round_dir(run, 1) / it.ROUND).stat().st_mtime_ns == stamp
