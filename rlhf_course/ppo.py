"""Stage `ppo`: the SFT policy fine-tuned with PPO against the reward model, a KL penalty
keeping it near the SFT policy.

InstructGPT's objective (Ouyang et al. 2022, eq. 2), for a prompt x and a sampled reply y:

    objective = r(x, y) - beta * log(pi_RL(y | x) / pi_SFT(y | x))  [+ gamma * pretraining LM term]

Following Ziegler et al. (2019) the KL term is paid per token: every reply token t gets reward
-beta * (log pi(y_t) - log pi_SFT(y_t)), and the reward model's score is added at the last
token. PPO (Schulman et al. 2017) then maximises that return with a clipped surrogate, a value
model estimating the return of each prefix, and GAE advantages (Schulman et al. 2016). The
details below follow what "The N Implementation Details of RLHF with PPO" (Huang et al. 2024)
found OpenAI's code to do: log-probs at the sampling temperature, the value model initialised
from the reward model, advantages whitened per batch, a penalty for replies that never end,
the reward model's output normalised (stage `rm`), and an adaptive KL coefficient.

`run_ppo` reads as load -> steps -> finish; one step reads top to bottom as five numbered steps
in `ppo_train.ppo_step`. The losses, estimators, models and rollouts are in `ppo_core`.

What it simplifies relative to InstructGPT: one tiny model on the cpu track (policy and value
are separate copies, as there); no PPO-ptx data other than the demonstrations (the pretraining
term, off by default, uses the SFT data as its "pretraining distribution"); advantages are
whitened on each process's own rollouts.

Shapes: B replies in a batch, R reply tokens (right-padded after the end token), V vocabulary.
`mask` (B, R) is 1 on real reply tokens, the end token included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from rlhf_course.config import PPOConfig, parse_field
from rlhf_course.ppo_train import (
    HISTORY,
    PPOPaths,
    PPOStopped,
    finish,
    load_run,
    measure_curve,
    ppo_step,
    save_checkpoint,
)
from rlhf_course.runs import StageTimer, update_report


def reward_ladder(cfg: PPOConfig, run_dir, progress: bool = True) -> dict:
    """The same PPO (prompts, steps, settings) against the gold judge and against the annotators'
    exact utility, from the SFT policy into RUN_DIR/ppo/ladder/<reward>/; their held-out figures
    as the report's `oracle_*` and `annotator_oracle_*`. Reference runs: they train on truths no
    real project has, to show what the RL budget could reach and what each imperfection costs."""
    out = {}
    stage = PPOPaths.stage(run_dir, cfg)
    for reward, prefix in (("gold", "oracle"), ("annotators", "annotator_oracle")):
        paths = dataclasses.replace(stage, out=stage.out / "ladder" / reward)
        res = run_ppo(dataclasses.replace(cfg, reward=reward, ladder=False), run_dir, progress=progress,
                      paths=paths)
        out |= {f"{prefix}_{k}": res[k] for k in ("gold", "win_rate_vs_sft", "kl_to_sft", "gold_by_family",
                                                 "reply_words", "gold_ood")}
    return out


def _check_config(cfg: PPOConfig) -> None:
    if cfg.eval_prompts < 200:
        raise ValueError(f"PPOConfig.eval_prompts={cfg.eval_prompts}: ppo.gold is defined on at least "
                         "200 held-out prompts; raise it")
    if cfg.rollout_temperature <= 0:
        raise ValueError(f"PPOConfig.rollout_temperature={cfg.rollout_temperature}: must be > 0, "
                         "since log-probs are computed at the sampling temperature")
    if cfg.batch_size % cfg.minibatch_size:
        raise ValueError(f"PPOConfig.batch_size={cfg.batch_size} is not a multiple of "
                         f"minibatch_size={cfg.minibatch_size}; make it one")
    if cfg.max_kl <= 0:
        raise ValueError(f"PPOConfig.max_kl={cfg.max_kl}: the KL ceiling must be positive")


def run_ppo(cfg: PPOConfig, run_dir, live_plot: Callable[[int, dict], object] | None = None,
            progress: bool = True, paths: PPOPaths | None = None, curve_every: int = 0,
            curve_prompts: int = 96) -> dict:
    """Stage `ppo`: train RUN_DIR/ppo/model from RUN_DIR/sft/model against RUN_DIR/rm/, then
    report gold, proxy reward, KL to SFT and the win rate against SFT on held-out prompts.

    Runs on one CPU, one GPU, or several processes under `accelerate launch` (the same code).
    `live_plot(step, metrics)` is called after every step (see `plots.LivePanels`). A checkpoint
    is saved every `cfg.save_every` steps; a re-run resumes from it. A non-finite loss or a KL
    past `cfg.max_kl` raises `PPOStopped` and leaves the last good checkpoint in place.

    `paths` runs PPO from another policy, against another reward model, into another folder (the
    iterations and the over-optimisation run do). `curve_every` > 0 measures gold, proxy and KL
    on `curve_prompts` held-out prompts before training and every `curve_every` steps
    (OUT/curve.jsonl, and `curve` in the result): the points of an over-optimisation plot.
    """
    _check_config(cfg)
    own_stage = paths is None  # stage `ppo` itself, not a run of iterate, eval or the ladder
    paths = paths or PPOPaths.stage(run_dir, cfg)
    with StageTimer() as timer:
        run = load_run(cfg, run_dir, paths, curve_prompts if curve_every > 0 else 0)
        if curve_every > 0 and not run.state.curve:
            measure_curve(run, 0)
        bar = tqdm(range(run.state.step, cfg.steps), desc="ppo", disable=not (progress and run.main),
                   initial=run.state.step, total=cfg.steps)
        for step in bar:
            metrics = ppo_step(run, step)
            if run.main:
                # Every step, so a stopped or killed run still shows its curves up to the end.
                (run.out / HISTORY).write_text("".join(json.dumps(h) + "\n" for h in run.state.history),
                                               encoding="utf-8")
                bar.set_postfix(proxy=metrics["proxy_reward"], gold=metrics["gold"], kl=metrics["kl"])
                if live_plot is not None:
                    live_plot(step + 1, metrics)
            if curve_every > 0 and ((step + 1) % curve_every == 0 or step + 1 == cfg.steps):
                measure_curve(run, step + 1)
            if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                save_checkpoint(run)
        bar.close()
        result = finish(run, progress, curve_every)
    if run.main:
        result["reward"] = cfg.reward
        result["seconds"] = round(timer.seconds, 1)
        if cfg.ladder and cfg.reward == "rm" and own_stage and run.processes == 1:
            with StageTimer() as ladder_timer:
                result |= reward_ladder(cfg, run_dir, progress)
            result["ladder_seconds"] = round(ladder_timer.seconds, 1)
            result["seconds"] = round(timer.seconds + ladder_timer.seconds, 1)
    return result



def main(argv: Sequence[str] | None = None) -> int:
    """`accelerate launch [--num_processes N] -m rlhf_course.ppo --out RUN_DIR [--set FIELD=VALUE]`:
    the `ppo` stage in several processes (data-parallel); the main process writes the report."""
    parser = argparse.ArgumentParser(prog="python -m rlhf_course.ppo", description=main.__doc__)
    parser.add_argument("--out", required=True, help="the run folder (with sft/ and rm/ in it)")
    parser.add_argument("--profile", default="cpu", help="hardware profile (default cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a PPOConfig field, e.g. --set steps=10")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        overrides[key] = parse_field(PPOConfig, key, raw)
    try:
        result = run_ppo(PPOConfig.preset(args.profile, **overrides), args.out, progress=False)
    except PPOStopped as err:
        print(f"error: {err}")
        return 1
    if result:
        update_report(args.out, "ppo", {**result, "profile": args.profile}, replace=True)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
