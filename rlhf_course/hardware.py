"""Which hardware profile to use, and why.

Three profiles cover the course's users: `cpu` (a laptop or CI: the tiny model trained here, fp32),
`t4` (free Colab: about 15 GiB, fp16 because a T4 has no bf16) and `a100` (40-80 GiB, bf16).
`detect_profile()` looks at the first CUDA device and says which profile fits and the reason.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

PROFILES = ("cpu", "t4", "a100")

T4_MEMORY_GB = 15.0
"""Memory a free Colab T4 leaves a notebook (of its 16 GB)."""

EMULATE_T4_ENV = "RLHF_COURSE_EMULATE_T4"
"""Set to 1 to run as on a T4 on a bigger GPU: memory capped to `T4_MEMORY_GB` and fp16 forced,
so a T4's limits are met before a learner meets them on Colab."""

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
    import torch  # torch takes seconds to import: `rlhf-course profile` needs it only here

    if override is not None:
        check_profile(override)
        return ProfileChoice(override, f"profile {override!r} was chosen by hand (override)")
    if not torch.cuda.is_available():
        return choose_profile(None, 0.0, False)
    props = torch.cuda.get_device_properties(0)
    if emulating_t4():
        emulate_t4()
        choice = choose_profile(props.name, T4_MEMORY_GB, False)
        return dataclasses.replace(choice, reason=f"{EMULATE_T4_ENV}=1: a T4 emulated on {props.name} "
                                   f"(memory capped to {T4_MEMORY_GB:.0f} GiB, fp16 forced): t4 profile")
    return choose_profile(
        props.name, props.total_memory / 2**30, bool(torch.cuda.is_bf16_supported())
    )


# --------------------------------------------------------------------------------------------
# Full fine-tuning or LoRA: does PPO's set of models fit?
# --------------------------------------------------------------------------------------------

PROFILE_MEMORY_GB = {"cpu": 0.0, "t4": 15.0, "a100": 40.0}
"""Memory assumed for a profile when no GPU is there to ask (a free Colab T4 has about 15 GiB
usable; the smaller A100 has 40)."""

STATIC_SHARE = 0.75
"""Share of GPU memory that weights, gradients and optimizer state may take; the rest is left
for activations, the KV cache of rollouts and the log-prob chunks."""

FULL_BYTES_PER_PARAM = 16 + 16 + 2 + 2
"""PPO with all four models resident, fully fine-tuned: the policy and the value model each hold
fp32 weights (4 bytes), fp32 gradients (4) and AdamW's two fp32 moments (8); the frozen SFT
reference and reward model sit in half precision (2 bytes each)."""

LORA_BYTES_PER_PARAM = 2 + 2 + 2 + 2
"""The same four models with LoRA: every base weight frozen in half precision; the adapters and
the value head are under 1% of the parameters and are neglected here."""


@dataclass(frozen=True)
class TrainingPlan:
    """Full fine-tuning or LoRA for a model of `params` parameters on a profile, and why."""

    lora: bool
    reason: str
    full_gb: float
    """Estimated weights + gradients + optimizer state of PPO's four models, fully fine-tuned."""
    budget_gb: float
    """`STATIC_SHARE` of the GPU's memory."""


def plan_training(params: int, profile: str, memory_gb: float | None = None) -> TrainingPlan:
    """Choose full fine-tuning when PPO's four models fit in `STATIC_SHARE` of the GPU's memory
    with fp32 master weights, else LoRA. The same choice is made for SFT and the reward model, so
    every stage of a run trains the model the same way.

    `memory_gb` is the GPU's memory; None uses `PROFILE_MEMORY_GB[profile]`. Worked numbers: on a
    T4 (15 GiB, budget 11.25) SmolLM2-135M needs 135e6 x 36 B = 4.5 GiB, so it trains fully;
    Qwen2.5-0.5B needs 494e6 x 36 B = 16.6 GiB, so it trains through LoRA. On a 40 GiB A100
    (budget 30) the 0.5B model trains fully, and on an 80 GiB one (budget 60) a 1.5B one does.
    """
    check_profile(profile)
    if params <= 0:
        raise ValueError(f"plan_training: params={params}; pass the model's parameter count")
    full_gb = params * FULL_BYTES_PER_PARAM / 2**30
    if profile == "cpu":
        return TrainingPlan(False, "cpu profile: the tiny model always trains fully", full_gb, 0.0)
    memory = PROFILE_MEMORY_GB[profile] if memory_gb is None else memory_gb
    budget = STATIC_SHARE * memory
    size = f"{params / 1e6:.0f}M parameters"
    if full_gb <= budget:
        return TrainingPlan(False, f"{size}: PPO's four models need about {full_gb:.1f} GiB fully "
                            f"fine-tuned, within {budget:.1f} GiB of {memory:.0f}: full fine-tuning",
                            full_gb, budget)
    lora_gb = params * LORA_BYTES_PER_PARAM / 2**30
    if lora_gb > budget:
        raise ValueError(
            f"plan_training: {size} do not fit on {memory:.0f} GiB even with LoRA (about "
            f"{lora_gb:.1f} GiB for the frozen weights of PPO's four models); pick a smaller "
            "BaseConfig.hub_model or a larger GPU")
    return TrainingPlan(True, f"{size}: PPO's four models would need about {full_gb:.1f} GiB fully "
                        f"fine-tuned, over {budget:.1f} GiB of {memory:.0f}: LoRA adapters instead "
                        f"(about {lora_gb:.1f} GiB)", full_gb, budget)


def gpu_memory_gb() -> float | None:
    """The first CUDA device's memory in GiB, or None without one."""
    import torch  # torch takes seconds to import: only when a GPU is asked about

    if not torch.cuda.is_available():
        return None
    if emulating_t4():
        return T4_MEMORY_GB
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def use_lora(cfg, model) -> tuple[bool, str]:
    """Resolve a stage config's `lora` (True, False, or None = decide) for `model`: the choice and
    the sentence to report. A peft-wrapped model counts its base's parameters."""
    if cfg.lora is not None:
        return bool(cfg.lora), f"lora={cfg.lora} set in {type(cfg).__name__}"
    plan = plan_training(sum(p.numel() for p in model.parameters()), cfg.profile, gpu_memory_gb())
    return plan.lora, plan.reason


def emulating_t4() -> bool:
    """Whether `EMULATE_T4_ENV` asks for a T4 emulated on this GPU."""
    return os.environ.get(EMULATE_T4_ENV, "").strip() not in ("", "0")


def emulate_t4(device: int = 0) -> float:
    """Cap this process's CUDA memory to a T4's `T4_MEMORY_GB` with
    `torch.cuda.set_per_process_memory_fraction`; returns the fraction set. An allocation past the
    cap raises torch's out-of-memory error, as it would on a T4."""
    import torch  # torch takes seconds to import: only when a GPU is asked about

    if not torch.cuda.is_available():
        raise RuntimeError("emulate_t4: there is no CUDA GPU to cap; T4 emulation needs a GPU with "
                           f"more than {T4_MEMORY_GB:.0f} GiB (unset {EMULATE_T4_ENV} on a CPU)")
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    if total < T4_MEMORY_GB:
        raise RuntimeError(f"emulate_t4: this GPU has {total:.1f} GiB, less than the "
                           f"{T4_MEMORY_GB:.0f} GiB of a T4; nothing to emulate, run it as it is")
    fraction = T4_MEMORY_GB / total
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
