"""Stage `demos` and stage `sft` on a shrunken cpu config: settings, LoRA, resume, bad input."""

import json

import pytest

from rlhf_course.config import BaseConfig, SFTConfig
from rlhf_course.pretrain import run_base
from rlhf_course.runs import CorruptStageOutput, MissingStageOutput
from rlhf_course.sft import SFT_DATA, lora_config, run_demos, run_sft, trl_config

BASE = {"steps": 12, "corpus_docs": 400, "d_model": 64, "n_heads": 2, "d_ff": 128, "n_layers": 1,
        "vocab_size": 320, "batch_size": 8, "eval_prompts": 200, "max_new_tokens": 8}
SFT = {"dialogues": 48, "instruction_fraction": 0.25, "epochs": 1.0, "batch_size": 8,
       "save_steps": 2, "logging_steps": 1, "eval_prompts": 200, "max_new_tokens": 8,
       "eval_batch_size": 100}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    run_base(BaseConfig.preset("cpu", **BASE), run, progress=False)
    return run


def test_trl_config_sets_precision_and_checkpointing_per_profile(tmp_path):
    cpu = trl_config(SFTConfig.preset("cpu", precision="fp32"), tmp_path, "cpu")
    assert cpu.assistant_only_loss and not cpu.bf16 and not cpu.fp16
    assert not cpu.activation_checkpointing and cpu.use_cpu
    t4 = trl_config(SFTConfig.preset("t4", precision="auto"), tmp_path, "cuda")
    assert t4.activation_checkpointing
    with pytest.raises(ValueError, match="precision"):
        trl_config(SFTConfig.preset("cpu", precision="int8"), tmp_path, "cpu")


def test_lora_config_only_when_asked():
    assert lora_config(SFTConfig.preset("cpu")) is None
    cfg = lora_config(SFTConfig.preset("cpu", lora=True, lora_r=4, lora_alpha=8))
    assert cfg.r == 4 and cfg.lora_alpha == 8


def test_sft_needs_demos_and_says_which_stage_makes_them(base_run, tmp_path):
    (tmp_path / "base").symlink_to(base_run / "base")
    with pytest.raises(MissingStageOutput, match="--stages demos"):
        run_sft(SFTConfig.preset("cpu", **SFT), tmp_path, progress=False)


@pytest.mark.slow
def test_demos_then_sft_report_and_resume_after_interruption(base_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "base").symlink_to(base_run / "base")
    cfg = SFTConfig.preset("cpu", **SFT)
    demos = run_demos(cfg, run)
    assert demos["count"] == 64 and demos["by_source"] == {"trainer": 48, "instructions": 16}
    assert 0.5 < demos["trainer_gold"] < 0.95

    class Interrupt(Exception):
        pass

    def die_at_step_5(step, loss):
        if step >= 5:
            raise Interrupt  # a disconnect in the middle of training
    with pytest.raises(Interrupt):
        run_sft(cfg, run, live_plot=die_at_step_5, progress=False)
    checkpoints = sorted(p.name for p in (run / "sft" / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["checkpoint-4"]

    sft = run_sft(cfg, run, progress=False)
    assert sft["resumed_from"] == "checkpoint-4"
    assert sft["train_steps"] == 8  # 64 conversations / 8 per step, one epoch
    assert 0.0 <= sft["gold"] <= 1.0 and 0.0 <= sft["win_rate_vs_base"] <= 1.0
    assert sft["eval_prompts"] == 200
    assert (run / "sft" / "model" / "model.safetensors").exists()
    assert len((run / "sft" / "samples.jsonl").read_text().splitlines()) == 200
    # A finished run leaves no checkpoint behind, so the next run trains afresh.
    assert not (run / "sft" / "checkpoints").exists()
    again = run_sft(cfg, run, progress=False)
    assert again["resumed_from"] is None and again["train_steps"] == 8


@pytest.mark.slow
def test_sft_with_lora_trains_adapters_and_saves_a_merged_model(base_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "base").symlink_to(base_run / "base")
    cfg = SFTConfig.preset("cpu", **{**SFT, "dialogues": 24}, lora=True, lora_r=4)
    run_demos(cfg, run)
    sft = run_sft(cfg, run, progress=False)
    assert sft["train_steps"] == 4
    config = json.loads((run / "sft" / "model" / "config.json").read_text())
    assert config["hidden_size"] == BASE["d_model"]  # merged: a plain model, no adapter folder
    assert not (run / "sft" / "model" / "adapter_config.json").exists()


def test_malformed_demo_file_names_file_and_line(base_run, tmp_path):
    run = tmp_path / "run"
    (run / "demos").mkdir(parents=True)
    (run / "base").symlink_to(base_run / "base")
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    (run / "demos" / SFT_DATA).write_text(json.dumps(good) + "\n" + "{broken\n" + json.dumps(good) + "\n")
    with pytest.raises(CorruptStageOutput) as err:
        run_sft(SFTConfig.preset("cpu", **SFT), run, progress=False)
    assert SFT_DATA in str(err.value) and "line 2" in str(err.value)
    # Nothing already written is lost.
    assert (run / "demos" / SFT_DATA).read_text().count("\n") == 3


def test_demo_ending_on_user_turn_is_rejected_with_the_reason(base_run, tmp_path):
    run = tmp_path / "run"
    (run / "demos").mkdir(parents=True)
    (run / "base").symlink_to(base_run / "base")
    bad = {"messages": [{"role": "user", "content": "Hi"}]}
    (run / "demos" / SFT_DATA).write_text(json.dumps(bad) + "\n")
    with pytest.raises(CorruptStageOutput, match="user turn"):
        run_sft(SFTConfig.preset("cpu", **SFT), run, progress=False)
