"""A tiny pipeline, base through moderation, gives the report recorded in
tests/fixtures/tiny_pipeline_report.json: moving code between modules must not change a figure.

Every stage runs for real on the tiny settings the other tests use (a 1-layer model, a few
steps each), in one process and in course order, with the same seeds. Only what a rerun may
change is left out of the comparison: seconds, memory, timestamps and paths.

The reference was recorded on the machine class CI uses (see its `machine` entry): float
rounding in torch's CPU kernels depends on the instruction set, so on another CPU or torch
build the figures may differ without any code having changed, and the test says so rather
than comparing. To record it again, on purpose (a change meant to move figures), run
`python tests/test_pipeline_unchanged.py` and commit the file with the reason.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_pipeline_report.json"
VOLATILE = {"seconds", "peak_rss_mb", "samples_per_second", "tokens_per_second", "ranked_at"}
"""Report keys whose values a rerun on the same machine may change (wall time and memory)."""


def machine() -> dict:
    """What the figures' last bits depend on besides the code: the CPU and the torch build."""
    import torch

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return {"machine": platform.machine(), "isa": isa, "torch": torch.__version__}


def stable(value):
    """`value` without the volatile keys and with floats rounded to 6 decimals (the report's
    own precision); paths are dropped because the run folder differs from run to run."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items()
                if k not in VOLATILE and not k.endswith(("_path", "_dir", "_seconds", "_per_s"))}
    if isinstance(value, list):
        return [stable(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def tiny_pipeline(run: Path) -> dict:
    """Run every default stage, tiny, into `run`; return {stage: its report entry}."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _runs import TINY_PPO, TINY_RM

    from rlhf_course.comparisons import run_comparisons
    from rlhf_course.config import (
        BaseConfig,
        EvalConfig,
        IterateConfig,
        ModerationConfig,
        PPOConfig,
        RewardConfig,
        SFTConfig,
    )
    from rlhf_course.evaluate import run_eval
    from rlhf_course.iterate import run_iterate
    from rlhf_course.moderation import run_moderation
    from rlhf_course.ppo import run_ppo
    from rlhf_course.pretrain import run_base
    from rlhf_course.reward import run_rm
    from rlhf_course.sft import run_demos, run_sft

    base = BaseConfig.preset("cpu", steps=12, corpus_docs=400, d_model=64, n_heads=2, d_ff=128, n_layers=1,
                             vocab_size=320, batch_size=8, eval_prompts=200, max_new_tokens=8)
    sft = SFTConfig.preset("cpu", dialogues=48, epochs=1.0, batch_size=8, save_steps=4, logging_steps=1,
                           eval_prompts=200, max_new_tokens=8, eval_batch_size=100)
    rm = RewardConfig.preset("cpu", **TINY_RM)
    ppo = PPOConfig.preset("cpu", **TINY_PPO)
    small_ppo = PPOConfig.preset("cpu", **{**TINY_PPO, "steps": 2})
    report = {
        "base": run_base(base, run, progress=False),
        "demos": run_demos(sft, run),
        "sft": run_sft(sft, run, progress=False),
        "comparisons": run_comparisons(rm, run, progress=False),
        "rm": run_rm(rm, run, progress=False),
        "ppo": run_ppo(ppo, run, progress=False),
    }
    report["iterate"] = run_iterate(IterateConfig.preset("cpu", rounds=2, heldout_prompts=8), run, progress=False,
                                    configs=(RewardConfig.preset("cpu", **{**TINY_RM, "prompts": 12}), small_ppo))
    report["eval"] = run_eval(
        EvalConfig.preset("cpu", behaviour_prompts=3, phrasing_questions=1, bon_prompts=4, bon_samples=4,
                          weak_kl_steps=2, curve_every=1, curve_prompts=6, max_new_tokens=8,
                          eval_batch_size=100, eval_prompts=200),
        run, progress=False, ppo_cfg=small_ppo)
    report["moderation"] = run_moderation(ModerationConfig.preset("cpu", train_tasks=300, steps=60), run,
                                          progress=False)
    return json.loads(json.dumps(report))  # as report.json holds it (tuples as lists)


@pytest.mark.slow
def test_the_tiny_pipeline_gives_the_recorded_report(tmp_path):
    recorded = json.loads(FIXTURE.read_text())
    here = machine()
    if recorded["machine"] != here:
        pytest.skip(f"the reference was recorded on {recorded['machine']}, this is {here}: "
                    "CPU kernels may round differently here, so equal figures cannot be expected")
    got = stable(tiny_pipeline(tmp_path / "run"))
    want = recorded["report"]
    assert list(got) == list(want)
    for stage in want:  # stage by stage, so a failure names the first stage that moved
        assert got[stage] == want[stage], f"stage {stage!r} reports other figures than before"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = stable(tiny_pipeline(Path(tmp) / "run"))
    FIXTURE.write_text(json.dumps({"machine": machine(), "report": report}, indent=1, sort_keys=False) + "\n")
    print(f"wrote {FIXTURE}")
