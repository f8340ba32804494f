"""Stage `demos` and stage `sft`: demonstrations, then supervised fine-tuning on them.

What it simplifies relative to InstructGPT/ChatGPT: the demonstrations come from simulated
trainers in the toy world (a learner can add their own with the widget in notebook 02), the
"InstructGPT dataset" is an instruction set generated from the same world, and the model is
tiny. What it keeps: dialogue demonstrations mixed with instructions turned into dialogues,
loss on the assistant's tokens only, and a held-out gold evaluation against the base model.

Training uses TRL's `SFTTrainer` (TRL >= 1.0): `assistant_only_loss=True` masks everything but
the assistant turns, which our chat template marks with `{% generation %}`.
"""

from __future__ import annotations

import shutil
import statistics
from collections import Counter
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from rlhf_course.config import SFTConfig
from rlhf_course.data import (
    SimulatedTrainers,
    instruction_set,
    instruction_to_messages,
    load_demonstrations,
    mix,
    to_hf_dataset,
)
from rlhf_course.hardware import use_lora
from rlhf_course.heldout import (
    best_possible,
    evaluate_policy,
    excluded_count,
    heldout_tasks,
    probe_tasks,
    saved_replies,
    win_rate,
)
from rlhf_course.hh import mix_in, real_demonstrations
from rlhf_course.jsonl import write_jsonl
from rlhf_course.models import load_checkpoint, save_base, trainable
from rlhf_course.runs import StageTimer, raise_corrupt, require, seed_everything, stage_dir
from rlhf_course.training import resolve_precision
from rlhf_course.world import World, gold_score

HUMAN_DEMOS = "human.jsonl"
"""Conversations a learner wrote with the widget (notebook 02), in RUN_DIR/demos/."""
SFT_DATA = "sft_data.jsonl"
"""The mixed SFT dataset (trainer dialogues + human dialogues + instructions, plus hub
demonstrations on track 'hh'), in RUN_DIR/demos/."""


# --------------------------------------------------------------------------------------------
# Stage `demos` (notebook 02)
# --------------------------------------------------------------------------------------------


def run_demos(cfg: SFTConfig, run_dir) -> dict:
    """Write RUN_DIR/demos/sft_data.jsonl: simulated trainers' dialogues, any human-written ones
    (RUN_DIR/demos/human.jsonl, kept as they are), and instructions turned into dialogues, mixed
    so instructions make up `cfg.instruction_fraction`. On track 'hh', `cfg.hh_demo_count` real
    demonstrations from the hub (`hh.real_demonstrations`) join that mix. Returns the stage's
    report entry, with the counts by source."""
    out = stage_dir(run_dir, "demos")
    world = World(cfg.seed)
    dialogues = SimulatedTrainers().write(world, cfg.dialogues, seed=cfg.seed)
    human_path = out / HUMAN_DEMOS
    human = load_demonstrations(human_path) if human_path.exists() else []
    # Exactly as many instructions as make up `instruction_fraction` of the mix.
    f = cfg.instruction_fraction
    n_instructions = round(f * (len(dialogues) + len(human)) / (1 - f)) if f < 1 else 0
    instructions = [instruction_to_messages(r) for r in
                    instruction_set(world, n_instructions, seed=cfg.seed)]
    records = mix(dialogues + human, instructions, cfg.instruction_fraction, seed=cfg.seed)
    hh_skipped = None
    if cfg.track == "hh":

        real, hh_skipped = real_demonstrations(cfg.hh_demos, cfg.hh_instructions, cfg.hh_demo_count,
                                               cfg.instruction_fraction, seed=cfg.seed)
        records = mix_in(records, real, seed=cfg.seed)
    write_jsonl(out / SFT_DATA, records)
    sources = Counter(r.get("source", "?") for r in records)
    report = {
        "count": len(records),
        "by_source": dict(sources),
        "by_family": dict(Counter(r["family"] for r in dialogues)),
        "trainer_gold": round(trainer_gold(world, cfg), 4),
    }
    if hh_skipped is not None:
        report.update(track="hh", hh_skipped=hh_skipped)
    return report


def trainer_gold(world: World, cfg: SFTConfig, n: int = 600) -> float:
    """Mean gold score of the replies the simulated trainers write: the ceiling a perfect
    imitator of them would reach, short of the ideal replies' 1.0."""
    pairs = SimulatedTrainers().write_with_tasks(world, n, seed=cfg.seed + 1)
    return statistics.fmean(gold_score(t, r["messages"][-1]["content"]).total for t, r in pairs)


# --------------------------------------------------------------------------------------------
# Stage `sft` (notebook 03)
# --------------------------------------------------------------------------------------------


class _LossToPlot(TrainerCallback):
    """Hands each logged training loss to a live plot (or any `fn(step, loss)`)."""

    def __init__(self, fn):
        self.fn = fn

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.fn(state.global_step, logs["loss"])


def trl_config(cfg: SFTConfig, output_dir: Path, device: str, progress: bool = True):
    """TRL's SFTConfig for our stage config: precision and gradient checkpointing set per profile
    (TRL defaults to bf16 and checkpointing on, an error and a slowdown on a CPU)."""
    from trl import SFTConfig as TRLSFTConfig  # trl takes seconds to import: only when SFT trains

    precision = resolve_precision(cfg, device)
    return TRLSFTConfig(
        output_dir=str(output_dir),
        assistant_only_loss=True,
        max_length=cfg.max_length,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of all steps
        weight_decay=cfg.weight_decay,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name
        use_cpu=device == "cpu",
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        logging_steps=cfg.logging_steps,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )


def lora_config(cfg: SFTConfig, lora: bool | None = None):
    """peft LoRA on every linear layer of the decoder, or None when LoRA is off (`lora`, or
    `cfg.lora` when `lora` is None)."""
    if not (cfg.lora if lora is None else lora):
        return None
    from peft import LoraConfig  # peft takes a second to import: only for LoRA

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")


def load_sft_data(run_dir, profile: str):
    """The mixed dataset written by stage `demos`, as a `datasets.Dataset` with `messages`."""
    path = require(run_dir, "demos", SFT_DATA, profile=profile)
    try:
        records = load_demonstrations(path)
    except ValueError as err:
        raise_corrupt(run_dir, "demos", SFT_DATA, err, profile=profile)
    return to_hf_dataset([{"messages": r["messages"]} for r in records])


def run_sft(cfg: SFTConfig, run_dir, live_plot=None, progress: bool = True) -> dict:
    """Stage `sft`: fine-tune RUN_DIR/base/model on RUN_DIR/demos/sft_data.jsonl, save it to
    RUN_DIR/sft/model, and report gold on held-out prompts and the win rate against the base.

    Re-running after an interruption resumes from the last checkpoint in RUN_DIR/sft/checkpoints.
    """
    from trl import SFTTrainer  # trl takes seconds to import: only when SFT trains

    if cfg.eval_prompts < 200:
        raise ValueError(f"SFTConfig.eval_prompts={cfg.eval_prompts}: sft.gold is defined on at "
                         "least 200 held-out prompts; raise it")
    out = stage_dir(run_dir, "sft")
    base_path = require(run_dir, "base", "model", profile=cfg.profile)
    seed_everything(cfg.seed, "sft")
    with StageTimer() as timer:
        dataset = load_sft_data(run_dir, cfg.profile)
        # RUN_DIR/base/model on every profile: on a GPU it is the hub model stage `base` loaded
        # (whichever BaseConfig.hub_model the learner chose), so it is not fetched again.
        tokenizer, model = load_checkpoint(base_path, cfg.profile)
        lora, plan = use_lora(cfg, model)
        model = trainable(model, lora)
        device = "cuda" if cfg.profile != "cpu" and torch.cuda.is_available() else "cpu"
        model.train()
        model.config.use_cache = False  # training never reuses keys/values
        trainer = SFTTrainer(
            model=model,
            args=trl_config(cfg, out / "checkpoints", device, progress),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg, lora),
            callbacks=[_LossToPlot(live_plot)] if live_plot else None,
        )
        resume = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").exists() else None
        result = trainer.train(resume_from_checkpoint=resume)
        model = trainer.model.merge_and_unload() if lora else trainer.model
        model.config.use_cache = True
        model.eval()
        save_base(out / "model", model, tokenizer)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        # Checkpoints exist only while a run is unfinished: a later re-run (new demonstrations,
        # say) must train afresh, not "resume" a run that already ended.
        shutil.rmtree(out / "checkpoints", ignore_errors=True)

        world = World(cfg.seed)
        tasks = heldout_tasks(world, cfg, run_dir)
        sft_eval = evaluate_policy(model, tokenizer, tasks, cfg, progress)
        sft_eval.save(out / "samples.jsonl")
        base_eval = base_scores(run_dir, tasks, cfg, progress)
        ood = evaluate_policy(model, tokenizer, probe_tasks(world, cfg), cfg, progress)
    return {
        "gold": round(sft_eval.mean, 4),
        "win_rate_vs_base": round(win_rate(sft_eval, base_eval), 4),
        "base_gold": round(statistics.fmean(base_eval), 4),
        "gold_ood": round(ood.mean, 4),
        "eval_excluded": excluded_count(world, cfg, run_dir),
        "gold_by_family": sft_eval.by_family(),
        "gold_ideal": round(best_possible(tasks), 4),
        "eval_prompts": len(tasks),
        "train_examples": len(dataset),
        "train_steps": int(result.global_step),
        "resumed_from": Path(resume).name if resume else None,
        "lora": lora,
        "training_plan": plan,
        "final_loss": round(statistics.fmean(losses[-3:]), 4) if losses else None,
        "seconds": round(timer.seconds, 1),
    }


def base_scores(run_dir, tasks, cfg: SFTConfig, progress: bool = False) -> list[float]:
    """The base model's gold scores on `tasks`: its replies are read from
    RUN_DIR/base/samples.jsonl when that holds exactly these prompts (the base stage's own
    evaluation), else sampled again from the model. Replies are always scored afresh, so both
    sides of the win rate are judged by the same gold labeler."""
    replies = saved_replies(run_dir, "base", tasks)
    if replies is not None:
        return [gold_score(t, r).total for t, r in zip(tasks, replies, strict=True)]
    tokenizer, model = load_checkpoint(require(run_dir, "base", "model", profile=cfg.profile), cfg.profile)
    return [s.total for s in evaluate_policy(model, tokenizer, tasks, cfg, progress).scores]
