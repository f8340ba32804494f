"""Training speed of our PPO against TRL's RLOOTrainer on CPU: samples/s and memory, same run.

    python benchmarks/ppo_vs_rloo.py --run-dir RUN [--steps 8] [--warmup 2] [--rounds 3]
        [--batch-size 32] [--minibatch-size 16] [--max-new-tokens 64] [--num-generations 2]
        [--rloo-iterations 1] [--precision auto] [--threads 0]

RUN is a run folder with the stages up to the reward model (sft/, rm/, demos/); make one with

    rlhf-course run --profile cpu --out RUN --stages base,demos,sft,comparisons,rm

RUN is only read: each training run works on its own copy of sft/, rm/ and demos/ in a
temporary folder, so no run resumes from another's checkpoint and nothing is written into RUN.

What is measured. Both methods start from RUN/sft/model, sample replies of at most
`--max-new-tokens` tokens at our rollout temperature (0.7, no top-k or top-p), are rewarded by
the same reward model, and train on `--batch-size` sampled replies per step. A step is all that
one batch costs: sampling, scoring, the log-probs under the policy and the frozen SFT reference,
the advantages and the update. Our step time is the `seconds` field of the step's metrics (the
record `run_ppo` keeps in RUN/ppo/history.jsonl; it is read here from the per-step callback
`live_plot`, which receives that same record). TRL's is the wall time from `on_step_begin` to
`on_step_end` of one optimizer step, read by a `TrainerCallback`. The first `--warmup` steps of
each run are not timed, as they pay one-off costs (imports done on first use, the optimizers'
state, kernel choices for new shapes). samples/s = replies sampled in the timed steps / the
timed seconds. `run_ppo` evaluates the policy on held-out prompts after training; that is not
training, so the run is stopped as soon as its last step has been recorded.

Each training run is a child process of this script, and the methods alternate (ours, TRL, ours,
TRL, ... for `--rounds` rounds) so that both meet the same machine conditions. A child reports
its peak resident memory (`ru_maxrss`) at the end and the same figure once its models are loaded
and its optimizers built, before the first step; "training" is the difference.

Reading the output: one row per child, then the median of each column per method, then the
ratio ours / TRL of the median samples/s (above 1: ours is faster). The course's goal is at
least 0.8 even though our PPO also trains a value model. Check two columns before trusting a
ratio: `reply tok`, the mean reply length in the timed steps (sampling is most of a step, so the
methods are comparable only while their policies write replies of similar length), and `cores`,
the CPU seconds per wall second of the timed steps (about the thread count when the run had the
machine to itself; much lower means another process took the cores, and on a shared machine
that can slow a step several times over: look at the spread between rounds, and use more rounds
or `--threads 1`). Load memory differs partly by the libraries each child imports (TRL,
datasets).

What differs between the two methods, by design:

- Ours is PPO as InstructGPT ran it: one reply to each of `batch_size` prompts, a per-token KL
  penalty to the SFT policy, GAE advantages from a value model (a copy of the reward model,
  trained alongside), then `ppo_epochs` (2) passes over the batch in minibatches of
  `minibatch_size`, each minibatch an optimizer step of the policy and one of the value model.
  Per batch that is 2 forward+backward passes of every reply through each of two models, after
  3 no-grad passes (policy, reference, value). It also computes the gold score of each reply to
  monitor training (pure Python, a few ms per batch).
- RLOO (Ahmadian et al. 2024) has no value model. It samples k = `--num-generations` replies
  per prompt (at least 2: the baseline of a reply is the mean reward of its k-1 siblings), so a
  batch holds `batch_size / k` distinct prompts, taken in order from the same prompt list ours
  uses. Its microbatches of `minibatch_size` accumulate gradients into one optimizer step per
  batch (`generation_batch_size = batch_size`, `steps_per_generation = gradient_accumulation_steps`),
  with a single pass (`num_iterations=1`, TRL's default; `--rloo-iterations` adds passes).
  Per batch: 1 forward+backward pass through the policy after 2 no-grad passes (policy,
  reference). Its KL penalty (beta = our initial KL coefficient) is charged on each reply's
  total reward. It samples with `model.generate`; ours with its own KV-cache loop.
- Reward: both call `RewardModel.score` (the normalised score; minus our penalty for a reply
  that never ends). TRL could be handed the `LlamaForSequenceClassification` directly, but it
  would build the input its own way (whatever the chat template renders after the reply
  included, read at the last token) and leave the score unnormalised: a different reward from
  the one the model was trained to give, at about the same cost. Passing a reward function
  makes the reward, and its cost, the same in both.
- Precision: ours runs bf16 autocast where the CPU multiplies bf16 natively (`precision="auto"`,
  as in the course) and TRL then gets `bf16=True` (accelerate's CPU autocast, which also covers
  its generation: printed); otherwise both run fp32, as with `--precision fp32`. Gradient
  checkpointing is off in both (TRL's configs turn it on by default). TRL keeps its default
  optimizer (printed) with our learning rate, held constant, no weight decay, the same
  gradient clipping and clip range.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

RESULT = "BENCH-RESULT "
"""Prefix of the one stdout line a child prints its measurements on (as JSON)."""
NEEDED = ("sft/model", "rm/model", "rm/normalisation.json", "demos/sft_data.jsonl")
"""What the run folder must hold; only sft/, rm/ and demos/ are copied for the children."""
MAKE_RUN = "rlhf-course run --profile cpu --out RUN --stages base,demos,sft,comparisons,rm"
GOAL = 0.8
"""The acceptance line: ours reaches at least this share of TRL RLOO's samples per second."""


def _peak_rss_kib() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _ppo_config(args):
    from rlhf_course.config import PPOConfig

    # save_every past the last step: no checkpoint is written (it is not part of a step anyway).
    return PPOConfig.preset("cpu", steps=args.steps, batch_size=args.batch_size,
                            minibatch_size=args.minibatch_size, max_new_tokens=args.max_new_tokens,
                            precision=args.precision, save_every=args.steps + 1)


class _LastStepDone(Exception):
    """Raised from our PPO's per-step callback after the last step, to skip its evaluation."""


def _child_ours(args) -> dict:
    import torch

    import rlhf_course.ppo as ppo
    from rlhf_course.training import resolve_precision

    cfg = _ppo_config(args)
    marks: dict[str, int] = {}
    # `run_ppo` loads its four models, builds both optimizers, then asks for its training
    # prompts: the memory peak at that call is "after loading", before any step has run.
    training_tasks = ppo._training_tasks

    def tasks_after_loading(*a, **kw):
        marks["load_rss_kib"] = _peak_rss_kib()
        return training_tasks(*a, **kw)

    ppo._training_tasks = tasks_after_loading
    steps: list[dict] = []
    clocks: list[tuple[float, float]] = []  # (wall, process CPU of all threads) at each step's end

    def after_step(step: int, metrics: dict) -> None:
        clocks.append((time.perf_counter(), time.process_time()))
        steps.append(metrics)  # the history.jsonl line of this step, "seconds" measured inside
        if step == cfg.steps:
            raise _LastStepDone

    try:
        ppo.run_ppo(cfg, args.work, live_plot=after_step, progress=False)
    except _LastStepDone:
        pass
    else:
        raise RuntimeError("run_ppo returned without reporting its last step")
    timed = steps[args.warmup :]
    return {
        "samples": cfg.batch_size * len(timed),
        "seconds": sum(s["seconds"] for s in timed),
        # A timed step runs from the previous step's callback to its own (plus bookkeeping).
        "cores_used": (clocks[-1][1] - clocks[args.warmup - 1][1]) / (clocks[-1][0] - clocks[args.warmup - 1][0]),
        "step_seconds": [s["seconds"] for s in steps],
        "reply_tokens": statistics.fmean(s["length"] for s in timed),
        "load_rss_kib": marks.get("load_rss_kib"),
        "peak_rss_kib": _peak_rss_kib(),
        "precision": resolve_precision(cfg, "cpu"),
        "threads": torch.get_num_threads(),
        "optimizer_steps_per_batch": cfg.ppo_epochs * (cfg.batch_size // cfg.minibatch_size),
    }


def _child_rloo(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from rlhf_course.reward import load_reward_model
    from rlhf_course.training import resolve_precision
    from rlhf_course.world import World

    cfg = _ppo_config(args)
    precision = resolve_precision(cfg, "cpu")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision {precision!r} on CPU: use 'auto', 'bf16' or 'fp32'")
    k, batch = args.num_generations, cfg.batch_size
    work = Path(args.work)
    sft_path = work / "sft" / "model"

    # Our PPO's training prompts (ppo._training_tasks), in order: B / k of them per step.
    tasks = World(cfg.seed).tasks("train", cfg.steps * batch, seed=cfg.seed + 7919)
    prompts_needed = cfg.steps * batch // k
    dataset = Dataset.from_list([{"prompt": t.prompt} for t in tasks[:prompts_needed]])

    reward_model = load_reward_model(work, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(sft_path, padding_side="left")
    eos = tokenizer.eos_token_id
    sampled = {"replies": 0, "tokens": 0}

    def reward_model_score(prompts, completions, completion_ids, **_) -> list[float]:
        # The same reward as our PPO's: RewardModel.score (normalised), minus the penalty for a
        # reply that reached the length limit without its end token.
        texts = [c[-1]["content"] for c in completions]
        scores = reward_model.score(prompts, texts, batch_size=batch)
        ended = [bool(ids) and ids[-1] == eos for ids in completion_ids]
        sampled["replies"] += len(completion_ids)
        sampled["tokens"] += sum(len(ids) for ids in completion_ids)
        return [s - cfg.missing_eos_penalty * (not e) for s, e in zip(scores, ended, strict=True)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.load_rss_kib = None
            self.steps: list[dict] = []

        def on_train_begin(self, *_, **__):
            self.load_rss_kib = _peak_rss_kib()

        def on_step_begin(self, *_, **__):
            self._start, self._cpu = time.perf_counter(), time.process_time()
            self._replies, self._tokens = sampled["replies"], sampled["tokens"]

        def on_step_end(self, *_, **__):
            self.steps.append({"seconds": time.perf_counter() - self._start,
                               "cpu_seconds": time.process_time() - self._cpu,
                               "replies": sampled["replies"] - self._replies,
                               "tokens": sampled["tokens"] - self._tokens})

    config = RLOOConfig(
        output_dir=str(work / "rloo"),
        use_cpu=True,
        bf16=precision == "bf16",
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        push_to_hub=False,
        use_vllm=False,
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        logging_steps=10**6,
        seed=cfg.seed,
        max_steps=cfg.steps,
        # One generation of `batch` completions (batch / k prompts x k), split into microbatches
        # of minibatch_size accumulated into one optimizer step.
        num_generations=k,
        generation_batch_size=batch,
        per_device_train_batch_size=cfg.minibatch_size,
        gradient_accumulation_steps=batch // cfg.minibatch_size,
        num_iterations=args.rloo_iterations,
        shuffle_dataset=False,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.rollout_temperature,
        top_p=1.0,
        top_k=0,
        beta=cfg.init_kl_coef,
        epsilon=cfg.clip_range,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=cfg.max_grad_norm,
        dataloader_num_workers=0,
    )
    if config.steps_per_generation != config.gradient_accumulation_steps:
        raise RuntimeError(f"TRL derived steps_per_generation={config.steps_per_generation}, expected "
                           f"{config.gradient_accumulation_steps} (one generation per optimizer step)")
    timer = StepTimer()
    trainer = RLOOTrainer(model=str(sft_path), reward_funcs=reward_model_score, args=config,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    timed = timer.steps[args.warmup :]
    replies = sum(s["replies"] for s in timed)
    return {
        "samples": replies,
        "seconds": sum(s["seconds"] for s in timed),
        "cores_used": sum(s["cpu_seconds"] for s in timed) / sum(s["seconds"] for s in timed),
        "step_seconds": [round(s["seconds"], 3) for s in timer.steps],
        "reply_tokens": sum(s["tokens"] for s in timed) / max(1, replies),
        "load_rss_kib": timer.load_rss_kib,
        "peak_rss_kib": _peak_rss_kib(),
        "precision": trainer.accelerator.mixed_precision,
        # accelerate wraps a prepared model's forward in autocast; generate() calls that forward.
        "autocast_forward": hasattr(trainer.model, "_original_forward"),
        "threads": torch.get_num_threads(),
        "optimizer_steps_per_batch": args.rloo_iterations,
        "optim": str(config.optim),
    }


def _run_child(method: str, args, work: Path) -> dict:
    run_dir = Path(args.run_dir)
    for part in ("sft", "rm", "demos"):
        shutil.copytree(run_dir / part, work / part)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--work", str(work),
           "--run-dir", str(run_dir), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--minibatch-size", str(args.minibatch_size), "--max-new-tokens", str(args.max_new_tokens),
           "--warmup", str(args.warmup), "--num-generations", str(args.num_generations),
           "--rloo-iterations", str(args.rloo_iterations), "--precision", args.precision,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"error: the {method} child failed (exit {proc.returncode}); its output is above")
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(lines[-1][len(RESULT) :])


def _summary(runs: list[dict], batch_size: int) -> dict:
    """The table's columns for one child, or (several runs) the median of each column."""
    cols = [{"samples/s": r["samples"] / r["seconds"], "reply tok": r["reply_tokens"], "cores": r["cores_used"],
             "load MiB": None if r["load_rss_kib"] is None else r["load_rss_kib"] / 1024,
             "peak MiB": r["peak_rss_kib"] / 1024,
             "training MiB": None if r["load_rss_kib"] is None else (r["peak_rss_kib"] - r["load_rss_kib"]) / 1024}
            for r in runs]
    out = {}
    for key in cols[0]:
        values = [c[key] for c in cols if c[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["s/batch"] = batch_size / out["samples/s"]
    return out


COLUMNS = (("samples/s", "9.2f"), ("s/batch", "8.2f"), ("reply tok", "9.1f"), ("cores", "5.2f"),
           ("load MiB", "8.0f"), ("peak MiB", "8.0f"), ("training MiB", "12.0f"))


def _line(label: str, row: dict) -> str:
    cells = [f"{'-':>{len(name)}}" if row[name] is None else f"{row[name]:{spec}}".rjust(len(name))
             for name, spec in COLUMNS]
    return f"{label:<16} " + "  ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True,
                        help=f"run folder with sft/, rm/ and demos/ (only read); make one with: {MAKE_RUN}")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run left untimed")
    parser.add_argument("--rounds", type=int, default=3, help="times each method runs, alternating")
    parser.add_argument("--batch-size", type=int, default=32, help="sampled replies per step (both)")
    parser.add_argument("--minibatch-size", type=int, default=16,
                        help="replies per forward/backward pass (both)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest sampled reply (both)")
    parser.add_argument("--num-generations", type=int, default=2,
                        help="RLOO's k, replies per prompt (at least 2)")
    parser.add_argument("--rloo-iterations", type=int, default=1,
                        help="RLOO's num_iterations, passes over each generated batch")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="both methods: 'auto' is bf16 autocast where the CPU has native bf16")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in both children (default 0: torch's own choice)")
    parser.add_argument("--child", choices=("ours", "rloo"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = _child_ours(args) if args.child == "ours" else _child_rloo(args)
        print(RESULT + json.dumps(result), flush=True)
        return

    run_dir = Path(args.run_dir)
    missing = [p for p in NEEDED if not (run_dir / p).exists()]
    if missing:
        parser.error(f"{run_dir} lacks {', '.join(missing)}: it must be a run folder with the stages "
                     f"up to the reward model. Make one with\n    {MAKE_RUN.replace('RUN', str(run_dir))}")
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error(f"--warmup {args.warmup} must be at least 1 and leave timed steps out of --steps {args.steps}")
    if args.batch_size % args.minibatch_size:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --minibatch-size {args.minibatch_size}")
    if args.num_generations < 2 or args.batch_size % args.num_generations:
        parser.error(f"--num-generations {args.num_generations} must be at least 2 and divide --batch-size")
    if (args.steps - args.warmup) % args.rloo_iterations:
        parser.error("the timed steps (--steps minus --warmup) must be a multiple of --rloo-iterations, "
                     "since RLOO samples on only one optimizer step in every --rloo-iterations")

    prompts = args.batch_size // args.num_generations
    print(f"date      {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"versions  python {platform.python_version()}, torch {version('torch')}, trl {version('trl')}, "
          f"transformers {version('transformers')}, accelerate {version('accelerate')}")
    print(f"machine   {platform.machine()}, {os.cpu_count()} CPUs, load average before the runs "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"settings  {run_dir}; {args.steps} steps per run, the first {args.warmup} untimed (warm-up); "
          f"{args.rounds} round(s); {args.batch_size} replies per step of at most {args.max_new_tokens} tokens; "
          f"minibatch {args.minibatch_size}")
    print(f"          ours: {args.batch_size} prompts x 1 reply per step; TRL RLOO: {prompts} prompts x "
          f"k={args.num_generations} replies (RLOO needs k >= 2), num_iterations={args.rloo_iterations}")
    sys.stdout.flush()

    results: dict[str, list[dict]] = {"ours": [], "rloo": []}
    with tempfile.TemporaryDirectory(prefix="bench_ppo_rloo_") as tmp:
        for round_ in range(args.rounds):
            for method in ("ours", "rloo"):
                started = time.perf_counter()
                r = _run_child(method, args, Path(tmp) / f"{method}{round_}")
                results[method].append(r)
                print(f"  round {round_ + 1} {method:<4} step seconds {r['step_seconds']} "
                      f"(child process {time.perf_counter() - started:.0f} s)", flush=True)

    ours, trl = results["ours"][0], results["rloo"][0]
    print(f"threads   ours {ours['threads']}, TRL {trl['threads']}")
    print(f"precision ours {ours['precision']} autocast; TRL mixed_precision={trl['precision']}, model forward "
          f"(generation included) under autocast: {'yes' if trl['autocast_forward'] else 'no'}; "
          f"TRL optimizer {trl['optim'].split('.')[-1].lower()}")
    print(f"updates   per batch of replies: ours {ours['optimizer_steps_per_batch']} optimizer steps of policy "
          f"and value model; TRL RLOO {trl['optimizer_steps_per_batch']} of the policy")
    print()
    header = "  ".join(f"{name:>{len(name)}}" for name, _ in COLUMNS)
    print(f"{'run':<16} {header}")
    names = (("ours", "ours PPO"), ("rloo", "TRL RLOO"))
    for round_ in range(args.rounds):
        for method, name in names:
            print(_line(f"{round_ + 1} {name}", _summary([results[method][round_]], args.batch_size)))
    medians = {method: _summary(results[method], args.batch_size) for method, _ in names}
    for method, name in names:
        print(_line(f"median {name}", medians[method]))
    ratio = medians["ours"]["samples/s"] / medians["rloo"]["samples/s"]
    print()
    print(f"ratio ours / TRL RLOO, median samples/s: {ratio:.2f}x   (goal: at least {GOAL:.1f}x; "
          f"{'met' if ratio >= GOAL else 'not met'} in this run)")
    print(f"ratio ours / TRL RLOO, median peak RSS:  {medians['ours']['peak MiB'] / medians['rloo']['peak MiB']:.2f}x")
    print("columns   samples/s: replies sampled in the timed steps / their seconds; s/batch: seconds per "
          f"{args.batch_size} replies; reply tok: mean reply length; cores: CPU seconds / wall seconds of the "
          "timed steps (2: both cores busy with this run; less: another process took CPU, or the step "
          "ran serial Python); load/peak: ru_maxrss after loading / at the end; "
          "training: peak - load")


if __name__ == "__main__":
    main()
