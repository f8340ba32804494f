"""Same seed, same numbers: a stage run in a notebook's kernel, by the CLI in a fresh process
(another hash seed, its own torch default seed) or after other work has drawn from torch's
generator gives identical weights and identical report figures."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from _runs import TINY_PPO, TINY_RM, copy_run, tiny_run

from rlhf_course.config import PPOConfig, RewardConfig
from rlhf_course.ppo import run_ppo
from rlhf_course.reward import run_rm
from rlhf_course.runs import seed_everything

# What a rerun may change: time and memory.
VOLATILE = {"seconds", "peak_rss_mb", "eval_seconds", "profile", "seed"}


def test_seed_everything_is_stable_and_differs_by_stage():
    assert seed_everything(0, "rm") == seed_everything(0, "rm")
    assert len({seed_everything(s, st) for s in (0, 1) for st in ("rm", "ppo")}) == 4
    seed_everything(3, "rm")
    a = torch.randn(4)
    torch.randn(100)  # whatever ran before, the stage starts from the same state
    seed_everything(3, "rm")
    assert torch.equal(a, torch.randn(4))


def _digest(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _figures(entry: dict) -> dict:
    # Through JSON, as report.json holds them (tuples become lists).
    return json.loads(json.dumps({k: v for k, v in entry.items() if k not in VOLATILE}))


@pytest.mark.slow
def test_a_stage_gives_the_same_numbers_in_a_notebook_kernel_and_in_a_fresh_cli_process(tmp_path):
    source = tiny_run(tmp_path / "source")
    overrides = {"rm": TINY_RM, "ppo": TINY_PPO}

    # As a notebook would: in this process, after something else has drawn random numbers.
    here = copy_run(source, tmp_path / "here")
    torch.randn(1000)
    in_process = {
        "rm": run_rm(RewardConfig.preset("cpu", **TINY_RM), here, progress=False),
        "ppo": run_ppo(PPOConfig.preset("cpu", **TINY_PPO), here, progress=False),
    }

    # As the CLI would: a fresh process with its own hash seed, both stages in one run.
    cli = copy_run(source, tmp_path / "cli")
    args = [f"{stage}.{k}={v}" for stage, fields in overrides.items() for k, v in fields.items()]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_course.cli", "run", "--profile", "cpu", "--out", str(cli),
         "--stages", "rm,ppo", *[x for a in args for x in ("--set", a)]],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((cli / "report.json").read_text())

    for stage in ("rm", "ppo"):
        assert _digest(here / stage / "model" / "model.safetensors") == \
            _digest(cli / stage / "model" / "model.safetensors"), f"{stage} weights differ"
        assert _figures(in_process[stage]) == _figures(report[stage]), f"{stage} figures differ"
