"""The cpu pipeline for several seeds: does RLHF beat SFT for more than the seed the notebooks use?

    python benchmarks/seeds.py --out runs/seeds [--seeds 0,1,2] [--stages base,...,iterate]

Each seed is one `rlhf-course run --profile cpu --seed S` into OUT/seed_S, in a child process of
its own, one after another (two at once on 2 cores more than halve both). A finished seed's run
folder is reused: its report.json is read, not recomputed, so an interrupted benchmark resumes.
Then one table, a row per seed, of the figures the course stands on, every one on the main
held-out set but the probe's:

    seed | base | SFT | RM acc (gold, clear) | PPO | PPO on gold | PPO on taste | last round | SFT probe | PPO probe

Record it in benchmarks/RESULTS.md with the date and the machine (`--out-md FILE` appends it).
Each seed takes about as long as `bash scripts/course.sh` (20-25 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

STAGES = "base,demos,sft,comparisons,rm,ppo,iterate"

COLUMNS = (
    ("base", ("base", "gold")),
    ("SFT", ("sft", "gold")),
    ("RM acc", ("rm", "accuracy_gold")),
    ("PPO", ("ppo", "gold")),
    ("PPO on gold", ("ppo", "oracle_gold")),
    ("PPO on taste", ("ppo", "annotator_oracle_gold")),
    ("last round", ("iterate", "gold_last")),
    ("SFT probe", ("sft", "gold_ood")),
    ("PPO probe", ("ppo", "gold_ood")),
)
"""(column, (stage, key)) of the table, read from each seed's report.json."""


def table(reports: dict[int, dict]) -> str:
    """A Markdown table of `reports` ({seed: report.json's content}); a missing figure is '-'."""
    def cell(report: dict, stage: str, key: str) -> str:
        value = report.get(stage, {}).get(key)
        return f"{value:.3f}" if isinstance(value, (int, float)) else "-"

    lines = ["| seed | " + " | ".join(c for c, _ in COLUMNS) + " | PPO - SFT |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for seed, report in sorted(reports.items()):
        ppo, sft = report.get("ppo", {}).get("gold"), report.get("sft", {}).get("gold")
        gain = f"{ppo - sft:+.3f}" if isinstance(ppo, float) and isinstance(sft, float) else "-"
        lines.append(f"| {seed} | " + " | ".join(cell(report, *where) for _, where in COLUMNS) + f" | {gain} |")
    return "\n".join(lines)


def run_seed(seed: int, out: Path, stages: str) -> dict:
    """OUT/seed_S's report, running the pipeline there first unless every stage has finished."""
    run = out / f"seed_{seed}"
    report_path = run / "report.json"
    wanted = stages.split(",")
    if report_path.exists() and all(s in json.loads(report_path.read_text()) for s in wanted):
        return json.loads(report_path.read_text())
    subprocess.run([sys.executable, "-m", "rlhf_course.cli", "run", "--profile", "cpu", "--seed", str(seed),
                    "--out", str(run), "--stages", stages], check=True)
    return json.loads(report_path.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for one run folder per seed")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--stages", default=STAGES, help=f"stages to run (default {STAGES})")
    parser.add_argument("--out-md", type=Path, default=None, help="append the table to this Markdown file")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    reports = {seed: run_seed(seed, args.out, args.stages) for seed in seeds}
    text = (f"## {datetime.date.today()}: seeds {args.seeds}, cpu profile\n\n"
            f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}.\n\n"
            + table(reports) + "\n")
    print(text)
    if args.out_md is not None:
        with args.out_md.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
