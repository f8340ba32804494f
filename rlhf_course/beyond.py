"""Stage `beyond`: PPO next to what TRL offers now, from the same SFT checkpoint and judged alike.

- **DPO** (Rafailov et al. 2023) skips the reward model: it trains the policy directly on the
  ranked pairs, with a loss whose optimum is the KL-regularised policy PPO aims for.
- **RLOO** (Ahmadian et al. 2024) and **GRPO** (Shao et al. 2024) keep the reward model but drop
  the value model: k replies per prompt, and each reply's baseline is its siblings' reward (RLOO:
  the mean of the other k-1; GRPO: the group's mean, scaled by its standard deviation).
- **PPO** is ours (`rlhf_course.ppo`), run again here so that all four are measured the same way.

Each method trains in its own child process (`python -m rlhf_course.beyond --method M --out
RUN`), so its wall time and peak memory are its own: peak resident memory on CPU, peak
`torch.cuda.max_memory_allocated` on a GPU. Every trained policy is then evaluated exactly as
stage `ppo` evaluates its own (`ppo_train.evaluate_ppo`): gold on the held-out prompts, the win rate
against SFT's replies, the KL to SFT, the reward model's score. RLOO and GRPO sample as many
replies in all as PPO does (`steps` x `batch_size`); DPO makes one pass over the ranked pairs of
stage `comparisons`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, TrainerCallback

from rlhf_course.config import BeyondConfig, PPOConfig
from rlhf_course.models import load_checkpoint, save_base
from rlhf_course.ppo import run_ppo
from rlhf_course.ppo_train import PPOPaths, evaluate_ppo, prompt_seed
from rlhf_course.rankings import COMPARISONS, load_comparisons, rankings_dataset
from rlhf_course.reward import load_reward_model
from rlhf_course.runs import StageStopped, StageTimer, require, stage_dir, write_text_atomic
from rlhf_course.training import resolve_precision
from rlhf_course.world import World

METHODS = ("ppo", "dpo", "rloo", "grpo")
"""The methods stage `beyond` compares, in the order of its table."""
TRAINED = "trained.json"
"""RUN_DIR/beyond/<method>/trained.json: the child's wall time and peak memory, once trained."""


def _peak_memory_mb(cuda: bool) -> float:
    if cuda:

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def ppo_config(cfg: BeyondConfig) -> PPOConfig:
    """The PPO settings every method shares: the profile's preset with this stage's budget."""
    preset = PPOConfig.preset(cfg.profile)
    return PPOConfig.preset(cfg.profile, seed=cfg.seed, steps=cfg.steps, batch_size=cfg.batch_size,
                            minibatch_size=min(preset.minibatch_size, cfg.batch_size),
                            max_new_tokens=cfg.max_new_tokens, init_kl_coef=cfg.kl_beta, lr=cfg.rl_lr,
                            eval_prompts=cfg.eval_prompts, save_every=10**9)


def _trl_common(cfg: BeyondConfig, out: Path, cuda: bool) -> dict[str, Any]:

    precision = resolve_precision(ppo_config(cfg), "cuda" if cuda else "cpu")
    # TRL defaults to bf16 and gradient checkpointing: set both for the device and a small model.
    return dict(output_dir=str(out / "trainer"), use_cpu=not cuda, bf16=precision == "bf16",
                fp16=precision == "fp16", gradient_checkpointing=False, report_to="none",
                save_strategy="no", eval_strategy="no", disable_tqdm=True, logging_steps=10**6,
                seed=cfg.seed, lr_scheduler_type="constant", weight_decay=0.0, dataloader_num_workers=0)


def _train_dpo(cfg: BeyondConfig, run_dir: Path, out: Path, cuda: bool):
    from trl import DPOConfig, DPOTrainer  # trl takes seconds to import: only when a method trains

    records = load_comparisons(Path(run_dir) / "comparisons" / COMPARISONS)
    dataset = rankings_dataset(records)
    if 0 < cfg.dpo_pairs < len(dataset):
        dataset = dataset.shuffle(seed=cfg.seed).select(range(cfg.dpo_pairs))
    tokenizer = AutoTokenizer.from_pretrained(Path(run_dir) / "sft" / "model")
    args = DPOConfig(**_trl_common(cfg, out, cuda), beta=cfg.dpo_beta, learning_rate=cfg.dpo_lr,
                     num_train_epochs=cfg.dpo_epochs, per_device_train_batch_size=cfg.dpo_batch_size,
                     max_length=cfg.max_length)
    trainer = DPOTrainer(model=str(Path(run_dir) / "sft" / "model"), args=args, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[_progress_callback()])
    trainer.train()
    return trainer.model, tokenizer, {"pairs": len(dataset)}


def _train_group(method: str, cfg: BeyondConfig, run_dir: Path, out: Path, cuda: bool):
    """RLOO or GRPO against the reward model of stage `rm`, on PPO's training prompts."""
    from datasets import Dataset  # datasets takes seconds to import: only when a method trains
    from trl import (  # trl takes seconds to import: only when a method trains
        GRPOConfig,
        GRPOTrainer,
        RLOOConfig,
        RLOOTrainer,
    )

    pcfg = ppo_config(cfg)
    k, batch = cfg.num_generations, cfg.batch_size
    tasks = World(cfg.seed).tasks("train", cfg.steps * batch // k, seed=prompt_seed(cfg.seed))
    dataset = Dataset.from_list([{"prompt": t.prompt} for t in tasks])
    reward_model = load_reward_model(run_dir, cfg.profile)
    tokenizer = AutoTokenizer.from_pretrained(Path(run_dir) / "sft" / "model", padding_side="left")
    eos = tokenizer.eos_token_id

    def reward(prompts, completions, completion_ids, **_) -> list[float]:
        # PPO's reward: the normalised RM score, minus the penalty for a reply that never ended.
        scores = reward_model.score(prompts, [c[-1]["content"] for c in completions], batch_size=batch)
        ended = [bool(ids) and ids[-1] == eos for ids in completion_ids]
        return [s - pcfg.missing_eos_penalty * (not e) for s, e in zip(scores, ended, strict=True)]

    Config, Trainer = (RLOOConfig, RLOOTrainer) if method == "rloo" else (GRPOConfig, GRPOTrainer)
    args = Config(**_trl_common(cfg, out, cuda), max_steps=cfg.steps, num_generations=k,
                  generation_batch_size=batch, per_device_train_batch_size=pcfg.minibatch_size,
                  gradient_accumulation_steps=batch // pcfg.minibatch_size, shuffle_dataset=False,
                  max_completion_length=pcfg.max_new_tokens, temperature=pcfg.rollout_temperature,
                  top_p=1.0, top_k=0, beta=cfg.kl_beta, epsilon=pcfg.clip_range, learning_rate=cfg.rl_lr,
                  max_grad_norm=pcfg.max_grad_norm, use_vllm=False)
    trainer = Trainer(model=str(Path(run_dir) / "sft" / "model"), reward_funcs=reward, args=args,
                      train_dataset=dataset, processing_class=tokenizer, callbacks=[_progress_callback()])
    trainer.train()
    return trainer.model, tokenizer, {"prompts": len(dataset), "num_generations": k}


def train_method(method: str, cfg: BeyondConfig, run_dir) -> dict[str, Any]:
    """Train `method` from RUN_DIR/sft/model into RUN_DIR/beyond/<method>/model in this process;
    returns (and writes to trained.json) its wall time and peak memory."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    run_dir = Path(run_dir)
    out = run_dir / "beyond" / method
    out.mkdir(parents=True, exist_ok=True)
    cuda = cfg.profile != "cpu" and torch.cuda.is_available()
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    if method == "ppo":
        pcfg = ppo_config(cfg)
        paths = PPOPaths.from_sft(run_dir, out, cfg.seed)
        extra = {"replies": pcfg.steps * pcfg.batch_size}
        # evaluate_ppo runs inside run_ppo; its time is not training time, so it is timed apart.
        result = run_ppo(pcfg, run_dir, progress=False, paths=paths,
                         live_plot=lambda step, _: _report_progress(step, pcfg.steps))
        seconds = time.perf_counter() - started - result["eval_seconds"]
    else:
        train = _train_dpo if method == "dpo" else lambda *a: _train_group(method, *a)
        model, tokenizer, extra = train(cfg, run_dir, out, cuda)
        seconds = time.perf_counter() - started
        save_base(out / "model", model, tokenizer)
    record = {"method": method, "train_seconds": round(seconds, 1),
              "peak_memory_mb": round(_peak_memory_mb(cuda), 1),
              "memory": "torch.cuda.max_memory_allocated" if cuda else "peak resident set (ru_maxrss)", **extra}
    write_text_atomic(out / TRAINED, json.dumps(record, indent=1))
    return record


PROGRESS = "rlhf-course-progress "
"""Prefix of the lines a method's child process prints after each training step (then JSON
`{"step": s, "total": n}`), read by the parent to move its progress bar."""


def _report_progress(step: int, total: int) -> None:
    print(PROGRESS + json.dumps({"step": int(step), "total": int(total)}), flush=True)


def _progress_callback():
    """A TRL/transformers callback that prints a progress line after every optimiser step."""
    class ProgressLines(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _report_progress(state.global_step, state.max_steps)

    return ProgressLines()


def _child_command(method: str, cfg: BeyondConfig, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "rlhf_course.beyond", "--method", method, "--out", str(run_dir),
            "--profile", cfg.profile, "--config", json.dumps(cfg.to_dict())]


def _run_child(method: str, cfg: BeyondConfig, run_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Train `method` in a child process of its own (each method starts from the same clean
    state, and its peak memory is its own), showing its steps on a progress bar as they come."""
    cmd = _child_command(method, cfg, run_dir)
    tail: deque[str] = deque(maxlen=60)  # the end of its output, for the error message
    bar = tqdm(desc=f"training {method}", total=None, disable=not progress, mininterval=0.5)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env={**os.environ, "TQDM_DISABLE": "1"}) as proc:
        for line in proc.stdout:
            if line.startswith(PROGRESS):
                done = json.loads(line[len(PROGRESS):])
                bar.total = done["total"]
                bar.update(done["step"] - bar.n)
            else:
                tail.append(line)
        code = proc.wait()
    bar.close()
    if code != 0:
        raise StageStopped(f"training {method} failed (exit {code}); the end of its output:\n"
                           f"{''.join(tail)[-3000:]}")
    return json.loads((run_dir / "beyond" / method / TRAINED).read_text(encoding="utf-8"))


def run_beyond(cfg: BeyondConfig, run_dir, progress: bool = True, on_method=None) -> dict[str, Any]:
    """Stage `beyond`: train each of `cfg.methods` from SFT (a child process each; a method whose
    trained.json exists is not trained again), evaluate each on the held-out prompts as stage
    `ppo` does, and return one entry per method. `on_method(row)` is called as each is done."""
    methods = cfg.method_list()
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"BeyondConfig.methods: unknown method {name!r}; use some of {', '.join(METHODS)}")
    run_dir = Path(run_dir)
    sft_path = require(run_dir, "sft", "model", profile=cfg.profile)
    require(run_dir, "rm", "model", profile=cfg.profile)
    require(run_dir, "comparisons", "comparisons.jsonl", profile=cfg.profile)
    stage_dir(run_dir, "beyond")
    pcfg = ppo_config(cfg)
    rows = {}
    with StageTimer() as timer:
        _, ref_model = load_checkpoint(sft_path, cfg.profile)
        reward_model = load_reward_model(run_dir, cfg.profile)
        for method in methods:
            done = run_dir / "beyond" / method / TRAINED
            if done.exists():
                trained = json.loads(done.read_text(encoding="utf-8"))
            else:
                trained = _run_child(method, cfg, run_dir, progress)
            tokenizer, model = load_checkpoint(run_dir / "beyond" / method / "model", cfg.profile)
            ev = evaluate_ppo(model, ref_model, tokenizer, reward_model, run_dir, pcfg, progress,
                              run_dir / "beyond" / method)
            rows[method] = {**trained, **{k: ev[k] for k in ("gold", "win_rate_vs_sft", "kl_to_sft", "proxy_reward",
                                                               "reply_words", "gold_by_family")},
                            "sft_gold": ev["sft_gold"]}
            if on_method is not None:
                on_method(rows[method])
    return {"methods": rows, "eval_prompts": cfg.eval_prompts, "seconds": round(timer.seconds, 1)}


def main(argv=None) -> int:
    """The child process of stage `beyond`: train one method and write its trained.json."""
    parser = argparse.ArgumentParser(prog="python -m rlhf_course.beyond", description=main.__doc__)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--out", required=True, help="the run folder (with sft/, rm/, comparisons/)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--config", default="{}", help="BeyondConfig fields as JSON")
    args = parser.parse_args(argv)
    fields = json.loads(args.config)
    fields.pop("profile", None)
    train_method(args.method, BeyondConfig.preset(args.profile, **fields), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
