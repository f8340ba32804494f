"""Packaging: the extras split by who needs them (a learner gets the notebook tools, the test
command adds pytest, playwright and ruff), the scripts install the right ones, and the LICENSE
file is the license pyproject.toml declares."""

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME = canonicalize_name(PROJECT["name"])
TEST_TOOLS = {"pytest", "playwright", "ruff"}


def names(requirements) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def extra(name: str) -> set[str]:
    """Distribution names an extra asks for; a reference to another extra of this project
    (`rlhf-course[course]`) brings that extra's names in."""
    out = set()
    for line in PROJECT["optional-dependencies"][name]:
        req = Requirement(line)
        if canonicalize_name(req.name) == NAME:
            for other in req.extras:
                out |= extra(other)
        else:
            out.add(canonicalize_name(req.name))
    return out


def test_course_extra_holds_the_notebook_tools_and_no_test_tools():
    course = extra("course")
    assert {"jupyterlab", "ipykernel", "papermill", "nbval", "nbformat"} <= course
    # what the notebooks import for widgets and plots: a core dependency or in the extra
    assert {"ipywidgets", "matplotlib"} <= course | names(PROJECT["dependencies"])
    assert not course & TEST_TOOLS, f"a learner would install {sorted(course & TEST_TOOLS)}"


def test_dev_extra_holds_the_test_tools_on_top_of_the_course():
    dev = extra("dev")
    assert dev >= TEST_TOOLS
    # a plain `pip install -e .[dev]` (environment.yml, CI) still gets what the tests execute
    assert dev >= extra("course")
    assert not names(PROJECT["dependencies"]) & TEST_TOOLS


def test_scripts_name_the_right_extras():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "extras=course\n" in setup and "--dev) extras=course,dev ;;" in setup
    assert """pip install -q -e ".[$extras]\"""" in setup
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert "bash scripts/setup.sh --dev\n" in test_sh
    # the course command sets up the course too (without the test tools)
    course_sh = (ROOT / "scripts" / "course.sh").read_text()
    assert "bash scripts/setup.sh\n" in course_sh


@pytest.fixture
def fake_checkout(tmp_path):
    """A copy of setup.sh and pyproject.toml beside a stand-in package, a stand-in torch, and a
    `python` that records `-m pip` calls instead of running them (anything else goes to the
    real interpreter). Returns a function running setup.sh there and giving back pip's calls."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "rlhf_course").mkdir()
    (repo / "rlhf_course" / "__init__.py").write_text("")
    fakes = tmp_path / "fakes" / "torch"
    fakes.mkdir(parents=True)
    (fakes / "__init__.py").write_text(
        '__version__ = "0.0+fake"\n\nclass cuda:\n    is_available = staticmethod(lambda: False)\n')
    log = tmp_path / "pip.log"
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f"""#!/usr/bin/env bash
if [[ "$1" == -m && "$2" == pip ]]; then echo "${{*:3}}" >> {log}; exit 0; fi
exec {sys.executable} "$@"
""")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PYTHON": str(python),
           "PYTHONPATH": f"{tmp_path / 'fakes'}{os.pathsep}{repo}"}

    def setup(*args: str) -> list[str]:
        before = log.read_text().splitlines() if log.exists() else []
        done = subprocess.run(["bash", str(repo / "scripts" / "setup.sh"), "--system", *args],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "setup: ready" in done.stdout
        after = log.read_text().splitlines() if log.exists() else []
        return after[len(before):]

    setup.repo = repo
    return setup


def test_setup_installs_the_extras_still_missing(fake_checkout):
    setup = fake_checkout
    # a learner's setup: the course extra only
    assert setup() == ["install -q -e .[course]"]
    assert setup() == []  # nothing changed: pip is skipped
    # then the test command: the dev tools were never installed, so pip runs
    assert setup("--dev") == ["install -q -e .[course,dev]"]
    assert setup("--dev") == []
    assert setup() == []  # setup.sh after test.sh: course came with dev
    # a changed pyproject.toml installs again, only what is asked for
    with open(setup.repo / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    assert setup() == ["install -q -e .[course]"]
    assert setup("--dev") == ["install -q -e .[course,dev]"]


def test_license_file_is_the_one_pyproject_declares():
    license_text = (ROOT / "LICENSE").read_text()
    declared = PROJECT["license"]
    # `license = "MIT"` (an SPDX expression) or the older `license = { text = "MIT" }`
    spdx = declared if isinstance(declared, str) else declared.get("text")
    assert spdx == "MIT"
    assert license_text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the rlhf-course authors" in license_text
    assert "Permission is hereby granted, free of charge" in license_text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in license_text
