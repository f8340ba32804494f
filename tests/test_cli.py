"""The `rlhf-course` CLI, driven with fake stages registered in this module (no training here)."""

import json
import subprocess
import sys
from dataclasses import dataclass, fields

import pytest

from rlhf_course import cli, runs
from rlhf_course.hardware import PROFILES, ProfileChoice

CALLS: list[tuple[str, object]] = []


@dataclass(frozen=True)
class FakeConfig:
    """A stage config with the `preset` classmethod the CLI expects."""

    profile: str = "cpu"
    """Hardware profile."""
    seed: int = 0
    """Seed."""
    steps: int = 10
    """Steps."""
    lr: float = 0.1
    """Learning rate."""
    fast: bool = False
    """A flag."""
    target: float | None = 6.0
    """An optional number ('none' turns it off)."""

    @classmethod
    def preset(cls, profile, **overrides):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"FakeConfig has no field(s) {unknown}")
        return cls(profile=profile, **overrides)


def run_alpha(cfg, run_dir):
    """Writes an output the next stage needs and returns figures, as a real stage does."""
    CALLS.append(("alpha", cfg))
    (runs.stage_dir(run_dir, "alpha") / "model.txt").write_text("weights")
    return {"gold": 0.125, "steps": cfg.steps}


def run_beta(cfg, run_dir):
    """Reads alpha's output, so it fails with MissingStageOutput when alpha has not run."""
    CALLS.append(("beta", cfg))
    # Passing the profile makes the suggested command exact even in a fresh run folder.
    weights = runs.require(run_dir, "alpha", "model.txt", profile=cfg.profile).read_text()
    return {"gold": 0.5, "input": weights, "seconds": 42.0}


def run_delta(cfg, run_dir):
    """Stops itself, as PPO does on a non-finite loss."""
    raise runs.StageStopped("stopped at step 3: the loss is nan; try a lower lr")


def run_gamma(cfg, run_dir):
    """Returns something that is not a dict: a bug the CLI reports clearly."""
    return 3


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch):
    CALLS.clear()
    stages = {name: cli.Stage(__name__, f"{__name__}:FakeConfig") for name in ("alpha", "beta", "gamma", "delta")}
    monkeypatch.setattr(cli, "STAGES", stages)


def run(tmp_path, *args):
    return cli.main(["run", "--profile", "cpu", "--out", str(tmp_path), *args])


def test_run_writes_the_report(tmp_path, capsys):
    assert run(tmp_path, "--stages", "alpha,beta") == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report) == ["alpha", "beta"]
    alpha = report["alpha"]
    assert alpha["gold"] == 0.125 and alpha["steps"] == 10
    assert alpha["profile"] == "cpu" and alpha["seed"] == 0
    assert alpha["seconds"] >= 0 and alpha["peak_rss_mb"] > 0
    # A stage's own timing is kept rather than overwritten.
    assert report["beta"]["seconds"] == 42.0
    assert report["beta"]["input"] == "weights"
    out = capsys.readouterr().out
    assert "summary" in out and "gold=0.125" in out
    assert str(tmp_path / "report.json") in out


def test_memory_is_released_after_every_stage(tmp_path, monkeypatch):
    released = []
    monkeypatch.setattr(cli.runs, "release_memory", lambda: released.append([n for n, _ in CALLS]))
    assert run(tmp_path, "--stages", "alpha,beta") == 0
    assert released == [["alpha"], ["alpha", "beta"]]


def test_stages_run_in_course_order_not_argument_order(tmp_path):
    assert run(tmp_path, "--stages", "beta, alpha") == 0
    assert [name for name, _ in CALLS] == ["alpha", "beta"]


def test_stage_subset_keeps_other_entries(tmp_path):
    run(tmp_path, "--stages", "alpha,beta")
    runs.update_report(tmp_path, "alpha", {"gold": 0.9})
    assert run(tmp_path, "--stages", "alpha") == 0
    report = runs.read_report(tmp_path)
    assert report["alpha"]["gold"] == 0.125  # rerun replaced the stage's entry
    assert report["beta"]["gold"] == 0.5  # untouched
    assert [name for name, _ in CALLS] == ["alpha", "beta", "alpha"]


def test_seed_and_set_reach_the_config(tmp_path):
    args = ["--stages", "alpha", "--seed", "7", "--set", "alpha.steps=3", "--set", "alpha.lr=0.5"]
    assert run(tmp_path, *args, "--set", "alpha.fast=true") == 0
    cfg = CALLS[0][1]
    assert (cfg.seed, cfg.steps, cfg.lr, cfg.fast) == (7, 3, 0.5, True)
    assert isinstance(cfg.steps, int)
    assert runs.read_report(tmp_path)["alpha"]["seed"] == 7


@pytest.mark.parametrize(
    "item, expected",
    [
        ("alpha.stepz=3", "valid fields"),
        ("omega.steps=3", "valid stages"),
        ("alpha.steps=many", "invalid literal"),
        ("alpha.fast=maybe", "true or false"),
        ("steps=3", "STAGE.FIELD=VALUE"),
        ("beta.steps=3", "does not run"),
    ],
)
def test_bad_set_is_a_usage_error(tmp_path, capsys, item, expected):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--stages", "alpha", "--set", item)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
    assert CALLS == []


def test_unknown_stage_lists_valid_stages(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run(tmp_path, "--stages", "alpha,rm")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown stage(s) rm" in err
    assert "alpha, beta, gamma, delta" in err
    assert CALLS == []  # nothing ran
    assert not (tmp_path / "report.json").exists()


def test_parse_stages_without_a_parser_raises():
    with pytest.raises(ValueError, match="valid stages"):
        cli.parse_stages("nope")
    assert cli.parse_stages(None) == ["alpha", "beta", "gamma", "delta"]


def test_missing_input_stops_with_the_command_to_produce_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runs, "course_root", lambda start=None: None)  # as outside a checkout: the path as given
    assert run(tmp_path, "--stages", "beta") == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "alpha" / "model.txt") in err
    assert "stage 'alpha'" in err
    assert f"rlhf-course run --profile cpu --out {tmp_path} --stages alpha" in err
    assert "beta" not in runs.read_report(tmp_path)


def test_optional_fields_take_none_or_their_type(tmp_path):
    assert run(tmp_path, "--stages", "alpha", "--set", "alpha.target=none") == 0
    assert CALLS[-1][1].target is None
    assert run(tmp_path, "--stages", "alpha", "--set", "alpha.target=2.5") == 0
    assert CALLS[-1][1].target == 2.5


def test_a_stage_that_stops_itself_exits_1_with_its_message(tmp_path, capsys):
    assert run(tmp_path, "--stages", "alpha,delta") == 1
    err = capsys.readouterr().err
    assert "stage 'delta' stopped" in err and "try a lower lr" in err
    assert "alpha" in runs.read_report(tmp_path) and "delta" not in runs.read_report(tmp_path)


def test_stage_returning_a_non_dict_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="must return a dict"):
        run(tmp_path, "--stages", "gamma")


def test_profile_is_detected_when_not_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "detect_profile", lambda override=None: ProfileChoice("t4", "fake T4"))
    assert cli.main(["run", "--out", str(tmp_path), "--stages", "alpha"]) == 0
    assert CALLS[0][1].profile == "t4"
    assert "profile: t4 (fake T4)" in capsys.readouterr().out


def test_unknown_profile_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--profile", "h100", "--out", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err


def test_profile_command(monkeypatch, capsys):
    choice = ProfileChoice("cpu", "no CUDA GPU found: using the cpu profile")
    monkeypatch.setattr(cli, "detect_profile", lambda override=None: choice)
    assert cli.main(["profile"]) == 0
    assert capsys.readouterr().out.splitlines() == ["cpu", choice.reason]


def test_the_real_registry(monkeypatch):
    monkeypatch.undo()  # the real STAGES, not the fakes
    assert list(cli.STAGES)[0] == "base"
    assert cli.STAGES["base"].entry("base") == "rlhf_course.pretrain:run_base"
    for stage in cli.STAGES:  # configs import cheaply; stage modules are not imported here
        for profile in PROFILES:
            assert cli.load_config_class(stage).preset(profile, seed=1).seed == 1


def test_every_stage_runs_through_its_run_function(monkeypatch):
    monkeypatch.undo()  # the real registry
    for stage in cli.STAGES:
        fn = cli.load_stage(stage)
        assert callable(fn) and fn.__name__ == f"run_{stage}"


def test_module_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_course.cli", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--stages" in result.stdout and "base" in result.stdout


def test_a_broken_stage_import_fails_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(cli.STAGES, "beta", cli.Stage("rlhf_course.no_such_module", f"{__name__}:FakeConfig"))
    with pytest.raises(ImportError, match="stage 'beta'.*no_such_module"):
        run(tmp_path, "--stages", "alpha,beta")
    assert CALLS == []


def test_optional_stages_run_only_when_named(monkeypatch):
    monkeypatch.undo()  # the real registry
    assert "beyond" in cli.STAGES and "beyond" in cli.OPTIONAL
    assert "beyond" not in cli.parse_stages(None)
    assert cli.parse_stages(None) == [s for s in cli.STAGES if s != "beyond"]
    assert cli.parse_stages("beyond,ppo") == ["ppo", "beyond"]


def test_a_profile_other_than_the_runs_is_refused(tmp_path, capsys):
    assert run(tmp_path, "--stages", "alpha") == 0
    assert cli.main(["run", "--profile", "t4", "--out", str(tmp_path), "--stages", "beta"]) == 2
    assert "made with profile 'cpu'" in capsys.readouterr().err
    assert [name for name, _ in CALLS] == ["alpha"]  # nothing ran into the cpu run
    # Without --profile, the run's own is taken.
    assert cli.main(["run", "--out", str(tmp_path), "--stages", "beta"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["beta"]["profile"] == "cpu"


def test_the_default_run_folder_is_the_notebooks(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(tmp_path / "course"))
    assert cli.main(["run", "--profile", "cpu", "--stages", "alpha"]) == 0
    assert (tmp_path / "course" / "report.json").exists()


def report_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("report:")]


def test_a_run_that_finishes_no_stage_removes_the_folder_it_created(tmp_path, capsys):
    new = tmp_path / "fresh"
    assert run(new, "--stages", "beta") == 1  # beta's input, alpha's model, is missing
    captured = capsys.readouterr()
    assert "stage 'alpha'" in captured.err  # the error still says what to run
    assert not new.exists()  # its profile.json went with it
    assert report_lines(captured.out) == []  # no path to a report that does not exist
    assert f"the new run folder {new} was removed" in captured.out
    # The same failure in a folder that was already there leaves the folder alone.
    assert run(tmp_path, "--stages", "beta") == 1
    out = capsys.readouterr().out
    assert tmp_path.is_dir() and report_lines(out) == [] and "was not written" in out


def test_a_new_folder_goes_on_any_error_before_a_stage_finishes(tmp_path):
    new = tmp_path / "fresh"
    with pytest.raises(TypeError, match="must return a dict"):
        run(new, "--stages", "gamma")
    assert not new.exists()


def fake_delta_after_writing(cfg, run_dir):
    """Stops itself after saving a checkpoint, as a stopped stage may."""
    (runs.stage_dir(run_dir, "delta") / "checkpoint.txt").write_text("step 3")
    raise runs.StageStopped("stopped at step 3: the loss is nan; the checkpoint is kept")


def test_a_new_folder_that_holds_what_a_failed_stage_wrote_is_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.modules[__name__], "run_delta", fake_delta_after_writing)
    new = tmp_path / "fresh"
    assert run(new, "--stages", "delta") == 1
    assert (new / "delta" / "checkpoint.txt").read_text() == "step 3"
    assert runs.recorded_profile(new) == "cpu"  # so that a rerun resumes on the same profile
    assert report_lines(capsys.readouterr().out) == []


def test_a_run_that_finishes_a_stage_then_fails_keeps_its_folder_and_report(tmp_path, capsys):
    new = tmp_path / "fresh"
    assert run(new, "--stages", "alpha,delta") == 1
    (line,) = report_lines(capsys.readouterr().out)
    assert line == f"report: {new / 'report.json'}" and (new / "report.json").exists()
