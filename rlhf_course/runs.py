"""Run folders: where each stage writes its outputs and where the next stage finds them.

Layout of a run folder (`run_dir`)::

    RUN_DIR/
      report.json          one object per stage: {"base": {"gold": 0.12, "seconds": 150.2, ...}}
      metrics/<name>.json  key metrics a notebook recorded, asserted by the notebook tests
      base/ ...            one folder per stage, holding what that stage produced
      sft/ ...

A stage reads its inputs with `require(run_dir, "base", "model")`, which fails with the command
that would produce the missing input, so a notebook can start from any stage of a prepared run.
JSON files are written atomically (temporary file, then `os.replace`): a killed kernel or CLI
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import random
import re
import resource
import shlex
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from rlhf_course.hardware import check_profile, detect_profile

REPORT_NAME = "report.json"
METRICS_DIR = "metrics"

try:  # advisory lock so two processes updating one report do not lose each other's entries
    import fcntl
except ImportError:  # Windows: no fcntl; concurrent updates are then last-writer-wins
    fcntl = None


class CorruptRunFile(ValueError):
    """A file in a run folder exists but cannot be read (bad JSON, truncated checkpoint, ...)."""


class MissingStageOutput(FileNotFoundError):
    """An input a stage needs is not in the run folder; the message says how to produce it."""


class CorruptStageOutput(CorruptRunFile):
    """A stage output exists but cannot be loaded; the message says how to produce it again."""


class StageStopped(RuntimeError):
    """A stage stopped itself on purpose (e.g. PPO on a non-finite loss); the message says why,
    what was kept and what to try."""


def stage_dir(run_dir: str | os.PathLike, stage: str) -> Path:
    """Return `RUN_DIR/<stage>`, creating it (and `run_dir`) if needed."""
    path = Path(run_dir) / _check_name(stage, "stage")
    path.mkdir(parents=True, exist_ok=True)
    return path


STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "base": (), "demos": (), "sft": ("base", "demos"), "comparisons": ("sft",), "rm": ("comparisons",),
    "ppo": ("rm",), "iterate": ("ppo",), "eval": ("ppo",), "moderation": (), "beyond": ("rm",),
}
"""Every stage, in course order, with the stages whose outputs it reads (the rest follow: `rm`
needs `comparisons`, which needs `sft`, ...). `cli.STAGES` runs the same stages in this order."""

STAGE_NOTEBOOKS = {
    "base": "01_base_model.ipynb", "demos": "02_demonstrations.ipynb", "sft": "03_sft.ipynb",
    "comparisons": "04_comparisons.ipynb", "rm": "05_reward_model.ipynb", "ppo": "06_ppo.ipynb",
    "iterate": "07_iterate.ipynb", "eval": "08_eval.ipynb", "moderation": "09_chat.ipynb",
    "beyond": "10_beyond.ipynb",
}
"""The notebook that runs each stage."""


def stages_to_run(run_dir: str | os.PathLike, stage: str) -> list[str]:
    """`stage` and every stage it needs that `run_dir` has not finished (no report.json entry),
    in course order: what one CLI command must run to produce `stage`'s outputs."""
    try:
        finished = set(read_report(run_dir))
    except (OSError, CorruptRunFile):
        finished = set()
    wanted, todo = {stage}, [stage]
    while todo:
        for needed in STAGE_INPUTS.get(todo.pop(), ()):
            if needed not in finished and needed not in wanted:
                wanted.add(needed)
                todo.append(needed)
    return [s for s in STAGE_INPUTS if s in wanted] + sorted(wanted - set(STAGE_INPUTS))


def _shown(run_dir: str | os.PathLike) -> str:
    # A run folder inside the checkout is shown relative to its root, so the printed command
    # works when pasted there (the README's commands all run from the root).
    path = Path(run_dir)
    root = course_root()
    if path.is_absolute() and root is not None:
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(root))
    return str(path)


def run_command(run_dir: str | os.PathLike, stage: str | list[str], profile: str | None = None) -> str:
    """The shell command, from the repo root, that (re)produces `stage` (or stages) in `run_dir`.

    Without `profile`, the one recorded for the run is used; if none is recorded the
    `--profile` flag is left out, so the CLI detects it as it would for a fresh run.
    """
    stages = ",".join([stage] if isinstance(stage, str) else stage)
    profile = profile or _recorded_profile(run_dir)
    flag = f"--profile {profile} " if profile else ""
    return f"rlhf-course run {flag}--out {shlex.quote(_shown(run_dir))} --stages {stages}"


def require(
    run_dir: str | os.PathLike, stage: str, relpath: str | os.PathLike, profile: str | None = None
) -> Path:
    """Return `RUN_DIR/<stage>/<relpath>` if it exists, else raise `MissingStageOutput`.

    The error names the missing path, the stage that produces it and its notebook, and one
    command, from the repo root, that runs that stage and every stage before it that the run
    has not finished. A stage function passes `profile=cfg.profile` so the command is exact;
    without it the run's recorded profile is used, or the flag is left out (the CLI detects it).
    """
    path = Path(run_dir) / stage / relpath
    if path.exists():
        return path
    where = "the run folder itself does not exist" if not Path(run_dir).exists() else "not found"
    chain = stages_to_run(run_dir, stage)
    before = [s for s in chain if s != stage]
    needs = f", which needs {', '.join(before)} first" if before else ""
    notebook = STAGE_NOTEBOOKS.get(stage)
    first = STAGE_NOTEBOOKS.get(chain[0])
    if notebook and first and first != notebook:
        instead = f"or run the notebooks from {first} to {notebook}, in order, with this run folder."
    elif notebook:
        instead = f"or run {notebook} with this run folder."
    else:
        instead = "or run that stage's notebook with this run folder."
    shown = f" (notebook {notebook})" if notebook else ""
    raise MissingStageOutput(
        f"missing {path} ({where}). It is produced by stage {stage!r}{shown}{needs}. From the "
        f"repo root, run\n    {run_command(run_dir, chain, profile)}\n{instead}"
    )


def raise_corrupt(
    run_dir: str | os.PathLike,
    stage: str,
    relpath: str | os.PathLike,
    problem: str | BaseException,
    profile: str | None = None,
) -> NoReturn:
    """Raise `CorruptStageOutput` for `RUN_DIR/<stage>/<relpath>`, which exists but won't load.

    A loader calls it from the `except` clause that caught the parse error, passing the error as
    `problem`; it becomes the exception's cause so the original traceback is kept.
    """
    path = Path(run_dir) / stage / relpath
    detail = (
        f"{type(problem).__name__}: {problem}" if isinstance(problem, BaseException) else problem
    )
    error = CorruptStageOutput(
        f"{path} exists but cannot be loaded ({detail}). It was probably left by an interrupted "
        f"run or edited by hand. Produce it again with stage {stage!r}:\n"
        f"    {run_command(run_dir, stage, profile)}"
    )
    if isinstance(problem, BaseException):
        raise error from problem
    raise error


# --- report.json ---------------------------------------------------------------------------


def read_report(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Return the run's report (`{stage: entry}`); `{}` if no stage has reported yet."""
    return _read_json(Path(run_dir) / REPORT_NAME, what="report")


def update_report(
    run_dir: str | os.PathLike, stage: str, entry: dict[str, Any], replace: bool = False
) -> dict[str, dict[str, Any]]:
    """Merge `entry` into the stage's object in report.json and return the whole report.

    Keys already recorded for this stage are kept unless `entry` sets them; `replace=True` drops
    them instead (the CLI does so, since a stage returns its complete entry and a stale figure
    from an earlier run would be misleading). Other stages' entries are never touched.
    """
    _check_name(stage, "stage")
    entry = _jsonable(entry, where=f"report entry for stage {stage!r}")
    path = Path(run_dir) / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        report = read_report(run_dir)
        old = {} if replace else report.get(stage, {})
        report[stage] = {**old, **entry}
        _write_json_atomic(path, report)
    return report


# --- metrics recorded by notebooks --------------------------------------------------------------


def record_metrics(run_dir: str | os.PathLike, name: str, metrics: dict[str, Any]) -> Path:
    """Record a notebook's key metrics in `RUN_DIR/metrics/<name>.json` and return that path.

    The notebook tests read them back with `read_metrics` and assert them. Recording twice merges
    the keys. Values must be JSON numbers, strings or bools (or lists/dicts of them); numpy and
    0-d torch scalars are converted; NaN and infinity are rejected, since a NaN metric means the
    run went wrong and should fail where it happened rather than in a test later.
    """
    _check_name(name, "metrics name")
    metrics = _jsonable(metrics, where=f"metrics {name!r}")
    path = Path(run_dir) / METRICS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        merged = {**_read_json(path, what="metrics"), **metrics}
        _write_json_atomic(path, merged)
    return path


def read_metrics(run_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    """Return the metrics recorded under `name`; FileNotFoundError lists the names recorded."""
    path = Path(run_dir) / METRICS_DIR / f"{_check_name(name, 'metrics name')}.json"
    if not path.exists():
        recorded = (
            sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        )
        raise FileNotFoundError(
            f"no metrics recorded as {name!r}: {path} does not exist (recorded in this run: "
            f"{recorded or 'none'}). The notebook must call record_metrics(run_dir, {name!r}, ...)."
        )
    return _read_json(path, what="metrics")


# --- cost of a stage ---------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    It is the peak over the process's whole life, so in a multi-stage CLI run a later stage's
    figure includes the earlier stages' peaks: it is an upper bound for that stage.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def release_memory() -> bool:
    """Give freed memory back to the operating system; True where it could (Linux with glibc).

    glibc keeps the pages of freed tensors in its heap for reuse, so a training loop whose
    batches change shape (the reward model's, every batch padded to its own longest reply) grows
    its resident memory long after it stopped needing more. `malloc_trim` returns them; it
    changes no number, only what `peak_rss_mb` and the operating system see. Elsewhere it only
    collects garbage.
    """
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # musl or another libc: nothing to trim with
        return False


def seed_everything(seed: int, stage: str) -> int:
    """Seed Python's, NumPy's and torch's global generators at the start of `stage`; return the
    seed used, a stable hash of (`seed`, `stage`).

    torch gives every fresh process a random default seed, so anything drawn from the global
    generator (a new scalar head, dropout) differed between a notebook's kernel, the CLI (where
    earlier stages had already drawn from it) and a test. Each stage calls this first, so the
    same seed gives the same numbers whichever way, and in whatever process, the stage is run.
    """
    import torch  # torch takes seconds to import: the CLI imports runs before any stage

    derived = zlib.crc32(f"{stage}:{seed}".encode())
    random.seed(derived)
    np.random.seed(derived)
    torch.manual_seed(derived)  # every device's generator too
    return derived


class StageTimer:
    """Wall-clock seconds of a `with` block: `with StageTimer() as t: ...; t.seconds`.

    `seconds` can be read inside the block too (time so far), e.g. for a progress message.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._end: float | None = None

    def __enter__(self) -> StageTimer:
        self._start, self._end = time.perf_counter(), None
        return self

    def __exit__(self, *exc: object) -> None:
        self._end = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds from entering the block to leaving it (or to now, while inside)."""
        if self._start is None:
            return 0.0
        return (self._end if self._end is not None else time.perf_counter()) - self._start


# --- helpers ----------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_name(name: str, what: str) -> str:
    # Names become folder and file names: keep them to one path component, no surprises.
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits, '_', '-' and '.' "
            "(it becomes a file or folder name in the run folder)"
        )
    return name


def _recorded_profile(run_dir: str | os.PathLike) -> str | None:
    # Best effort: a corrupt or missing file just means we cannot suggest a profile.
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return json.loads((Path(run_dir) / PROFILE_FILE).read_text())["profile"]
    try:
        report = read_report(run_dir)
    except (OSError, CorruptRunFile):
        return None
    for entry in report.values():
        if isinstance(entry, dict) and isinstance(entry.get("profile"), str):
            return entry["profile"]
    return None


def _jsonable(value: Any, where: str, key: str = "") -> Any:
    """Return `value` as plain JSON types, or raise a ValueError naming the offending key."""
    label = f"{where}, key {key!r}" if key else where
    if hasattr(value, "item") and not isinstance(value, (dict, list, tuple, str)):
        try:  # numpy scalars, 0-d arrays and 0-d tensors; larger arrays raise and fall through
            value = value.item()
        except (ValueError, RuntimeError, TypeError):
            pass
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{label} is {value}: metrics and report values must be finite")
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{label}: keys must be strings, got {k!r}")
            out[k] = _jsonable(v, where, f"{key}.{k}" if key else k)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{label} is a {type(value).__name__}: values must be JSON numbers, strings or bools "
        "(or lists/dicts of them); convert it, e.g. float(x) or x.tolist()"
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorruptRunFile(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}). "
            f"Fix the {what} by hand, or delete it and re-run the stages or notebooks that write it."
        ) from err
    if not isinstance(data, dict):
        raise CorruptRunFile(
            f"{path} should hold a JSON object, found {type(data).__name__}. Delete it and re-run "
            f"the stages or notebooks that write the {what}."
        )
    return data


def write_text_atomic(path: Path, text: str) -> None:
    """Replace the file at `path` with `text` in one step: a reader (or a crash) sees the old
    file or the new one, never half of it. The data is fsynced before the rename."""
    # Same folder as the target so os.replace is a rename on one file system (atomic).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # The lock lives in a sidecar file: the target itself is replaced, so locking it would not hold.
    if fcntl is None:
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


DRIVE_MOUNT = "/content/drive"
"""Where a Colab notebook mounts Google Drive."""
DRIVE_FOLDER = "MyDrive/rlhf-course"
"""The course's folder inside Drive; a relative `run_dir` is placed under it."""


def colab_run_dir(run_dir: str | os.PathLike, drive: bool = True) -> str:
    """The run folder a notebook should use: on Colab with `drive`, `run_dir` inside Google Drive
    (mounted at `DRIVE_MOUNT` if it is not yet), so a disconnected or recycled runtime loses
    nothing: every stage checkpoints and resumes, and a re-run continues from the Drive copy.
    Anywhere else, and on Colab with `drive=False`, `run_dir` unchanged. An absolute `run_dir`
    is kept as it is (already on Drive, or deliberately elsewhere)."""
    if not drive or "google.colab" not in sys.modules or Path(run_dir).is_absolute():
        return str(run_dir)
    from google.colab import drive as colab_drive  # only importable on Colab

    if not (Path(DRIVE_MOUNT) / "MyDrive").is_dir():
        colab_drive.mount(DRIVE_MOUNT)  # asks the learner to authorise Drive once per runtime
    target = Path(DRIVE_MOUNT) / DRIVE_FOLDER / run_dir
    target.mkdir(parents=True, exist_ok=True)
    return str(target)


# --- the course's run folder and its profile ------------------------------------------------

RUN_DIR_ENV = "RLHF_COURSE_RUN_DIR"
"""Environment variable naming the run folder that notebooks and the CLI use by default."""
DEFAULT_RUN_DIR = "runs/course"
"""The default run folder, relative to the course's root (the folder holding `notebooks/`)."""
PROFILE_FILE = "profile.json"
"""RUN_DIR/profile.json: the profile the run was made with, written by its first stage."""


class ProfileMismatch(ValueError):
    """A notebook or CLI run asked for a profile other than the one its run folder was made with."""


def course_root(start: str | os.PathLike | None = None) -> Path | None:
    """The checkout this course runs from: the nearest folder at or above `start` (default: the
    working directory) holding `pyproject.toml`, `notebooks/` and `rlhf_course/`; None outside a
    checkout (Colab, where the package is installed from git and no clone exists)."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "notebooks").is_dir() \
                and (folder / "rlhf_course").is_dir():
            return folder
    return None


def resolve_run_dir(run_dir: str | os.PathLike | None = None, start: str | os.PathLike | None = None) -> str:
    """The run folder to use, the same whether a notebook (working directory `notebooks/`) or
    the CLI (the repo root) asks: `run_dir`, or else `$RLHF_COURSE_RUN_DIR`, or else
    `DEFAULT_RUN_DIR`; a relative path is taken from the course's root (`course_root`), so
    `bash scripts/course.sh` and every notebook meet in `<root>/runs/course`. Outside a
    checkout a relative path stays relative (on Colab `colab_run_dir` then puts it in Drive)."""
    chosen = run_dir if run_dir is not None else os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR
    path = Path(chosen).expanduser()
    if path.is_absolute():
        return str(path)
    root = course_root(start)
    return str(root / path) if root is not None else str(path)


def recorded_profile(run_dir: str | os.PathLike) -> str | None:
    """The profile `run_dir` was made with: RUN_DIR/profile.json, or for a run made before that
    file existed, the first profile its report.json names; None for a new run."""
    path = Path(run_dir) / PROFILE_FILE
    if path.exists():
        return _read_json(path, "the run's profile")["profile"]
    return _recorded_profile(run_dir)


def resolve_profile(run_dir: str | os.PathLike, profile: str | None = None) -> str:
    """The profile a notebook or CLI run on `run_dir` uses, recorded in RUN_DIR/profile.json the
    first time so that every later stage uses the same one.

    `profile=None` takes the run's recorded profile, or for a new run detects one (cpu here, t4
    on a Colab T4, a100 on an A100). A named profile must match the recorded one: a run folder
    whose stages mixed a tiny cpu model with a t4 one would give numbers that mean nothing, so
    a mismatch raises `ProfileMismatch` saying which profile the run has and what to do.
    """
    recorded = recorded_profile(run_dir)
    if profile is not None:
        check_profile(profile)
        if recorded is not None and profile != recorded:
            raise ProfileMismatch(
                f"{run_dir} was made with profile {recorded!r}, and this asks for {profile!r}. "
                f"To go on with that run, use profile={recorded!r} or profile=None (it then "
                f"takes the run's). For a {profile} run, give it a run folder of its own, e.g. "
                f"run_dir='runs/{profile}'."
            )
        chosen = profile
    else:
        chosen = recorded or detect_profile().name
    if not (Path(run_dir) / PROFILE_FILE).exists():
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        _write_json_atomic(Path(run_dir) / PROFILE_FILE, {"profile": chosen})
    return chosen
