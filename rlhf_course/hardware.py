"""Which hardware profile to use, and why.

Three profiles cover the course's users: `cpu` (a laptop or CI: the tiny model trained here, fp32),
`t4` (free Colab: about 15 GiB, fp16 because a T4 has no bf16) and `a100` (40-80 GiB, bf16).
`detect_profile()` looks at the first CUDA device and says which profile fits and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

PROFILES = ("cpu", "t4", "a100")

# A GPU with at least this much memory and bf16 gets the a100 preset (full fine-tuning of 0.5-1.5B
# models); anything smaller, or without bf16, gets the t4 preset (135M-class models, fp16).
A100_MIN_MEMORY_GB = 30.0


@dataclass(frozen=True)
class ProfileChoice:
    """The chosen profile and the facts it was chosen from."""

    name: str
    """One of PROFILES."""
    reason: str
    """One sentence a learner can read: the device, its memory, and bf16 support."""
    device_name: str = "cpu"
    memory_gb: float = 0.0
    bf16: bool = False

    @property
    def dtype(self) -> str:
        """The training dtype this profile uses."""
        return {"cpu": "float32", "t4": "float16", "a100": "bfloat16"}[self.name]


def check_profile(name: str) -> str:
    """Return `name` if it is a known profile, else raise a ValueError that lists the valid ones."""
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r}: valid profiles are {', '.join(PROFILES)} "
            "(cpu = laptop/CI, t4 = free Colab GPU, a100 = large GPU)"
        )
    return name


def choose_profile(device_name: str | None, memory_gb: float, bf16: bool) -> ProfileChoice:
    """Pure decision from device facts (`device_name=None` means no CUDA device)."""
    if device_name is None:
        return ProfileChoice(
            "cpu",
            "no CUDA GPU found: using the cpu profile (tiny model trained here, fp32)",
        )
    facts = f"{device_name} with {memory_gb:.0f} GiB"
    if not bf16:
        return ProfileChoice(
            "t4",
            f"{facts} has no bf16 support, so training runs in fp16 with loss scaling: t4 profile",
            device_name, memory_gb, bf16,
        )
    if memory_gb < A100_MIN_MEMORY_GB:
        return ProfileChoice(
            "t4",
            f"{facts} supports bf16 but has under {A100_MIN_MEMORY_GB:.0f} GiB: t4 profile "
            "(small models)",
            device_name, memory_gb, bf16,
        )
    return ProfileChoice(
        "a100",
        f"{facts} supports bf16 and has room for full fine-tuning of 0.5-1.5B models: a100 profile",
        device_name, memory_gb, bf16,
    )


def detect_profile(override: str | None = None) -> ProfileChoice:
    """Detect the profile from the first CUDA device, or honour `override` (a profile name).

    A `parameters` cell passes `override=profile` so that a learner can force, say, `cpu` on a GPU.
    """
    import torch

    if override is not None:
        check_profile(override)
        return ProfileChoice(override, f"profile {override!r} was chosen by hand (override)")
    if not torch.cuda.is_available():
        return choose_profile(None, 0.0, False)
    props = torch.cuda.get_device_properties(0)
    return choose_profile(
        props.name, props.total_memory / 2**30, bool(torch.cuda.is_bf16_supported())
    )
