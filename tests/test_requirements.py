"""The installed libraries satisfy pyproject.toml's `dependencies`, bounds included, so that a CI
run tests the versions the package says it works with, not whatever pip happened to resolve."""

import importlib.metadata
import inspect
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements() -> list[Requirement]:
    with PYPROJECT.open("rb") as f:
        return [Requirement(line) for line in tomllib.load(f)["project"]["dependencies"]]


def unmet(reqs: list[Requirement]) -> list[str]:
    """What is wrong with the installed versions, one line per requirement (empty when all hold)."""
    problems = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate():
            continue  # not for this platform
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req}: {installed} is installed")
    return problems


def test_installed_versions_satisfy_pyproject():
    problems = unmet(requirements())
    assert not problems, ("Installed versions outside pyproject.toml's dependencies (reinstall with "
                          "`pip install -e .` or fix the bound): " + "; ".join(problems))


def test_the_check_reports_versions_outside_the_bounds():
    torch_version = importlib.metadata.version("torch")  # e.g. 2.13.0+cpu, a local label
    reqs = [Requirement(f"torch>={Version(torch_version).base_version}"), Requirement("torch<1"),
            Requirement("no-such-package-rlhf-course-test>=1"),
            Requirement("torch<1; python_version < '3'")]  # a marker that excludes it: skipped
    assert unmet(reqs) == [f"torch<1: {torch_version} is installed",
                           "no-such-package-rlhf-course-test>=1: not installed"]


@pytest.mark.parametrize("name", ["transformers", "trl"])
def test_the_libraries_we_bound_have_an_upper_bound(name):
    (req,) = [r for r in requirements() if r.name == name]
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in req.specifier), str(req)


def test_installed_transformers_takes_the_cache_argument_the_sampling_loops_pass():
    # generation.sample_tokens and chat_state._sample_stream call the model with `cache=`, a name the
    # lower bound on transformers promises; older releases would pass it on unread in **kwargs.
    from transformers import LlamaForCausalLM

    assert "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
