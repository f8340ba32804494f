"""What every training stage shares: the numeric precision it trains in and its learning-rate
schedule, so that stages choose alike."""

from __future__ import annotations

import math

import torch

from rlhf_course.hardware import emulating_t4


def bf16_is_fast(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matrix multiplies run natively (CUDA bf16, x86 AVX512-BF16 or AMX).

    On such CPUs bf16 matmuls run about 2.4x faster than fp32 (measured on 2 Zen 4 cores);
    elsewhere bf16 is emulated and slower, so training stays in fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, torch >= 2.3
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(cfg, device: torch.device | str) -> str:
    """A stage config's `precision` made concrete. 'auto' on a GPU follows the profile: fp16 with
    loss scaling for `t4` (a T4 has no bf16; also when a T4 is emulated on a bigger GPU), bf16 for
    `a100` (fp16 if the GPU lacks bf16). On a CPU, bf16 where the chip multiplies it natively, else
    fp32. Shared by every stage that trains, so they choose alike."""
    device = torch.device(device)
    if cfg.precision == "auto":
        if device.type == "cuda":
            t4 = getattr(cfg, "profile", "t4") != "a100" or emulating_t4()
            return "fp16" if t4 or not bf16_is_fast(device) else "bf16"
        return "bf16" if bf16_is_fast(device) else "fp32"
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"{type(cfg).__name__}.precision={cfg.precision!r}: use 'auto', 'fp32', 'bf16' or 'fp16'")
    return cfg.precision


def warmup_cosine(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up over `warmup`
    steps to `peak`, then cosine decay to `floor` x `peak` at step `total` (and after it)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
