"""PPO: every pure function against numbers worked out by hand, the log-prob modules against
direct computations, and the stage on a tiny run (determinism, resume, stops, two processes)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from _runs import TINY_PPO, copy_run, ppo_history, tiny_run

from rlhf_course import ppo, ppo_train
from rlhf_course.ppo_core import (
    KLController,
    PolicyLogprobs,
    ValueModel,
    gae,
    kl_penalised_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    missing_eos_penalty,
    pack,
    policy_loss,
    response_mask,
    value_loss,
)

T = torch.tensor


# --------------------------------------------------------------------------- pure functions


def test_masked_mean_counts_only_real_tokens():
    x = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = T([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_whiten_by_hand():
    x, mask = T([[1.0, 2.0, 3.0, 50.0]]), T([[1, 1, 1, 0]])
    # mean 2, unbiased variance (1 + 0 + 1) / 2 = 1; the padded 50 neither counts nor survives
    assert masked_whiten(x, mask).tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert masked_whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-6)


def test_response_mask_keeps_the_end_token_and_nothing_after_it():
    tokens = T([[5, 6, 2, 0], [5, 5, 5, 5], [2, 0, 2, 0]])
    assert response_mask(tokens, eos_token_id=2).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_kl_penalised_rewards_by_hand():
    logprobs = T([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = T([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = T([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalised_rewards(logprobs, ref, T([2.0, -1.0]), mask, kl_coef=0.1)
    assert torch.allclose(kl, T([[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]]))
    # -0.1 * kl per token; the score lands on the last real token (index 2, then index 1)
    assert torch.allclose(rewards, T([[-0.05, 0.0, 2.1], [-0.1, -1.0, 0.0]]))


def test_missing_eos_penalty_hits_only_unended_replies():
    assert missing_eos_penalty(T([1.0, 2.0]), T([True, False]), 1.0).tolist() == [1.0, 1.0]


def test_gae_by_hand():
    values = T([[0.5, 0.6, 0.7]])
    adv, ret = gae(T([[0.0, 0.0, 1.0]]), values, T([[1, 1, 1]]), gamma=1.0, lam=0.5)
    # deltas 0.1, 0.1, 0.3; A2 = 0.3, A1 = 0.1 + 0.5 * 0.3, A0 = 0.1 + 0.5 * 0.25
    assert adv.tolist()[0] == pytest.approx([0.225, 0.25, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.725, 0.85, 1.0])
    # Padding after the last token: its reward and value are ignored, the episode ends there.
    adv, ret = gae(T([[0.0, 1.0, 9.0]]), values, T([[1, 1, 0]]), gamma=1.0, lam=0.5)
    assert adv.tolist()[0] == pytest.approx([0.3, 0.4, 0.0])
    assert ret.tolist()[0] == pytest.approx([0.8, 1.0, 0.0])
    # With lam = 1 the return is the discounted sum of rewards, whatever the values.
    adv, ret = gae(T([[0.0, 1.0]]), T([[0.2, 0.4]]), T([[1, 1]]), gamma=0.9, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.7, 0.6])
    assert ret.tolist()[0] == pytest.approx([0.9, 1.0])


def test_clipped_policy_loss_by_hand():
    ratios = [1.5, 0.5, 1.0, 0.5]
    new = T([[math.log(r) for r in ratios]])
    loss, stats = policy_loss(new, torch.zeros(1, 4), T([[1.0, 1.0, -2.0, -1.0]]), torch.ones(1, 4), 0.2)
    # per token max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 2.0, 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.0 + 0.8) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    sq = [math.log(r) ** 2 for r in ratios]
    assert stats["approx_kl"].item() == pytest.approx(0.5 * sum(sq) / 4)


def test_clipped_value_loss_by_hand():
    loss, frac = value_loss(T([[1.0, 0.0]]), T([[0.5, 0.5]]), T([[2.0, 0.0]]), torch.ones(1, 2), 0.2)
    # clipped values 0.7 and 0.3; errors max(1, 1.69) and max(0, 0.09)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09) / 2)
    assert frac.item() == 1.0
    loss, frac = value_loss(T([[0.6]]), T([[0.5]]), T([[0.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.18) and frac.item() == 0.0


def test_adaptive_kl_controller_by_hand():
    ctl = KLController(0.1, target=6.0, horizon=10_000)
    assert ctl.update(kl=9.0, n=1000) == pytest.approx(0.102)  # error clipped to +0.2
    assert ctl.update(kl=5.4, n=1000) == pytest.approx(0.102 * 0.99)  # error -0.1
    assert KLController(0.1).update(kl=100.0, n=1000) == 0.1  # fixed coefficient


def test_logprobs_and_entropy_at_a_temperature_by_hand():
    logits = T([[[0.0, math.log(3.0)]]])
    logp, ent = logprobs_from_logits(logits, T([[1]]), 1.0)
    assert logp.item() == pytest.approx(math.log(0.75))
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    logp, _ = logprobs_from_logits(logits, T([[1]]), 2.0)
    assert logp.item() == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))))


def test_pack_left_pads_prompts_and_right_pads_replies():
    ids, attn, mask = pack([[1, 2], [3]], [[4, 5, 2], [6]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 4, 5, 2], [0, 3, 6, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# --------------------------------------------------------------------------- the modules


@pytest.fixture(scope="module")
def tiny_models():
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, num_labels=1)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), LlamaForSequenceClassification(cfg).eval()


def test_chunked_logprobs_and_their_gradients_equal_the_unchunked(tiny_models):
    lm, _ = tiny_models
    ids, attn, mask = pack([[5, 6, 7], [8]], [[9, 10, 11, 12, 13], [14, 15]], pad_token_id=0)
    full = PolicyLogprobs(lm, temperature=0.7)
    chunked = PolicyLogprobs(lm, temperature=0.7, chunk=2)
    grads = []
    for module in (full, chunked):
        lm.zero_grad()
        logp, ent = module(ids, attn, mask.shape[1])
        (logp * mask).sum().backward()
        grads.append(lm.model.layers[0].self_attn.q_proj.weight.grad.clone())
        if module is full:
            want = (logp.detach(), ent.detach())
    assert torch.allclose(logp.detach(), want[0], atol=1e-5)
    assert torch.allclose(ent.detach(), want[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_policy_logprobs_match_a_direct_computation_despite_left_padding(tiny_models):
    lm, _ = tiny_models
    prompt, reply = [8], [14, 15, 16]
    ids, attn, _ = pack([[5, 6, 7], prompt], [[9, 10, 11], reply], pad_token_id=0)
    logp, _ = PolicyLogprobs(lm, temperature=0.5)(ids, attn, 3)
    alone = torch.tensor([prompt + reply])
    direct = torch.log_softmax(lm(alone).logits[0, :-1] / 0.5, -1)
    want = [direct[i, tok].item() for i, tok in enumerate(reply)]
    assert logp[1].tolist() == pytest.approx(want, abs=1e-5)


def test_value_model_reads_every_reply_position_with_the_reward_head(tiny_models):
    _, rm = tiny_models
    ids, attn, mask = pack([[5, 6, 7], [8]], [[9, 10, 11], [14]], pad_token_id=0)
    values = ValueModel(rm)(ids, attn, mask.shape[1])
    assert values.shape == (2, 3)
    # the value of the first reply token is the head read just after the prompt
    direct = rm.score(rm.model(torch.tensor([[5, 6, 7]])).last_hidden_state[:, -1]).item()
    assert values[0, 0].item() == pytest.approx(direct, abs=1e-5)


def test_config_checks_name_the_field():
    from rlhf_course.config import PPOConfig

    with pytest.raises(ValueError, match="minibatch_size"):
        ppo._check_config(PPOConfig.preset("cpu", batch_size=10, minibatch_size=4))
    with pytest.raises(ValueError, match="eval_prompts"):
        ppo._check_config(PPOConfig.preset("cpu", eval_prompts=50))
    with pytest.raises(ValueError, match="rollout_temperature"):
        ppo._check_config(PPOConfig.preset("cpu", rollout_temperature=0.0))


def test_the_stage_needs_sft_and_rm(tmp_path):
    from rlhf_course.config import PPOConfig
    from rlhf_course.runs import MissingStageOutput

    with pytest.raises(MissingStageOutput, match="--stages base,demos,sft\n"):
        ppo.run_ppo(PPOConfig.preset("cpu"), tmp_path, progress=False)
    (tmp_path / "sft" / "model").mkdir(parents=True)
    with pytest.raises(MissingStageOutput, match="produced by stage 'rm'"):
        ppo.run_ppo(PPOConfig.preset("cpu"), tmp_path, progress=False)


# --------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """A tiny run folder with base (standing in for SFT), demonstrations, comparisons and RM."""
    return tiny_run(tmp_path_factory.mktemp("ppo_run"))


TINY = TINY_PPO


@pytest.mark.slow
def test_ppo_stage_reports_saves_and_repeats_itself_exactly(ppo_run, tmp_path):
    from rlhf_course.config import PPOConfig
    from rlhf_course.models import load_checkpoint

    cfg = PPOConfig.preset("cpu", **TINY, ptx_coef=0.5)
    seen = []
    a = copy_run(ppo_run, tmp_path / "a")
    result = ppo.run_ppo(cfg, a, live_plot=lambda step, m: seen.append((step, m)), progress=False)
    for key in ("gold", "proxy_reward", "kl_to_sft", "win_rate_vs_sft", "sft_gold", "gold_by_family",
                "sft_gold_by_family", "seconds"):
        assert key in result, key
    assert 0.0 <= result["win_rate_vs_sft"] <= 1.0 and result["eval_prompts"] == 200
    assert set(result["gold_by_family"]) == set(result["sft_gold_by_family"])
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert all(math.isfinite(m["ptx_loss"]) for _, m in seen)
    history = ppo_history(a)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert history[0]["kl"] == 0.0  # the first rollout comes from the SFT policy itself
    assert history[-1]["kl"] != 0.0  # ... and the updates moved the policy
    assert not (a / "ppo" / ppo_train.CHECKPOINT).exists()  # a finished run leaves no checkpoint
    load_checkpoint(a / "ppo" / "model")
    # The same seed gives the same curves.
    b = copy_run(ppo_run, tmp_path / "b")
    ppo.run_ppo(cfg, b, progress=False)
    assert ppo_history(b) == history


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint_with_the_same_curves(ppo_run, tmp_path):
    from rlhf_course.config import PPOConfig

    cfg = PPOConfig.preset("cpu", **TINY)
    whole = copy_run(ppo_run, tmp_path / "whole")
    ppo.run_ppo(cfg, whole, progress=False)

    cut = copy_run(ppo_run, tmp_path / "cut")

    def interrupt(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ppo.run_ppo(cfg, cut, live_plot=interrupt, progress=False)
    assert (cut / "ppo" / ppo_train.CHECKPOINT / "state.pt").exists()  # saved after step 2
    result = ppo.run_ppo(cfg, cut, progress=False)
    assert result["resumed_from_step"] == 2
    assert ppo_history(cut) == ppo_history(whole)


@pytest.mark.slow
def test_a_non_finite_loss_stops_with_advice_and_keeps_the_checkpoint(ppo_run, tmp_path, monkeypatch):
    from rlhf_course.config import PPOConfig

    run = copy_run(ppo_run, tmp_path / "nan")
    real = ppo_train.policy_loss
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        loss, stats = real(*args, **kwargs)
        # 2 epochs x 2 minibatches per step: the 9th call is in step 3, after the checkpoint
        return (loss * float("nan"), stats) if len(calls) >= 9 else (loss, stats)

    monkeypatch.setattr(ppo_train, "policy_loss", broken)
    with pytest.raises(ppo_train.PPOStopped, match=r"step 3: the policy loss is nan.*after step 2.*lower lr"):
        ppo.run_ppo(PPOConfig.preset("cpu", **TINY), run, progress=False)
    state = torch.load(run / "ppo" / ppo_train.CHECKPOINT / "state.pt", weights_only=False)
    assert state["step"] == 2


@pytest.mark.slow
def test_kl_past_the_ceiling_stops_training(ppo_run, tmp_path):
    from rlhf_course.config import PPOConfig

    run = copy_run(ppo_run, tmp_path / "kl")
    # The first rollout is the SFT policy's own (KL exactly 0); any update then moves it.
    with pytest.raises(ppo_train.PPOStopped, match=r"step [234]: the mean KL .* past max_kl=1e-06.*init_kl_coef"):
        ppo.run_ppo(PPOConfig.preset("cpu", **TINY, max_kl=1e-6), run, progress=False)


@pytest.mark.slow
def test_two_processes_data_parallel_under_accelerate_launch(ppo_run, tmp_path):
    run = copy_run(ppo_run, tmp_path / "ddp")
    sets = [f"--set={k}={v}" for k, v in {**TINY, "steps": 2}.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` picks accelerate's multi-process (torchrun) launcher; `--cpu` would start one
    # process. Without a GPU the stage asks for CPU, so the two processes talk over gloo.
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "rlhf_course.ppo", "--out", str(run), *sets],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())["ppo"]
    assert report["processes"] == 2
    assert report["replicas_in_sync"] is True  # gradients were averaged: both copies stayed equal
    assert [h["step"] for h in ppo_history(run)] == [1, 2]


# --------------------------------------------------------------------------- the ladder of rewards


def test_oracle_reward_is_gold_or_the_annotators_utility_normalised():
    from rlhf_course.world import Annotators, World, gold_score

    task = World(0).tasks("train", 1, seed=2, families=["fact"])[0]
    replies = [task.ideal, task.flawed["wrong"], task.flawed["filler"]]
    people = Annotators(8.0, 0.08)
    gold = ppo_train.OracleReward("gold", people, offset=0.5, scale=2.0)
    assert gold.score([task] * 3, replies) == pytest.approx([(gold_score(task, r).total - 0.5) / 2 for r in replies])
    util = ppo_train.OracleReward("annotators", people)
    assert util.score([task] * 3, replies) == pytest.approx(people.utilities(task, replies))
    with pytest.raises(ValueError, match="'gold' or 'annotators'"):
        ppo_train.OracleReward("rm", people)


def test_config_refuses_an_unknown_reward_and_an_oracle_without_gold():
    from rlhf_course.config import PPOConfig

    with pytest.raises(ValueError, match="PPOConfig.reward"):
        PPOConfig.preset("cpu", reward="people")
    with pytest.raises(ValueError, match="track 'toy'"):
        PPOConfig.preset("cpu", reward="gold", track="hh")


@pytest.mark.slow
def test_the_stage_runs_the_ladder_on_the_same_prompts_and_reports_each_rung(ppo_run, tmp_path):
    from rlhf_course.config import PPOConfig

    run = copy_run(ppo_run, tmp_path / "ladder")
    result = ppo.run_ppo(PPOConfig.preset("cpu", **{**TINY, "ladder": True}), run, progress=False)
    assert result["reward"] == "rm" and result["ladder_seconds"] > 0
    for prefix in ("oracle", "annotator_oracle"):
        assert 0.0 <= result[f"{prefix}_gold"] <= 1.0 and 0.0 <= result[f"{prefix}_win_rate_vs_sft"] <= 1.0
    gold_run, util_run = (ppo_history(run, f"ppo/ladder/{r}") for r in ("gold", "annotators"))
    assert len(gold_run) == len(util_run) == TINY["steps"]
    assert gold_run[0]["gold"] == util_run[0]["gold"]  # the same prompts, the same first rollout
    # The gold run trains on gold itself, normalised: its training reward is a line in gold.
    oracle = ppo_train.OracleReward.from_run("gold", run, PPOConfig.preset("cpu", **TINY))
    for h in gold_run:
        assert h["proxy_reward"] == pytest.approx((h["gold"] - oracle.offset) / oracle.scale, abs=2e-3)
