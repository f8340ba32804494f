"""Profile choice: the pure decision from device facts, and detection with a faked CUDA."""

from types import SimpleNamespace

import pytest

from rlhf_course import hardware
from rlhf_course.hardware import PROFILES, check_profile, choose_profile, detect_profile


def test_no_gpu_is_cpu():
    choice = choose_profile(None, 0.0, False)
    assert choice.name == "cpu"
    assert choice.dtype == "float32"
    assert "no CUDA GPU" in choice.reason


def test_t4_without_bf16_is_t4_and_says_why():
    choice = choose_profile("Tesla T4", 15.0, bf16=False)
    assert choice.name == "t4"
    assert choice.dtype == "float16"
    assert "bf16" in choice.reason
    assert "Tesla T4" in choice.reason


def test_a100_40gb_is_a100():
    choice = choose_profile("NVIDIA A100-SXM4-40GB", 40.0, bf16=True)
    assert choice.name == "a100"
    assert choice.dtype == "bfloat16"
    assert choice.memory_gb == 40.0


def test_small_bf16_gpu_is_t4():
    # An RTX-class card has bf16 but not the memory for full fine-tuning of 0.5-1.5B models.
    choice = choose_profile("NVIDIA GeForce RTX 4070", 12.0, bf16=True)
    assert choice.name == "t4"
    assert "GiB" in choice.reason


def test_large_gpu_without_bf16_stays_t4():
    # A V100 has 32 GiB but no bf16: fp16 precision decides, not memory.
    assert choose_profile("Tesla V100-SXM2-32GB", 32.0, bf16=False).name == "t4"


def test_unknown_profile_error_lists_valid_names():
    with pytest.raises(ValueError) as info:
        check_profile("h100")
    message = str(info.value)
    assert "'h100'" in message
    for name in PROFILES:
        assert name in message


def test_check_profile_returns_known_names():
    for name in PROFILES:
        assert check_profile(name) == name


def test_detect_override(monkeypatch):
    assert detect_profile("t4").name == "t4"
    assert "override" in detect_profile("cpu").reason
    with pytest.raises(ValueError):
        detect_profile("tpu")


def test_detect_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_profile().name == "cpu"


def test_detect_reads_the_first_device(monkeypatch):
    import torch

    props = SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    choice = detect_profile()
    assert (choice.name, choice.device_name, choice.bf16) == ("t4", "Tesla T4", False)
    assert choice.memory_gb == pytest.approx(15.0)


def test_a100_threshold_is_between_t4_and_a100_memory():
    assert 16 < hardware.A100_MIN_MEMORY_GB <= 40
