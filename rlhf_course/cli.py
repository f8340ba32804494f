"""`rlhf-course`: run the course's stages headless, as an instructor preparing checkpoints would.

    rlhf-course run --profile cpu --out runs/course              # every stage built so far
    rlhf-course run --profile cpu --out runs/course --stages base  # just one
    rlhf-course profile                                          # which profile fits this machine

Each stage is one function `fn(cfg, run_dir) -> dict` in its own module; the CLI builds the
stage's config from its preset, times the call and writes the returned figures into
`RUN_DIR/report.json`. The notebooks call the same functions, so both paths share one code path.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_course import runs
from rlhf_course.config import parse_field
from rlhf_course.hardware import PROFILES, ProfileChoice, detect_profile


@dataclass(frozen=True)
class Stage:
    """Where a stage lives: its module, whose `run_<stage>(cfg, run_dir)` runs it, and its config
    class ("module:Class"), built as `Class.preset(profile, seed=..., **overrides)`."""

    module: str
    config: str

    def entry(self, name: str) -> str:
        """"module:run_<name>", the function that runs stage `name`."""
        return f"{self.module}:run_{name}"


# The stages, in the order the course runs them: the one list of them. Modules are imported
# lazily so that `rlhf-course profile` (or a typo in --stages) does not pay for their deps.
STAGES: dict[str, Stage] = {
    "base": Stage("rlhf_course.pretrain", "rlhf_course.config:BaseConfig"),
    "demos": Stage("rlhf_course.sft", "rlhf_course.config:SFTConfig"),
    "sft": Stage("rlhf_course.sft", "rlhf_course.config:SFTConfig"),
    "comparisons": Stage("rlhf_course.comparisons", "rlhf_course.config:RewardConfig"),
    "rm": Stage("rlhf_course.reward", "rlhf_course.config:RewardConfig"),
    "ppo": Stage("rlhf_course.ppo", "rlhf_course.config:PPOConfig"),
    "iterate": Stage("rlhf_course.iterate", "rlhf_course.config:IterateConfig"),
    "eval": Stage("rlhf_course.evaluate", "rlhf_course.config:EvalConfig"),
    "moderation": Stage("rlhf_course.moderation", "rlhf_course.config:ModerationConfig"),
    "beyond": Stage("rlhf_course.beyond", "rlhf_course.config:BeyondConfig"),
}

# Stages a plain `rlhf-course run` leaves out; name them in --stages to run them.
OPTIONAL = ("beyond",)

# Report keys the CLI itself fills in; the summary shows the stage's own figures beside them.
_BOOKKEEPING = ("seconds", "peak_rss_mb", "profile", "seed")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rlhf-course` console script; returns the process exit code."""
    parser, run_parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "profile":
        choice = detect_profile()
        print(choice.name)
        print(choice.reason)
        return 0
    if args.command == "report":
        return write_report(args.run_dir, args.out)
    stages = parse_stages(args.stages, run_parser)
    overrides = parse_overrides(args.set, stages, run_parser)
    return run_stages(stages, args.profile, args.out, args.seed, overrides)


def parse_stages(spec: str | None, parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Turn `"sft,base"` into `["base", "sft"]`: known names only, in the course's order.

    `None` means every registered stage but the optional ones (OPTIONAL). An unknown name is a
    usage error listing valid names.
    """
    if spec is None:
        return [s for s in STAGES if s not in OPTIONAL]
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown or not wanted:
        message = (
            f"unknown stage(s) {', '.join(unknown)}" if unknown else "--stages is empty"
        ) + f"; valid stages, in order: {', '.join(STAGES)}"
        if parser is not None:
            parser.error(message)  # exits with status 2 and the usage line
        raise ValueError(message)
    # The course's order, not the command line's: a later stage reads an earlier one's outputs.
    return [s for s in STAGES if s in wanted]


def parse_overrides(
    items: Sequence[str] | None,
    stages: Sequence[str],
    parser: argparse.ArgumentParser | None = None,
) -> dict[str, dict[str, Any]]:
    """Parse `--set STAGE.FIELD=VALUE` items into `{stage: {field: value}}`.

    VALUE is converted to the field's type (int, float, bool, str), so `--set base.steps=50`
    gives an int. Unknown stages or fields are usage errors naming the valid ones.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        try:
            key, raw = item.split("=", 1)
            stage, field = key.split(".", 1)
            if stage not in STAGES:
                raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(STAGES)}")
            value = parse_field(load_config_class(stage), field, raw)
        except ValueError as err:
            message = f"--set {item!r}: {err} (expected STAGE.FIELD=VALUE, e.g. base.steps=50)"
            if parser is not None:
                parser.error(message)
            raise ValueError(message) from err
        out.setdefault(stage, {})[field] = value
    not_run = sorted(set(out) - set(stages))
    if not_run:
        message = f"--set names stage(s) {', '.join(not_run)} that --stages does not run"
        if parser is not None:
            parser.error(message)
        raise ValueError(message)
    return out


def run_stages(
    stages: Sequence[str],
    profile: str | None,
    out: str | Path | None,
    seed: int | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> int:
    """Run `stages` in order into the run folder `out` and print a summary; return an exit code.

    `out=None` means the course's run folder, the one the notebooks use (`runs.resolve_run_dir`:
    `runs/course` at the repo root, or `$RLHF_COURSE_RUN_DIR`). `profile=None` takes the run's
    recorded profile, or detects one for a new run; a profile other than the run's is refused
    (exit code 2). A stage whose input is missing or corrupt stops the run with that error's
    message (exit code 1); stages that finished before it keep their outputs and report
    entries, so rerunning from it is enough.
    """
    run_dir = Path(out) if out is not None else Path(runs.resolve_run_dir(None))
    # resolve_profile below creates the folder; a run that then finishes no stage removes it again.
    new_folder = not run_dir.exists()
    recorded = runs.recorded_profile(run_dir)
    if profile is None and recorded is not None:
        choice = ProfileChoice(recorded, f"the profile {run_dir} was made with")
    else:
        choice = detect_profile(profile)
    try:
        runs.resolve_profile(run_dir, choice.name)
    except runs.ProfileMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"profile: {choice.name} ({choice.reason})")
    print(f"run folder: {run_dir}")
    done: list[str] = []
    try:
        # Build every config and import every stage before running any, so a bad override or a
        # broken import fails now rather than after the earlier stages' minutes of training.
        plan = []
        for stage in stages:
            stage_overrides = dict((overrides or {}).get(stage, {}))
            if seed is not None:
                stage_overrides["seed"] = seed
            cfg = load_config_class(stage).preset(choice.name, **stage_overrides)
            plan.append((stage, cfg, load_stage(stage)))
        for i, (stage, cfg, fn) in enumerate(plan, 1):
            print(f"\n== stage {i}/{len(stages)}: {stage} ({STAGES[stage].entry(stage)})", flush=True)
            try:
                with runs.StageTimer() as timer:
                    result = fn(cfg, run_dir)
            except (runs.MissingStageOutput, runs.CorruptRunFile, runs.StageStopped) as err:
                verb = "stopped" if isinstance(err, runs.StageStopped) else "cannot run"
                print(f"\nerror: stage {stage!r} {verb}:\n{err}", file=sys.stderr)
                removed = new_folder and not done and _remove_unused_run_dir(run_dir)
                _print_summary(run_dir, done, removed)
                return 1
            entry = _as_entry(stage, result)
            # A stage may time itself more precisely (excluding, say, dataset download); keep its own.
            entry.setdefault("seconds", round(timer.seconds, 1))
            entry.setdefault("peak_rss_mb", round(runs.peak_rss_mb(), 1))
            entry.setdefault("profile", choice.name)
            if hasattr(cfg, "seed"):
                entry.setdefault("seed", cfg.seed)
            runs.update_report(run_dir, stage, entry, replace=True)
            done.append(stage)
            # The next stage starts from what this one freed, not from its high-water mark.
            runs.release_memory()
    finally:
        # Any other error (a bad override, a stage's bug) must not leave the new folder behind either.
        if new_folder and not done and run_dir.exists():
            _remove_unused_run_dir(run_dir)
    _print_summary(run_dir, done)
    return 0


def _remove_unused_run_dir(run_dir: Path) -> bool:
    """Remove a run folder this command created when it holds nothing but the profile record and
    empty folders (a stage that failed before writing anything); returns whether it did.

    A failed stage that wrote something (a stopped PPO's checkpoints, say) keeps the folder, so
    rerunning can resume from it."""
    written = [p for p in run_dir.rglob("*") if not p.is_dir() and p != run_dir / runs.PROFILE_FILE]
    if written:
        return False
    shutil.rmtree(run_dir)
    return True


def write_report(run_dir: str | Path, out: str | Path | None = None) -> int:
    """Write the run's HTML report and print its path; return an exit code (1, with the reason,
    when the run has no readable report.json)."""
    from rlhf_course.report import render_report  # imports matplotlib: only when asked

    try:
        path = render_report(run_dir, out)
    except (runs.MissingStageOutput, runs.CorruptRunFile) as err:
        print(f"error: cannot write the report:\n{err}", file=sys.stderr)
        return 1
    print(path)
    return 0


def load_stage(stage: str) -> Callable[[Any, Path], dict[str, Any]]:
    """Import and return the function that runs `stage` (`STAGES[stage].entry(stage)`)."""
    return _import(STAGES[stage].entry(stage), f"stage {stage!r}")


def load_config_class(stage: str) -> Any:
    """Import and return the config class of `stage` (`STAGES[stage].config`)."""
    if stage not in STAGES:
        raise KeyError(f"stage {stage!r} is not in rlhf_course.cli.STAGES")
    return _import(STAGES[stage].config, f"config of stage {stage!r}")


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="rlhf-course",
        description="Run the RLHF course's stages headless (SFT, reward model, PPO, ...).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run stages into a run folder",
        description="Run the course's stages in order, writing RUN_DIR/<stage>/ and "
        "RUN_DIR/report.json.",
        epilog=f"stages, in order: {', '.join(STAGES)}",
    )
    run.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="hardware profile (default: detected; see `rlhf-course profile`)",
    )
    run.add_argument(
        "--out", metavar="RUN_DIR", default=None,
        help=f"run folder (default: {runs.DEFAULT_RUN_DIR} at the repo root, or ${runs.RUN_DIR_ENV})"
    )
    run.add_argument(
        "--stages",
        default=None,
        help="comma-separated stages to run (default: all); they run in the course's order",
    )
    run.add_argument("--seed", type=int, default=None, help="seed for every stage's config")
    run.add_argument(
        "--set",
        action="append",
        metavar="STAGE.FIELD=VALUE",
        help="override one config field, e.g. --set base.steps=50 (repeatable)",
    )
    sub.add_parser("profile", help="print the detected hardware profile and why")
    report = sub.add_parser(
        "report",
        help="write a run's HTML report",
        description="Write one self-contained HTML page of a run's figures and plots, from "
        "RUN_DIR/report.json (no model is loaded).",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    report.add_argument(
        "--out", metavar="FILE", default=None, help="where to write it (default: RUN_DIR/report.html)"
    )
    return parser, run


def _import(target: str, what: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"cannot load {what} from {target!r}: {err}") from err


def _as_entry(stage: str, result: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    if not isinstance(result, dict):
        raise TypeError(
            f"stage {stage!r} ({STAGES[stage].entry(stage)}) returned {type(result).__name__}; a stage "
            "function must return a dict of figures for report.json"
        )
    return dict(result)


def _print_summary(run_dir: Path, stages: Sequence[str], removed: bool = False) -> None:
    """The figures and cost of each finished stage, then where the report is; `removed` says the
    run folder was created and removed again by this command."""
    report = runs.read_report(run_dir)
    print("\nsummary")
    for stage in stages:
        entry = report.get(stage, {})
        figures = [
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in entry.items()
            if k not in _BOOKKEEPING and isinstance(v, (int, float, str, bool))
        ][:6]
        seconds, rss = entry.get("seconds"), entry.get("peak_rss_mb")
        cost = (
            f"{seconds:8.1f} s" if isinstance(seconds, (int, float)) else f"{'?':>8} s",
            f"{rss:7.0f} MiB peak" if isinstance(rss, (int, float)) else f"{'?':>7} MiB peak",
        )
        print(f"  {stage:<12} {cost[0]} {cost[1]}  {'  '.join(figures)}")
    if not stages:
        print("  no stage finished")
    report_path = run_dir / runs.REPORT_NAME
    if report_path.exists():
        print(f"report: {report_path}")
    elif removed:
        print(f"no report: nothing was written, so the new run folder {run_dir} was removed again")
    else:
        print(f"no report: {report_path} was not written, as no stage finished")


if __name__ == "__main__":
    raise SystemExit(main())
