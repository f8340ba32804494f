"""One frozen config dataclass per stage, with a preset per hardware profile.

A preset is the dataclass's defaults (the `cpu` values) overridden by a small dict per profile,
so a reader sees in one place what changes between a laptop, a Colab T4 and an A100.
Notebooks and the CLI call `BaseConfig.preset("cpu", steps=100)`; unknown fields are an error.

The file is longer than 600 lines on purpose: it is the course's settings, each field with the
reason for its value, read like a table; split up, the stages' knobs could not be compared at a
glance.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from rlhf_course.hardware import check_profile


@dataclass(frozen=True)
class EvalSettings:
    """How a stage measures its policy: the held-out protocol every stage's report shares."""

    prompts: int = 480
    """Prompts of the main held-out set sampled for the stage's `gold` and win rates (at least
    200; 480 give every family 48), and as many of the generalisation probe for `gold_ood`."""
    max_new_tokens: int = 64
    """Longest sampled reply, in tokens (in stage `ppo` also the longest rollout)."""
    temperature: float = 0.7
    """Sampling temperature of evaluation replies, the same in every stage's report."""
    batch_size: int = 48
    """Prompts per generation batch."""


EVAL_NAMES = {"eval_prompts": "prompts", "max_new_tokens": "max_new_tokens", "temperature": "temperature",
              "eval_batch_size": "batch_size"}
"""A config's flat names for its `eval` settings (`cfg.eval_prompts` is `cfg.eval.prompts`), as
presets, overrides, notebooks' parameters and `--set stage.eval_prompts=...` use them."""


class _Preset:
    """Mixin: `Cls.preset(profile, **overrides)` and `cfg.to_dict()` for frozen dataclasses; a
    config with an `eval` field also reads and takes its settings by their flat names."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def preset(cls, profile: str, **overrides: Any):
        """The config for `profile` ('cpu', 't4', 'a100'), with `overrides` applied last."""
        check_profile(profile)
        names = {f.name for f in dataclasses.fields(cls)}
        flat = EVAL_NAMES if "eval" in names else {}
        unknown = sorted(set(overrides) - names - set(flat))
        if unknown:
            raise TypeError(
                f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(names | set(flat))}"
            )
        values = {**cls.PRESETS.get(profile, {}), **overrides, "profile": profile}
        if flat:
            nested = {flat[k]: values.pop(k) for k in list(values) if k in flat}
            values["eval"] = dataclasses.replace(_eval_settings(values.pop("eval", EvalSettings())), **nested)
        return cls(**values)

    def __getattr__(self, name: str) -> Any:
        # Only for names that are not fields: the flat names of the `eval` settings.
        if name in EVAL_NAMES and "eval" in self.__dataclass_fields__:
            return getattr(self.eval, EVAL_NAMES[name])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __post_init__(self) -> None:
        # `eval` given as a dict (a config read back from JSON) becomes EvalSettings again.
        if "eval" in self.__dataclass_fields__ and not isinstance(self.eval, EvalSettings):
            object.__setattr__(self, "eval", _eval_settings(self.eval))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _eval_settings(value: Any) -> EvalSettings:
    if isinstance(value, EvalSettings):
        return value
    if isinstance(value, dict):
        return EvalSettings(**value)
    raise TypeError(f"eval must be EvalSettings or its dict, got {type(value).__name__}")


TRACKS = ("toy", "hh")
"""Where stages 02-06 take their data: 'toy' (the toy world alone, offline, judged by the gold
labeler) or 'hh' (the toy world plus real hub data: demonstrations, HH-RLHF comparisons and
prompts, see `rlhf_course.hh`; needs the hub, so a GPU profile)."""


def _check_track(cfg: Any, counts: tuple[str, ...] = (), fractions: tuple[str, ...] = (),
                 names: tuple[str, ...] = ()) -> None:
    """Raise ValueError for an unknown `track`, a negative count, a fraction outside [0, 1) or an
    empty dataset name among the named fields of `cfg`."""
    cls = type(cfg).__name__
    if cfg.track not in TRACKS:
        raise ValueError(f"{cls}.track = {cfg.track!r}: unknown track; valid tracks are "
                         f"{', '.join(map(repr, TRACKS))} ('toy' runs offline on the toy world, 'hh' "
                         "adds real hub data)")
    for name in counts:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{cls}.{name} = {value!r}: use a whole number >= 0")
    for name in fractions:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ValueError(f"{cls}.{name} = {value!r}: use a share in [0, 1); every batch keeps "
                             "some toy-world prompts, the only ones the gold labeler can judge")
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{cls}.{name} = {value!r}: give a hub dataset id (such as "
                             "'Anthropic/hh-rlhf') or the path of a local copy in the same schema")


@dataclass(frozen=True)
class BaseConfig(_Preset):
    """Stage `base` (notebook 01): the toy world, its tokenizer, and the pretrained base model.

    On `cpu` a tiny Llama-style decoder is trained here on the world's corpus; on `t4`/`a100` a
    hub base model is loaded instead and the tokenizer/pretraining fields are unused.
    """

    profile: str = "cpu"
    """Hardware profile this config was made for ('cpu', 't4', 'a100')."""
    seed: int = 0
    """Seeds the world (facts, corpus, splits) and every random choice of the stage."""

    # --- tokenizer (cpu track) ---
    vocab_size: int = 1024
    """Byte-level BPE vocabulary size, special tokens included. Small: the world's text is narrow."""

    # --- model (cpu track) ---
    n_layers: int = 2
    """Decoder layers. Shallow trains copying/induction faster than deep at this size."""
    d_model: int = 256
    """Hidden width."""
    n_heads: int = 4
    """Attention heads (head size = d_model / n_heads)."""
    d_ff: int = 768
    """MLP inner width (SwiGLU)."""
    max_seq_len: int = 384
    """Longest sequence the model sees (prompt + reply), in tokens."""

    # --- pretraining (cpu track) ---
    corpus_docs: int = 12_000
    """Documents generated for the pretraining corpus (encyclopedia + forum threads)."""
    forum_quality: float = 0.05
    """Share of the corpus's forum replies that are ideal; the rest ramble, comply, play along or
    continue the thread, as text from the web does. Low, so the base is a raw LM, not an assistant."""
    block_size: int = 128
    """Tokens per pretraining sequence (documents are packed end to end)."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    steps: int = 700
    """Optimizer steps. 700 x 32 x 128 = 2.9M tokens, about 2.5 minutes on 2 cores."""
    lr: float = 3e-3
    """Peak learning rate (AdamW), reached after `warmup_steps`, then cosine to 10%."""
    warmup_steps: int = 30
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on norms)."""
    autocast: str = "auto"
    """Pretraining precision: 'auto' = bf16 autocast where the chip multiplies bf16 natively
    (about 2.4x faster on such CPUs), else fp32; 'bf16' forces it; 'off' keeps fp32."""

    # --- hub model (t4 / a100 track) ---
    hub_model: str = ""
    """Hub id or local folder of the base model for GPU profiles; empty on cpu (trained here)."""
    dtype: str = "float32"
    """Weights' dtype: float32 on cpu, float16 on T4 (no bf16 there), bfloat16 on A100."""
    trust_remote_code: str = ""
    """The hub id whose own Python code you allow to run (`trust_remote_code=True` in
    transformers). Empty: no model's code runs, only safetensors weights load. Opting in is by
    name and only for that model: it must equal `hub_model`, so changing the model never carries
    the trust over. Code from the hub runs with your account's rights; read it first."""

    # --- evaluation ---
    eval: EvalSettings = EvalSettings()
    """The held-out protocol (`cfg.eval_prompts`, `cfg.max_new_tokens`, `cfg.temperature`,
    `cfg.eval_batch_size` read it)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "t4": {
            "hub_model": "HuggingFaceTB/SmolLM2-135M",
            "dtype": "float16",
            "max_seq_len": 1024,
            "max_new_tokens": 128,
            "eval_batch_size": 64,
        },
        "a100": {
            "hub_model": "Qwen/Qwen2.5-0.5B",
            "dtype": "bfloat16",
            "max_seq_len": 2048,
            "max_new_tokens": 256,
            "eval_batch_size": 128,
        },
    }


@dataclass(frozen=True)
class SFTConfig(_Preset):
    """Stage `sft` (notebooks 02 and 03): demonstrations, then supervised fine-tuning of the base
    model on them with TRL's SFTTrainer, the loss on assistant tokens only."""

    profile: str = "cpu"
    """Hardware profile this config was made for ('cpu', 't4', 'a100')."""
    seed: int = 0
    """Seeds the demonstrations, the data order and the evaluation samples."""
    track: str = "toy"
    """'toy': demonstrations from the toy world only. 'hh': real demonstrations from the hub
    (`hh_demos`, `hh_instructions`) join the toy ones in the mix (see `rlhf_course.hh`)."""
    hh_demos: str = "HuggingFaceH4/no_robots"
    """Track 'hh': a messages-format dataset of real conversations (hub id or local file/folder)."""
    hh_instructions: str = "databricks/databricks-dolly-15k"
    """Track 'hh': a Dolly-style instruction/context/response dataset, turned into dialogues."""
    hh_demo_count: int = 4000
    """Track 'hh': real demonstrations added to the toy mix, a seeded sample; an
    `instruction_fraction` share of them comes from `hh_instructions`, the rest from `hh_demos`."""

    # --- data (notebook 02) ---
    dialogues: int = 3000
    """Conversations written by the simulated trainers (toy world, training split)."""
    instruction_fraction: float = 0.25
    """Share of the mixed dataset that comes from the instruction set turned into dialogues."""

    # --- training (notebook 03) ---
    epochs: float = 2.0
    """Passes over the mixed dataset."""
    batch_size: int = 32
    """Conversations per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate (cosine decay after a short warm-up). High: the model is tiny."""
    warmup_ratio: float = 0.05
    """Share of steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_length: int = 384
    """Longest tokenized conversation; longer ones are truncated."""
    precision: str = "auto"
    """'auto': bf16 where the chip multiplies it natively (CPU with AVX512-BF16, A100), fp16 on a
    T4 (no bf16 there), else fp32; or force 'fp32', 'bf16', 'fp16'."""
    gradient_checkpointing: bool = False
    """Recompute activations to save memory. TRL turns it on by default; it only slows a tiny
    model, so it is off on cpu."""
    lora: bool | None = False
    """Train LoRA adapters (peft) instead of all weights: for larger models on small GPUs. None
    (the GPU presets) decides from the base model's size and the GPU's memory
    (`hardware.plan_training`): full fine-tuning where PPO's four models fit, else LoRA."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    save_steps: int = 100
    """Checkpoint every this many steps, so a re-run resumes after an interruption."""
    logging_steps: int = 10
    """Log (and redraw the live loss plot) every this many steps."""

    # --- evaluation (same protocol as the base stage; also the win rate against the base) ---
    eval: EvalSettings = EvalSettings()
    """The held-out protocol (`cfg.eval_prompts`, `cfg.max_new_tokens`, `cfg.temperature`,
    `cfg.eval_batch_size` read it)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "t4": {"batch_size": 16, "lr": 2e-5, "epochs": 2.0, "gradient_checkpointing": True, "lora": None,
               "max_length": 1024, "max_new_tokens": 128, "eval_batch_size": 64},
        "a100": {"batch_size": 32, "lr": 1e-5, "epochs": 2.0, "max_length": 2048, "lora": None,
                 "max_new_tokens": 256, "eval_batch_size": 128},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_track(self, counts=("hh_demo_count",), names=("hh_demos", "hh_instructions"))


@dataclass(frozen=True)
class RewardConfig(_Preset):
    """Stages `comparisons` and `rm` (notebooks 04 and 05): K replies sampled from the SFT policy
    and ranked, then a reward model trained on the rankings with InstructGPT's K-way loss."""

    profile: str = "cpu"
    """Hardware profile this config was made for ('cpu', 't4', 'a100')."""
    seed: int = 0
    """Seeds the contexts, the sampled replies, the annotators' noise and the data order."""
    track: str = "toy"
    """'toy': rankings of the SFT policy's toy-world replies only. 'hh': HH-RLHF comparisons
    (`hh_preferences`) also train the reward model, and its held-out test pairs measure it."""
    hh_preferences: str = "Anthropic/hh-rlhf"
    """Track 'hh': HH-RLHF-format preference pairs (hub id, or a local folder holding train and
    test files: the held-out pairs come from the test split)."""
    hh_pairs: int = 4000
    """Track 'hh': HH-RLHF training pairs (rankings of K=2) added to the toy rankings, a seeded sample."""
    hh_heldout_pairs: int = 500
    """Track 'hh': HH-RLHF test pairs that measure the reward model (`rm.accuracy_hh_heldout`)."""

    # --- comparisons (notebook 04) ---
    prompts: int = 1200
    """Training contexts to rank (toy-world training prompts), each giving one ranking of K.
    3,000 gave 0.71 held-out accuracy on clear gold pairs and 1,200 gave 0.66 (seed 0; other
    sweeps put both within 0.64-0.71); the smaller set leaves PPO room in the 12-minute course run
    on 2 cores."""
    k: int = 4
    """Replies per ranking (2..9); InstructGPT used 4 to 9. A context whose samples hold fewer
    distinct replies gets a smaller K, never fewer than 2."""
    demo_fraction: float = 0.5
    """Share of contexts taken from the demonstrations' conversations; the rest are fresh chats
    with the policy. Both are training prompts."""
    sample_temperature: float = 1.0
    """Temperature for the K alternatives: 1.0 samples the policy as it is, for variety."""
    oversample: float = 1.5
    """Samples drawn per wanted reply (ceil(k * oversample) per context), so that K distinct
    ones are usually found."""
    annotator_sharpness: float = 8.0
    """Simulated annotators' weight on gold (see `world.Annotators`, whose defaults these are)."""
    annotator_length_bias: float = 0.08
    """Simulated annotators' taste for longer replies, per word: the bias the RM inherits."""

    # --- reward model (notebook 05) ---
    epochs: float = 2.0
    """Passes over the rankings."""
    batch_size: int = 16
    """Rankings per optimizer step; all K replies of a ranking sit in the same step."""
    lr: float = 1e-3
    """Peak learning rate (AdamW; linear warm-up, cosine decay). High: the model is tiny."""
    warmup_ratio: float = 0.05
    """Share of steps spent warming the learning rate up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_length: int = 384
    """Longest tokenized context + reply; longer ones lose their oldest tokens."""
    precision: str = "auto"
    """'auto': bf16 autocast where the chip multiplies it natively, fp16 on a T4, else fp32; or
    force 'fp32', 'bf16', 'fp16'."""
    lora: bool | None = False
    """Train LoRA adapters (peft) and the scalar head instead of all weights. None (the GPU
    presets) decides from the model's size and the GPU's memory (`hardware.plan_training`)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""

    # --- evaluation ---
    eval_prompts: int = 480
    """Main held-out prompts whose K sampled replies measure the RM (at least 200); 480 give
    about 700 clear pairs, enough to read a per-family table."""
    gold_margin: float = 0.2
    """`rm.accuracy_gold` counts pairs whose gold scores differ by at least this much."""
    max_new_tokens: int = 64
    """Longest sampled reply, in tokens."""
    sample_batch_size: int = 64
    """Prompts per generation batch."""
    score_batch_size: int = 64
    """Replies per reward-model forward pass when scoring."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "t4": {"batch_size": 8, "lr": 1e-5, "epochs": 1.0, "max_length": 1024, "lora": None,
               "max_new_tokens": 128, "sample_batch_size": 32, "score_batch_size": 16},
        "a100": {"batch_size": 16, "lr": 5e-6, "epochs": 1.0, "max_length": 2048, "lora": None,
                 "max_new_tokens": 256, "sample_batch_size": 64, "score_batch_size": 32},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_track(self, counts=("hh_pairs", "hh_heldout_pairs"), names=("hh_preferences",))


@dataclass(frozen=True)
class PPOConfig(_Preset):
    """Stage `ppo` (notebook 06): the SFT policy trained with PPO against the reward model, with
    a per-token KL penalty to the SFT policy (InstructGPT's objective)."""

    profile: str = "cpu"
    """Hardware profile this config was made for ('cpu', 't4', 'a100')."""
    seed: int = 0
    """Seeds the training prompts, every sampled reply, the minibatch order and the evaluation."""
    track: str = "toy"
    """'toy': rollout prompts from the toy world only. 'hh': a `hh_prompt_fraction` share of
    every batch are HH-RLHF prompts, scored by the reward model alone (no gold for them; the
    watched gold and the held-out evaluation stay on toy-world prompts)."""
    hh_prompts: str = "Anthropic/hh-rlhf"
    """Track 'hh': the dataset whose conversations (up to the last user turn) become prompts."""
    hh_prompt_fraction: float = 0.5
    """Track 'hh': share of each batch's rollout prompts taken from `hh_prompts`, in [0, 1)."""

    reward: str = "rm"
    """What scores a rollout: 'rm', the learned reward model (the course's PPO). The reference
    runs of the ladder (`ladder`) train on truths no real project has: 'gold', the gold judge
    itself, and 'annotators', the simulated annotators' exact expected utility (length taste
    included). Each is normalised on the SFT replies of the training rankings, as the RM is."""
    ladder: bool = True
    """Stage `ppo` also runs the same PPO with reward 'gold' and 'annotators' (RUN_DIR/ppo/ladder/)
    and reports their held-out gold as `oracle_gold` and `annotator_oracle_gold`: the gaps between
    the rungs are the cost of the people's biases and the cost of the reward model's errors.
    About 3 minutes more on the cpu track; off in the GPU presets, where each run is long."""

    # --- rollouts ---
    steps: int = 40
    """PPO steps; each samples `batch_size` replies (per process) and updates on them. On the cpu
    track (seed 0, beta 0.3) 30 steps gave gold 0.659 -> 0.758 and a win rate of 0.591 against
    SFT, 40 steps 0.765 and 0.603; 40 x 32 replies take about 2.5 minutes on 2 cores."""
    batch_size: int = 32
    """Replies sampled per step (per process when several run data-parallel)."""
    rollout_temperature: float = 0.7
    """Sampling temperature of rollouts, and the temperature log-probs are computed at (they must
    match, or the ratio and the KL are measured on another distribution than the one sampled)."""

    # --- the objective ---
    init_kl_coef: float = 0.3
    """beta, the weight of the per-token KL penalty to the SFT policy, at the start. On the cpu
    track (seed 0, 30 steps) beta 0.1 with the controller aiming at 6 nats let the policy reach
    KL 6 and collapse onto one reply the reward model over-rates ("I am not able to act outside
    this chat, ..." to harmful and fact questions too): gold 0.67 -> 0.55. A fixed 0.3 kept KL
    near 0.7 and gave gold 0.64 -> 0.76, win rate 0.61; 0.2 aiming at 2 nats gave 0.75, 0.60."""
    target_kl: float | None = None
    """Per-reply KL (nats) the adaptive controller (Ziegler et al.) steers beta toward; None
    keeps beta fixed, as the cpu preset does (see `init_kl_coef`)."""
    kl_horizon: int = 10_000
    """Replies over which the adaptive controller moves beta toward the target (Ziegler et al.)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the (normalised) score of a reply that never produced the end token."""
    ptx_coef: float = 0.0
    """gamma of PPO-ptx: weight of a language-modelling loss on the SFT data mixed into each
    update, which keeps skills RL does not reward. 0 turns it off (plain PPO)."""

    # --- the update ---
    ppo_epochs: int = 2
    """Passes over each batch of rollouts."""
    minibatch_size: int = 16
    """Replies per gradient step within a batch."""
    lr: float = 1e-4
    """Policy learning rate (AdamW, constant). High for RL because the model is tiny."""
    value_lr: float = 5e-4
    """Value model learning rate."""
    clip_range: float = 0.2
    """epsilon of the clipped surrogate."""
    clip_range_value: float = 0.2
    """How far a value may move from its rollout value before the loss stops rewarding it."""
    vf_coef: float = 0.1
    """Weight of the value loss in the combined loss (the two models have separate weights)."""
    gamma: float = 1.0
    """Discount; 1 because a reply is short and only its end is scored."""
    lam: float = 0.95
    """GAE's lambda: lower trusts the value model more (less variance, more bias)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    precision: str = "auto"
    """'auto': bf16 autocast where the chip multiplies it natively, fp16 on a T4, else fp32."""
    logprob_chunk: int = 0
    """Reply positions sent through the output layer at once when computing log-probs (0: all).
    A real vocabulary (50k-150k) makes B x R x V logits large; chunks bound that memory."""
    lora: bool | None = False
    """Train LoRA adapters on the policy and the value model (their heads in full) instead of all
    weights. None (the GPU presets) decides from the model's size and the GPU's memory
    (`hardware.plan_training`): on a T4 a 135M model trains fully, a 0.5B one through LoRA."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""

    # --- safety and resuming ---
    max_kl: float = 60.0
    """Stop if a batch's mean per-reply KL to the SFT policy exceeds this many nats: the policy
    has left the region where the reward model means anything."""
    save_every: int = 10
    """Save a checkpoint every this many steps; a re-run resumes from the last one."""

    # --- evaluation (also the win rate and KL against SFT, on SFT's saved replies, and the
    # longest rollout: `eval.max_new_tokens`) ---
    eval: EvalSettings = EvalSettings()
    """The held-out protocol (`cfg.eval_prompts`, `cfg.max_new_tokens`, `cfg.temperature`,
    `cfg.eval_batch_size` read it)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        # The GPU presets keep the adaptive controller and skip the ladder's two extra runs (each
        # as long as the course's own PPO there); set ladder=True to draw it.
        "t4": {"batch_size": 32, "minibatch_size": 8, "lr": 1e-6, "value_lr": 5e-6, "steps": 200,
               "init_kl_coef": 0.05, "target_kl": 6.0, "max_new_tokens": 128, "logprob_chunk": 32,
               "eval_batch_size": 64, "lora": None, "ladder": False},
        "a100": {"batch_size": 64, "minibatch_size": 16, "lr": 1e-6, "value_lr": 5e-6, "steps": 300,
                 "init_kl_coef": 0.1, "target_kl": 6.0, "max_new_tokens": 256, "logprob_chunk": 64,
                 "eval_batch_size": 128, "lora": None, "ladder": False},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_track(self, fractions=("hh_prompt_fraction",), names=("hh_prompts",))
        if self.reward not in ("rm", "gold", "annotators"):
            raise ValueError(f"PPOConfig.reward = {self.reward!r}: use 'rm' (the reward model), 'gold' "
                             "or 'annotators' (the ladder's reference runs)")
        if self.reward != "rm" and self.track != "toy":
            raise ValueError(f"PPOConfig.reward = {self.reward!r} needs the gold judge, which scores "
                             f"toy-world prompts only; use track 'toy' (now {self.track!r})")


@dataclass(frozen=True)
class IterateConfig(_Preset):
    """Stage `iterate` (notebook 07): rounds of new comparisons on the current policy, the reward
    model extended with them, and PPO from the current policy. Everything not set here (K, the
    annotators, PPO's objective and batch sizes) comes from the `RewardConfig` and `PPOConfig`
    presets of the same profile and seed."""

    profile: str = "cpu"
    """Hardware profile this config was made for ('cpu', 't4', 'a100')."""
    seed: int = 0
    """Seeds every round's contexts, samples, rankings and PPO prompts (each round its own)."""
    rounds: int = 2
    """Rounds of collect -> retrain the reward model -> PPO. The post: "several iterations"."""
    start: str = "ppo"
    """The stage whose policy round 1 starts from ('ppo', or 'sft' to iterate from scratch)."""
    prompts: int = 300
    """New training contexts ranked per round, on the current policy's samples."""
    heldout_prompts: int = 120
    """Fresh held-out prompts per round whose rankings measure the reward model on the current
    policy's replies, before and after it is retrained (a shifted distribution)."""
    rm_epochs: float = 1.0
    """Passes of the reward model over the round's rankings (plus the replayed old ones)."""
    rm_replay: float = 1.0
    """Old rankings replayed per new one when the reward model is extended, so that it keeps
    what it learned on earlier policies."""
    rm_lr: float = 3e-4
    """Learning rate for extending the reward model (it starts trained: lower than stage `rm`)."""
    ppo_steps: int = 15
    """PPO steps per round, from the round's starting policy."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "t4": {"prompts": 1000, "heldout_prompts": 200, "rm_lr": 5e-6, "ppo_steps": 100},
        "a100": {"rounds": 3, "prompts": 2000, "heldout_prompts": 300, "rm_lr": 3e-6, "ppo_steps": 150},
    }


@dataclass(frozen=True)
class EvalConfig(_Preset):
    """Stage `eval` (notebook 08): the post's limitations measured on held-out prompts for every
    stage present, and over-optimisation measured with best-of-n and a weakly leashed PPO run."""

    profile: str = "cpu"
    """Hardware profile this config was made for ('cpu', 't4', 'a100')."""
    seed: int = 0
    """Seeds the prompts, the samples and the weak-KL PPO run."""
    behaviour_prompts: int = 48
    """Held-out prompts per family for the refusal, over-refusal, false-premise and clarifying
    rates (harmful, benign, false_premise, clarify)."""
    phrasing_questions: int = 8
    """Questions per family asked in every held-out phrasing, for phrasing consistency."""
    bon_prompts: int = 64
    """Held-out prompts for best-of-n."""
    bon_samples: int = 16
    """Samples per prompt from the SFT policy; best-of-n is computed exactly for n up to this."""
    weak_kl_coef: float = 0.01
    """beta of the weakly leashed PPO run (kept fixed), against stage `rm`'s reward model."""
    weak_kl_steps: int = 30
    """Steps of the weak-KL run. On the cpu track (seed 0) held-out gold peaked near step 10 and
    had fallen well below SFT's by step 30, while the proxy kept rising."""
    weak_kl_lr: float = 2e-4
    """Policy learning rate of the weak-KL run."""
    curve_every: int = 5
    """Held-out gold, proxy and KL are measured every this many steps of the weak-KL run."""
    curve_prompts: int = 96
    """Held-out prompts per point of that curve."""
    eval: EvalSettings = EvalSettings()
    """The held-out protocol (`cfg.eval_prompts`, `cfg.max_new_tokens`, `cfg.temperature`,
    `cfg.eval_batch_size` read it)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "t4": {"weak_kl_steps": 150, "weak_kl_lr": 3e-6, "curve_every": 15, "max_new_tokens": 128,
               "eval_batch_size": 64},
        "a100": {"weak_kl_steps": 200, "weak_kl_lr": 2e-6, "curve_every": 20, "max_new_tokens": 256,
                 "eval_batch_size": 128},
    }


@dataclass(frozen=True)
class BeyondConfig(_Preset):
    """Stage `beyond` (notebook 10): PPO, DPO, RLOO and GRPO from the same SFT checkpoint, on the
    same comparisons and reward model, judged the same way. PPO's other settings are its preset."""

    profile: str = "cpu"
    """Hardware profile this config was made for ('cpu', 't4', 'a100')."""
    seed: int = 0
    """Seeds every method's data order and sampling, and the evaluation."""
    methods: str = "ppo,dpo,rloo,grpo"
    """Comma-separated methods to train and compare (of ppo, dpo, rloo, grpo)."""
    steps: int = 20
    """Steps of PPO, RLOO and GRPO; each samples `batch_size` replies (640 in all on cpu, where
    the four methods then train in about 6 minutes)."""
    batch_size: int = 32
    """Replies sampled per step (RLOO and GRPO: batch_size / num_generations prompts)."""
    num_generations: int = 4
    """Replies per prompt for RLOO and GRPO: each one's baseline comes from its siblings."""
    kl_beta: float = 0.1
    """KL weight of RLOO and GRPO to the SFT policy, PPO's initial beta."""
    rl_lr: float = 1e-4
    """Learning rate of RLOO and GRPO (PPO's)."""
    dpo_beta: float = 0.1
    """DPO's beta: the strength of its implicit KL regularisation."""
    dpo_lr: float = 5e-5
    """DPO's learning rate."""
    dpo_epochs: float = 1.0
    """Passes of DPO over the ranked pairs of stage `comparisons`."""
    dpo_batch_size: int = 16
    """Pairs per DPO step."""
    dpo_pairs: int = 640
    """Ranked pairs DPO trains on: a seeded sample of stage `comparisons`' pairs (0: all of
    them). On cpu as many as the replies the other methods sample."""
    max_length: int = 384
    """Longest DPO prompt + reply, in tokens."""
    max_new_tokens: int = 64
    """Longest sampled reply (training and evaluation), in tokens."""
    eval_prompts: int = 480
    """Main held-out prompts each method is evaluated on (the same as every stage's)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {},
        "t4": {"steps": 200, "rl_lr": 1e-6, "dpo_lr": 5e-7, "dpo_batch_size": 8, "dpo_pairs": 0,
               "max_length": 1024},
        "a100": {"steps": 300, "batch_size": 64, "rl_lr": 1e-6, "dpo_lr": 5e-7, "dpo_pairs": 0,
                 "max_length": 2048},
    }

    def method_list(self) -> list[str]:
        """`methods` as a list, in the order given."""
        return [m.strip() for m in self.methods.split(",") if m.strip()]


@dataclass(frozen=True)
class ModerationConfig(_Preset):
    """The moderation filter (`rlhf_course.moderation`): a linear topic x harm classifier over
    hashed n-grams, trained from the toy world alone, in seconds, and the same on every profile
    (it never touches the policy, so a GPU changes nothing)."""

    profile: str = "cpu"
    """Hardware profile this config was made for ('cpu', 't4', 'a100')."""
    seed: int = 0
    """Seeds the training tasks and the held-out tasks it is measured on."""
    train_tasks: int = 2000
    """Training-split tasks whose messages and replies it learns from (200 of each family)."""
    drop_words: int = 2
    """Harmful and benign request contents are also seen with up to this many words dropped, so
    that every word of a harmful ask carries weight, not only the one that split the training set."""
    n_buckets: int = 16384
    """Hash buckets for the word, word-pair and character n-gram features."""
    steps: int = 200
    """Full-batch Adam steps (about 3 s on 2 cores)."""
    lr: float = 0.1
    """Adam learning rate."""
    l2: float = 3e-5
    """L2 penalty on the weights. Chosen on world seeds 1-4 among 3e-5, 1e-4 and 3e-4."""
    warn_threshold: float = 0.25
    """P(harm) from which a message is flagged with a warning. Low on purpose: a held-out
    phrasing of harm scores 0.1-0.9 where a training one scores above 0.9; 0.25 gave the best
    worst case of precision and recall on world seeds 1-4 (0.1-0.4 tried)."""
    block_threshold: float = 0.8
    """P(harm) from which a message is blocked rather than warned: phrasings like those seen in
    training, and compliant replies."""
    eval_tasks: int = 600
    """Held-out tasks whose texts measure precision and recall (about 90 harmful requests)."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {}, "t4": {}, "a100": {}}


def parse_field(cls: Any, field: str, raw: str) -> Any:
    """`raw`, a command-line string (`--set stage.field=raw`), as a value of `cls`'s dataclass
    field `field`: bools from true/false, numbers from digits, `none` for an optional field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "eval" in fields and field in EVAL_NAMES:  # a flat name of the `eval` settings
        cls, fields, field = EvalSettings, {}, EVAL_NAMES[field]
    elif field not in fields or field == "eval":
        flat = sorted(set(fields) - {"eval"} | (set(EVAL_NAMES) if "eval" in fields else set()))
        raise ValueError(f"{cls.__name__} has no field {field!r}; valid fields: {flat}")
    # Annotations are strings under `from __future__ import annotations`; resolve them.
    kind = typing.get_type_hints(cls).get(field, str)
    optional = type(None) in typing.get_args(kind)
    if optional:
        if raw.lower() == "none":
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{field} needs true or false, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if kind in (int, float):
        return kind(raw)
    return raw
