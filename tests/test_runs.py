"""Run folders: the report, stage inputs and their errors, recorded metrics, cost helpers."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf_course import runs
from rlhf_course.runs import (
    CorruptRunFile,
    CorruptStageOutput,
    MissingStageOutput,
    StageTimer,
    peak_rss_mb,
    raise_corrupt,
    read_metrics,
    read_report,
    record_metrics,
    require,
    stage_dir,
    update_report,
)


def test_stage_dir_creates_it(tmp_path):
    path = stage_dir(tmp_path / "run", "sft")
    assert path == tmp_path / "run" / "sft"
    assert path.is_dir()
    assert stage_dir(tmp_path / "run", "sft") == path  # idempotent


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "a b"])
def test_stage_names_must_be_one_path_component(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid stage"):
        stage_dir(tmp_path, bad)


def test_report_starts_empty(tmp_path):
    assert read_report(tmp_path) == {}
    assert read_report(tmp_path / "does-not-exist") == {}


def test_update_report_merges_and_keeps_other_stages(tmp_path):
    update_report(tmp_path, "base", {"gold": 0.12, "seconds": 150.2})
    update_report(tmp_path, "sft", {"gold": 0.47})
    report = update_report(tmp_path, "base", {"peak_rss_mb": 900})
    expected = {"base": {"gold": 0.12, "seconds": 150.2, "peak_rss_mb": 900}, "sft": {"gold": 0.47}}
    assert report == expected
    assert json.loads((tmp_path / "report.json").read_text()) == expected
    # Stages keep the order they first reported in, which is the course's order.
    assert list(read_report(tmp_path)) == ["base", "sft"]


def test_update_report_replace_drops_stale_keys(tmp_path):
    update_report(tmp_path, "base", {"gold": 0.12, "old": 1})
    update_report(tmp_path, "sft", {"gold": 0.47})
    report = update_report(tmp_path, "base", {"gold": 0.2}, replace=True)
    assert report == {"base": {"gold": 0.2}, "sft": {"gold": 0.47}}


def test_update_report_is_atomic(tmp_path, monkeypatch):
    update_report(tmp_path, "base", {"gold": 0.12})
    before = (tmp_path / "report.json").read_text()

    def crash(src, dst):
        raise OSError("simulated crash during the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        update_report(tmp_path, "sft", {"gold": 0.5})
    # The old report is intact and no temporary file is left behind.
    assert (tmp_path / "report.json").read_text() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_report_names_the_file_and_what_to_do(tmp_path):
    (tmp_path / "report.json").write_text('{"base": {"gold": 0.1')  # truncated
    with pytest.raises(CorruptRunFile) as info:
        read_report(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "report.json") in message
    assert "line 1" in message
    assert "delete it" in message
    with pytest.raises(CorruptRunFile):
        update_report(tmp_path, "sft", {"gold": 0.5})


def test_report_must_be_an_object(tmp_path):
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(CorruptRunFile, match="JSON object"):
        read_report(tmp_path)


def test_report_rejects_nan(tmp_path):
    with pytest.raises(ValueError, match="'gold'"):
        update_report(tmp_path, "base", {"gold": float("nan")})
    assert not (tmp_path / "report.json").exists()


def test_require_returns_an_existing_path(tmp_path):
    (stage_dir(tmp_path, "base") / "model").mkdir()
    assert require(tmp_path, "base", "model") == tmp_path / "base" / "model"


def test_require_missing_names_path_stage_and_command(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "course_root", lambda start=None: None)  # as outside a checkout: the path as given
    with pytest.raises(MissingStageOutput) as info:
        require(tmp_path, "base", "model", profile="cpu")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(tmp_path / "base" / "model") in message
    assert "stage 'base'" in message
    assert f"rlhf-course run --profile cpu --out {tmp_path} --stages base" in message


def test_require_takes_the_profile_from_the_report(tmp_path):
    update_report(tmp_path, "base", {"profile": "t4"})
    with pytest.raises(MissingStageOutput, match="--profile t4 --out"):
        require(tmp_path, "sft", "model")


def test_require_without_a_known_profile_lets_the_cli_detect_it(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "course_root", lambda start=None: None)  # as outside a checkout: the path as given
    run_dir = tmp_path / "no such run"
    with pytest.raises(MissingStageOutput) as info:
        require(run_dir, "base", "model")
    message = str(info.value)
    assert "does not exist" in message
    # The path is shell-quoted so the command can be pasted as is.
    assert f"rlhf-course run --out '{run_dir}' --stages base" in message


def test_raise_corrupt_keeps_the_cause(tmp_path):
    path = stage_dir(tmp_path, "comparisons") / "rankings.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(CorruptStageOutput) as info:
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise_corrupt(tmp_path, "comparisons", "rankings.jsonl", err, profile="cpu")
    message = str(info.value)
    assert str(path) in message
    assert "JSONDecodeError" in message
    assert "--stages comparisons" in message
    assert isinstance(info.value.__cause__, json.JSONDecodeError)
    assert isinstance(info.value, CorruptRunFile)


def test_raise_corrupt_with_a_description(tmp_path):
    with pytest.raises(CorruptStageOutput, match="3 of 5 shards"):
        raise_corrupt(tmp_path, "base", "model", "3 of 5 shards")


def test_record_metrics_writes_and_merges(tmp_path):
    path = record_metrics(tmp_path, "03_sft", {"gold": 0.47, "family": "premise"})
    assert path == tmp_path / "metrics" / "03_sft.json"
    record_metrics(tmp_path, "03_sft", {"win_rate": 0.86, "gold": 0.5})
    assert read_metrics(tmp_path, "03_sft") == {"gold": 0.5, "family": "premise", "win_rate": 0.86}
    assert not list(path.parent.glob("*.tmp"))


def test_record_metrics_converts_numpy_and_torch_scalars(tmp_path):
    record_metrics(
        tmp_path,
        "m",
        {"a": np.float32(0.5), "b": np.int64(3), "c": torch.tensor(2.0), "d": np.bool_(True)},
    )
    assert read_metrics(tmp_path, "m") == {"a": 0.5, "b": 3, "c": 2.0, "d": True}


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), np.float64("nan"), torch.tensor(float("nan"))]
)
def test_record_metrics_rejects_nan_with_the_key(tmp_path, bad):
    with pytest.raises(ValueError) as info:
        record_metrics(tmp_path, "m", {"ok": 1.0, "loss": bad})
    assert "'loss'" in str(info.value)
    assert "finite" in str(info.value)
    assert not (tmp_path / "metrics" / "m.json").exists()


def test_record_metrics_rejects_non_json_values(tmp_path):
    with pytest.raises(TypeError, match="'curve'.*ndarray"):
        record_metrics(tmp_path, "m", {"curve": np.zeros((2, 2)), "set": {1}})
    with pytest.raises(TypeError, match="object"):
        record_metrics(tmp_path, "m", {"x": object()})


def test_read_metrics_missing_lists_what_was_recorded(tmp_path):
    record_metrics(tmp_path, "01_base", {"gold": 0.1})
    with pytest.raises(FileNotFoundError) as info:
        read_metrics(tmp_path, "03_sft")
    assert "01_base" in str(info.value)
    assert "record_metrics" in str(info.value)


def test_peak_rss_is_plausible():
    # This test process has imported torch: more than 10 MiB, less than 1 TiB.
    assert 10 < peak_rss_mb() < 2**20


def _rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_release_memory_hands_freed_heap_back():
    # 1 KiB blocks come from glibc's heap, not from mmap; keeping every 64th alive pins the heap
    # open, so freeing the others alone gives the operating system nothing back.
    blocks = [bytearray(1024) for _ in range(300_000)]
    kept = blocks[::64]
    del blocks
    before = _rss_mb()
    assert runs.release_memory() is True  # this project runs on Linux with glibc
    after = _rss_mb()
    assert before - after > 100, (before, after)
    assert len(kept) == 4688


def test_importing_the_package_caps_onednn_primitive_cache_unless_set():
    import subprocess
    import sys

    code = "import os, rlhf_course; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "32"
    env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "256"  # the user's own choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "256"


def test_stage_timer_measures_the_block():
    with StageTimer() as timer:
        time.sleep(0.05)
        inside = timer.seconds
    assert 0.04 < inside
    assert 0.04 < timer.seconds < 5
    assert timer.seconds == timer.seconds  # frozen once the block ends
    assert StageTimer().seconds == 0.0


def test_every_public_function_has_a_docstring():
    for name in dir(runs):
        obj = getattr(runs, name)
        if (
            not name.startswith("_")
            and callable(obj)
            and getattr(obj, "__module__", "") == runs.__name__
        ):
            assert obj.__doc__, f"runs.{name} has no docstring"


# --- the course's run folder and its profile ----------------------------------------------------


def _fake_checkout(root):
    (root / "notebooks").mkdir(parents=True)
    (root / "rlhf_course").mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'rlhf-course'\n")
    return root


def test_run_dir_is_the_same_from_the_notebooks_folder_and_the_root(tmp_path, monkeypatch):
    root = _fake_checkout(tmp_path / "course")
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    expected = str(root.resolve() / "runs" / "course")
    assert runs.resolve_run_dir(None, start=root / "notebooks") == expected
    assert runs.resolve_run_dir(None, start=root) == expected
    # A relative run folder of the learner's own is taken from the root too.
    assert runs.resolve_run_dir("runs/mine", start=root / "notebooks") == str(root.resolve() / "runs" / "mine")
    assert runs.resolve_run_dir(str(tmp_path / "abs"), start=root) == str(tmp_path / "abs")


def test_run_dir_env_var_points_everything_at_a_prepared_run(tmp_path, monkeypatch):
    root = _fake_checkout(tmp_path / "course")
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(tmp_path / "workshop"))
    assert runs.resolve_run_dir(None, start=root / "notebooks") == str(tmp_path / "workshop")
    assert runs.resolve_run_dir("runs/x", start=root) == str(root.resolve() / "runs" / "x")  # an explicit one wins


def test_outside_a_checkout_the_run_dir_stays_relative(tmp_path, monkeypatch):
    # As on Colab, where the package comes from git and colab_run_dir then moves it into Drive.
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    (tmp_path / "pyproject.toml").write_text("")  # not a checkout itself: no notebooks/ nor rlhf_course/
    assert runs.course_root(tmp_path) != tmp_path.resolve()
    monkeypatch.setattr(runs, "course_root", lambda start=None: None)
    assert runs.resolve_run_dir(None, start=tmp_path) == "runs/course"


def test_profile_is_detected_recorded_and_reused(tmp_path, monkeypatch):
    import rlhf_course.hardware as hardware

    monkeypatch.setattr(runs, "detect_profile", lambda override=None: hardware.ProfileChoice("t4", "fake T4"))
    run = tmp_path / "run"
    assert runs.recorded_profile(run) is None
    assert runs.resolve_profile(run) == "t4"  # a new run: detected, then recorded
    assert json.loads((run / runs.PROFILE_FILE).read_text()) == {"profile": "t4"}
    monkeypatch.setattr(runs, "detect_profile", lambda override=None: hardware.ProfileChoice("cpu", "no GPU"))
    assert runs.resolve_profile(run) == "t4"  # a later notebook keeps the run's, whatever it detects
    assert runs.resolve_profile(run, "t4") == "t4"


def test_a_profile_other_than_the_runs_is_refused_with_what_to_do(tmp_path):
    run = tmp_path / "run"
    assert runs.resolve_profile(run, "cpu") == "cpu"
    with pytest.raises(runs.ProfileMismatch) as info:
        runs.resolve_profile(run, "t4")
    message = str(info.value)
    assert "'cpu'" in message and "'t4'" in message and "profile=None" in message
    assert json.loads((run / runs.PROFILE_FILE).read_text()) == {"profile": "cpu"}  # unchanged
    with pytest.raises(ValueError, match="unknown profile"):
        runs.resolve_profile(tmp_path / "other", "tpu")


def test_a_run_made_before_profile_json_keeps_its_reported_profile(tmp_path):
    update_report(tmp_path, "base", {"gold": 0.2, "profile": "cpu"})
    assert runs.recorded_profile(tmp_path) == "cpu"
    with pytest.raises(runs.ProfileMismatch):
        runs.resolve_profile(tmp_path, "a100")


def test_missing_stage_names_the_whole_chain_and_the_notebooks(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "course_root", lambda start=None: None)  # as outside a checkout: the path as given
    run_dir = tmp_path / "run"
    with pytest.raises(MissingStageOutput) as info:
        require(run_dir, "rm", "model", profile="cpu")
    message = str(info.value)
    assert "(notebook 05_reward_model.ipynb)" in message
    assert "needs base, demos, sft, comparisons first" in message
    assert f"rlhf-course run --profile cpu --out {run_dir} --stages base,demos,sft,comparisons,rm" in message
    assert "from 01_base_model.ipynb to 05_reward_model.ipynb" in message
    # Stages the run has finished are not run again.
    for stage in ("base", "demos", "sft"):
        update_report(run_dir, stage, {"gold": 0.5})
    with pytest.raises(MissingStageOutput, match="--stages comparisons,rm\n") as info:
        require(run_dir, "rm", "model", profile="cpu")
    assert "from 04_comparisons.ipynb to 05_reward_model.ipynb" in str(info.value)
    assert runs.stages_to_run(run_dir, "moderation") == ["moderation"]  # it needs nothing
    assert runs.stages_to_run(run_dir, "eval") == ["comparisons", "rm", "ppo", "eval"]


def test_the_command_shows_a_run_inside_the_checkout_from_its_root(tmp_path, monkeypatch):
    root = _fake_checkout(tmp_path / "course")
    monkeypatch.chdir(root / "notebooks")
    with pytest.raises(MissingStageOutput) as info:
        require(root / "runs" / "course", "base", "model", profile="cpu")
    assert "rlhf-course run --profile cpu --out runs/course --stages base\n" in str(info.value)


def test_stage_order_and_notebooks_cover_the_clis_stages():
    from rlhf_course import cli

    assert list(runs.STAGE_INPUTS) == list(cli.STAGES)
    assert set(runs.STAGE_NOTEBOOKS) == set(cli.STAGES)
    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    assert all((notebooks / name).exists() for name in runs.STAGE_NOTEBOOKS.values())


def test_the_printed_command_run_from_the_root_fills_the_notebooks_run(tmp_path, monkeypatch):
    import shlex

    from rlhf_course import cli

    root = _fake_checkout(tmp_path / "course")
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    monkeypatch.chdir(root / "notebooks")  # notebook 04 opened with no run yet
    run_dir = runs.resolve_run_dir(None)
    with pytest.raises(MissingStageOutput) as info:
        require(run_dir, "sft", "model", profile="cpu")
    command = next(line.strip() for line in str(info.value).splitlines() if line.strip().startswith("rlhf-course"))
    seen = {}
    monkeypatch.setattr(cli, "run_stages", lambda stages, profile, out, *a, **k: seen.update(
        stages=list(stages), profile=profile, out=Path(out).resolve()) or 0)
    monkeypatch.chdir(root)  # pasted in a terminal at the repo root, as the message says
    assert cli.main(shlex.split(command)[1:]) == 0
    assert seen == {"stages": ["base", "demos", "sft"], "profile": "cpu", "out": Path(run_dir)}
