"""The GPU tiers, tested on a CPU: which preset and training plan a device gets, fp16 or bf16 per
device, T4 emulation, LoRA wired through SFT, the reward model and PPO, a PPO checkpoint that
survives a cut-off save, and a run folder moved to another path (a Drive folder on a new Colab
runtime) resuming where it stopped. No GPU is used: CUDA is faked where a test needs its answers."""

import shutil
from types import SimpleNamespace

import pytest
import torch
from _runs import TINY_PPO, copy_run, ppo_history, tiny_run

from rlhf_course import hardware, ppo, ppo_core, ppo_train, training
from rlhf_course.config import BaseConfig, PPOConfig, RewardConfig, SFTConfig
from rlhf_course.hardware import plan_training, use_lora
from rlhf_course.models import load_checkpoint, trainable, trusts_remote_code, with_lora

# --------------------------------------------------------------------------------------------
# Presets and the training plan
# --------------------------------------------------------------------------------------------


def test_t4_trains_a_135m_model_fully_and_a_half_billion_one_through_lora():
    small = plan_training(134_515_008, "t4")  # SmolLM2-135M
    assert not small.lora and "full fine-tuning" in small.reason
    assert small.full_gb == pytest.approx(134_515_008 * 36 / 2**30) and small.budget_gb == 11.25
    large = plan_training(494_032_768, "t4")  # Qwen2.5-0.5B
    assert large.lora and "LoRA" in large.reason and large.full_gb > large.budget_gb


def test_a100_trains_half_a_billion_fully_and_1_5b_fully_only_on_80_gib():
    assert not plan_training(494_032_768, "a100").lora
    assert not plan_training(1_543_714_304, "a100", memory_gb=80.0).lora
    assert plan_training(1_543_714_304, "a100", memory_gb=40.0).lora


def test_a_model_too_large_even_for_lora_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="smaller BaseConfig.hub_model or a larger GPU"):
        plan_training(7_000_000_000, "t4")
    with pytest.raises(ValueError, match="parameter count"):
        plan_training(0, "t4")
    assert not plan_training(2_000_000, "cpu").lora


def test_gpu_presets_leave_lora_to_the_plan_and_cpu_never_uses_it():
    for cls in (SFTConfig, RewardConfig, PPOConfig):
        assert cls.preset("cpu").lora is False
        assert cls.preset("t4").lora is None and cls.preset("a100").lora is None
    assert "135M" in BaseConfig.preset("t4").hub_model
    assert BaseConfig.preset("t4").dtype == "float16" and BaseConfig.preset("a100").dtype == "bfloat16"
    # log-probs in chunks on both GPU tiers: a 49k-150k vocabulary never materialises B x R x V
    assert PPOConfig.preset("t4").logprob_chunk > 0 and PPOConfig.preset("a100").logprob_chunk > 0


def _model_of(params: int) -> torch.nn.Module:
    model = torch.nn.Module()
    model.weight = torch.nn.Parameter(torch.empty(params, device="meta"))
    return model


def test_use_lora_honours_a_set_value_and_otherwise_asks_the_plan(monkeypatch):
    monkeypatch.setattr(hardware, "gpu_memory_gb", lambda: None)
    assert use_lora(PPOConfig.preset("t4", lora=True), _model_of(10)) == (True, "lora=True set in PPOConfig")
    assert use_lora(PPOConfig.preset("t4", lora=False), _model_of(10**9))[0] is False
    assert use_lora(PPOConfig.preset("t4"), _model_of(135_000_000))[0] is False
    assert use_lora(PPOConfig.preset("t4"), _model_of(494_000_000))[0] is True
    # the GPU's own memory counts when there is one: 0.5B needs 16.6 GiB, so LoRA on a 20 GiB
    # card (budget 15) and full fine-tuning on a 24 GiB one (budget 18)
    monkeypatch.setattr(hardware, "gpu_memory_gb", lambda: 20.0)
    assert use_lora(SFTConfig.preset("t4"), _model_of(494_000_000))[0] is True
    monkeypatch.setattr(hardware, "gpu_memory_gb", lambda: 24.0)
    assert use_lora(SFTConfig.preset("t4"), _model_of(494_000_000))[0] is False


# --------------------------------------------------------------------------------------------
# fp16 or bf16, per device; T4 emulation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "bf16", "emulate", "device", "want"), [
    ("t4", False, False, "cuda", "fp16"),   # a real T4
    ("t4", True, False, "cuda", "fp16"),    # a small bf16 GPU on the t4 preset keeps the T4's recipe
    ("a100", True, False, "cuda", "bf16"),
    ("a100", False, False, "cuda", "fp16"),  # forced a100 on a GPU without bf16
    ("a100", True, True, "cuda", "fp16"),   # T4 emulated on a big GPU: fp16 forced
    ("cpu", True, False, "cpu", "bf16"),    # a CPU with native bf16 matmuls
    ("cpu", False, False, "cpu", "fp32"),
])
def test_precision_per_device(monkeypatch, profile, bf16, emulate, device, want):
    monkeypatch.setattr(training, "bf16_is_fast", lambda d: bf16)
    monkeypatch.setenv(hardware.EMULATE_T4_ENV, "1" if emulate else "0")
    for cls in (SFTConfig, RewardConfig, PPOConfig):
        assert training.resolve_precision(cls.preset(profile), device) == want
    assert training.resolve_precision(PPOConfig.preset(profile, precision="fp32"), device) == "fp32"


def _fake_cuda(monkeypatch, name: str, gib: float, bf16: bool) -> list:
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i=0: SimpleNamespace(name=name, total_memory=int(gib * 2**30)))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=0: calls.append((f, d)))
    return calls


def test_emulated_t4_caps_memory_to_15_gib_and_picks_the_t4_profile(monkeypatch):
    calls = _fake_cuda(monkeypatch, "NVIDIA H100 80GB HBM3", 80.0, True)
    monkeypatch.setenv(hardware.EMULATE_T4_ENV, "0")
    assert hardware.detect_profile().name == "a100" and calls == []
    monkeypatch.setenv(hardware.EMULATE_T4_ENV, "1")
    choice = hardware.detect_profile()
    assert choice.name == "t4" and choice.dtype == "float16" and "emulated" in choice.reason
    assert calls == [(pytest.approx(15 / 80), 0)]
    assert hardware.gpu_memory_gb() == 15.0  # the plan sees a T4's memory, not the H100's


def test_emulating_a_t4_needs_a_gpu_larger_than_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        hardware.emulate_t4()
    _fake_cuda(monkeypatch, "Tesla T4", 14.6, False)
    with pytest.raises(RuntimeError, match="less than the 15 GiB"):
        hardware.emulate_t4()


def test_fully_trained_weights_become_fp32_and_lora_keeps_the_frozen_base_half(tiny_models):
    model = load_checkpoint(tiny_models / "base" / "model")[1].to(torch.float16)
    assert trainable(model, lora=True).dtype == torch.float16
    assert trainable(model, lora=False).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# trust_remote_code: by name only
# --------------------------------------------------------------------------------------------


def test_remote_code_runs_only_for_the_model_named():
    assert trusts_remote_code(BaseConfig.preset("t4")) is False
    cfg = BaseConfig.preset("t4", hub_model="org/model", trust_remote_code="org/model")
    assert trusts_remote_code(cfg) is True
    with pytest.raises(ValueError, match="per model"):
        trusts_remote_code(BaseConfig.preset("t4", hub_model="org/other", trust_remote_code="org/model"))


# --------------------------------------------------------------------------------------------
# LoRA wiring and resuming, on the tiny run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("gpu_presets_run"))


def test_lora_wraps_the_value_model_with_a_trainable_head_and_fp32_adapters(tiny_models):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_models / "rm" / "model", dtype=torch.float16)
    wrapped = with_lora(rm, PPOConfig.preset("cpu", lora_r=4), "SEQ_CLS")
    trained = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert any("lora_A" in n for n in trained) and any("score" in n for n in trained)
    assert not any("embed_tokens" in n for n in trained)
    frozen = [p for p in wrapped.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.float16 for p in frozen)
    # ValueModel reads the wrapped model's own backbone and head
    ids = torch.tensor([[5, 6, 7, 8]])
    values = ppo_core.ValueModel(wrapped.float())(ids, torch.ones_like(ids), 2)
    assert values.shape == (1, 2) and torch.isfinite(values).all()


@pytest.mark.slow
def test_ppo_with_lora_resumes_in_a_moved_run_folder_with_the_same_curves(tiny_models, tmp_path):
    """LoRA PPO interrupted after its checkpoint, its run folder moved (a Drive folder mounted on
    a fresh Colab runtime sits at another path), resumed there: the same curves as a run that was
    never interrupted, adapters in the checkpoint, a merged plain model at the end."""
    cfg = PPOConfig.preset("cpu", **TINY_PPO, lora=True, lora_r=4)
    whole = copy_run(tiny_models, tmp_path / "whole")
    result = ppo.run_ppo(cfg, whole, progress=False)
    assert result["lora"] is True
    base = load_checkpoint(whole / "sft" / "model")[1].state_dict()
    merged = load_checkpoint(whole / "ppo" / "model")[1].state_dict()
    assert merged.keys() == base.keys()  # merged: no adapter weights left
    assert not (whole / "ppo" / "model" / "adapter_config.json").exists()
    assert any(not torch.equal(merged[k], base[k]) for k in base)  # the adapters moved it
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])

    cut = copy_run(tiny_models, tmp_path / "local")

    def disconnect(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ppo.run_ppo(cfg, cut, live_plot=disconnect, progress=False)
    ckpt = cut / "ppo" / ppo_train.CHECKPOINT
    assert (ckpt / "policy" / "adapter_config.json").exists()  # adapters only, not the weights
    assert not (ckpt / "policy" / "model.safetensors").exists()
    moved = tmp_path / "drive" / "MyDrive" / "run"
    moved.parent.mkdir(parents=True)
    shutil.copytree(cut, moved)
    shutil.rmtree(cut)
    resumed = ppo.run_ppo(cfg, moved, progress=False)
    assert resumed["resumed_from_step"] == 2
    assert ppo_history(moved) == ppo_history(whole)

    with pytest.raises(ValueError, match="trained with LoRA"):
        again = copy_run(tiny_models, tmp_path / "mismatch")
        with pytest.raises(KeyboardInterrupt):
            ppo.run_ppo(cfg, again, live_plot=disconnect, progress=False)
        ppo.run_ppo(PPOConfig.preset("cpu", **TINY_PPO, lora=False), again, progress=False)


# --------------------------------------------------------------------------------------------
# A checkpoint save cut off between its two renames
# --------------------------------------------------------------------------------------------


def _state(folder, step):
    folder.mkdir(parents=True)
    torch.save({"step": step}, folder / "state.pt")


def test_a_save_cut_off_between_renames_falls_back_to_the_previous_checkpoint(tmp_path):
    _state(tmp_path / (ppo_train.CHECKPOINT + ".old"), 4)
    tmp = tmp_path / (ppo_train.CHECKPOINT + ".tmp")
    tmp.mkdir()
    (tmp / "state.pt").write_bytes(b"PK\x03\x04 truncated")  # the upload stopped mid-file
    found = ppo_train.recover_checkpoint(tmp_path)
    assert found == tmp_path / ppo_train.CHECKPOINT
    assert torch.load(found / "state.pt", weights_only=False)["step"] == 4
    assert not tmp.exists() and not (tmp_path / (ppo_train.CHECKPOINT + ".old")).exists()


def test_a_complete_new_checkpoint_wins_over_the_old_one(tmp_path):
    _state(tmp_path / (ppo_train.CHECKPOINT + ".old"), 4)
    _state(tmp_path / (ppo_train.CHECKPOINT + ".tmp"), 6)
    found = ppo_train.recover_checkpoint(tmp_path)
    assert torch.load(found / "state.pt", weights_only=False)["step"] == 6


def test_a_whole_checkpoint_is_left_alone_and_no_checkpoint_is_none(tmp_path):
    assert ppo_train.recover_checkpoint(tmp_path) is None
    _state(tmp_path / ppo_train.CHECKPOINT, 8)
    _state(tmp_path / (ppo_train.CHECKPOINT + ".tmp"), 10)  # an unfinished later save, not swapped in
    found = ppo_train.recover_checkpoint(tmp_path)
    assert torch.load(found / "state.pt", weights_only=False)["step"] == 8
    assert not (tmp_path / (ppo_train.CHECKPOINT + ".tmp")).exists()


@pytest.mark.slow
def test_sft_resumes_in_a_moved_run_folder(tiny_models, tmp_path):
    """SFT cut off after a checkpoint, the run folder moved to another path, re-run there: it
    resumes from the checkpoint (TRL's checkpoint holds no path that ties it to the old place)."""
    from rlhf_course.sft import run_demos, run_sft

    cfg = SFTConfig.preset("cpu", dialogues=48, epochs=1.0, batch_size=8, save_steps=2, logging_steps=1,
                           eval_prompts=200, max_new_tokens=8, eval_batch_size=100)
    local = tmp_path / "content" / "run"
    local.mkdir(parents=True)
    shutil.copytree(tiny_models / "base", local / "base")
    run_demos(cfg, local)

    def disconnect(step, loss):
        if step >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sft(cfg, local, live_plot=disconnect, progress=False)
    moved = tmp_path / "drive" / "MyDrive" / "run"
    shutil.copytree(local, moved)
    shutil.rmtree(local)
    result = run_sft(cfg, moved, progress=False)
    assert result["resumed_from"] == "checkpoint-2" and result["train_steps"] == 8
    assert result["lora"] is False and (moved / "sft" / "model" / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------
# Colab: the run folder on Drive
# --------------------------------------------------------------------------------------------


def test_run_dir_stays_local_outside_colab_and_goes_to_drive_on_colab(monkeypatch, tmp_path):
    import sys

    from rlhf_course import runs

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert runs.colab_run_dir("runs/course") == "runs/course"
    mounted = []
    fake_drive = SimpleNamespace(mount=lambda where: (mounted.append(where),
                                                      (tmp_path / "drive" / "MyDrive").mkdir(parents=True)))
    colab = SimpleNamespace(drive=fake_drive)
    monkeypatch.setitem(sys.modules, "google", SimpleNamespace(colab=colab))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(runs, "DRIVE_MOUNT", str(tmp_path / "drive"))
    assert runs.colab_run_dir("runs/course", drive=False) == "runs/course"
    path = runs.colab_run_dir("runs/course")
    assert path == str(tmp_path / "drive" / "MyDrive" / "rlhf-course" / "runs" / "course")
    assert mounted == [str(tmp_path / "drive")] and (tmp_path / "drive" / "MyDrive" / "rlhf-course" / "runs").is_dir()
    runs.colab_run_dir("runs/other")  # already mounted: not mounted again
    assert len(mounted) == 1
    assert runs.colab_run_dir("/content/elsewhere") == "/content/elsewhere"


@pytest.mark.slow
def test_sft_on_the_t4_preset_trains_the_runs_own_base_model_in_fp32(tiny_models, tmp_path, monkeypatch):
    """The t4 preset's SFT, run on a CPU: it reads RUN_DIR/base/model (on a GPU, the hub model the
    learner chose in notebook 01), never the preset's hub id (no network here, so a fetch would
    fail), decides full fine-tuning from the model's size, and trains fp32 master weights of a
    model that loads in fp16 (without them, TRL's step would leave fp16 weights)."""
    from rlhf_course.sft import run_demos, run_sft

    monkeypatch.setattr(hardware, "gpu_memory_gb", lambda: None)
    # precision stays 'auto' (on a CPU: what every other test uses): accelerate fixes the mixed
    # precision of the process at its first Accelerator, which TRL creates here.
    cfg = SFTConfig.preset("t4", dialogues=16, epochs=1.0, batch_size=8, max_length=384,
                           gradient_checkpointing=False, eval_prompts=200, max_new_tokens=8,
                           eval_batch_size=100)
    run = tmp_path / "run"
    run.mkdir()
    (run / "base").symlink_to(tiny_models / "base")
    run_demos(cfg, run)
    result = run_sft(cfg, run, progress=False)
    assert result["lora"] is False and "full fine-tuning" in result["training_plan"]
    assert result["train_steps"] == 3  # 21 conversations (16 + 5 instructions) / 8 per step
    from safetensors import safe_open

    with safe_open(str(run / "sft" / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # trained as fp32
    assert load_checkpoint(run / "sft" / "model", "t4")[1].dtype == torch.float16  # served as fp16


def test_ppo_gets_its_own_mixed_precision_after_another_stage_fixed_one():
    """accelerate keeps one mixed precision per process: a stage run before PPO in the same
    process (TRL's SFT, say, forced to fp32) must not stop PPO from using bf16 or fp16."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    try:
        AcceleratorState._reset_state()  # whatever earlier tests fixed
        Accelerator(cpu=True, mixed_precision="no")
        with pytest.raises(ValueError, match="already been initialized"):
            Accelerator(cpu=True, mixed_precision="bf16")  # what PPO met before
        assert ppo_train._accelerator(Accelerator, False, "bf16").mixed_precision == "bf16"
        assert ppo_train._accelerator(Accelerator, False, "bf16").mixed_precision == "bf16"  # kept
        assert ppo_train._accelerator(Accelerator, False, "fp32").mixed_precision == "no"
    finally:
        AcceleratorState._reset_state()
