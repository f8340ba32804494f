"""The package's layout holds: the layers contract in pyproject.toml (run by import-linter), no
import cycle, and package imports inside functions only with a stated reason.

ARCHITECTURE.md describes the layers; `lint-imports` at the repo root checks them by hand."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "rlhf_course"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under `root`, with `root`'s pyproject.toml; no cache."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} not found: the test tools are `pip install -e '.[dev]'`")
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_contract_holds():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def _copy(tmp_path: Path, edits: dict[str, str]) -> Path:
    """The package and pyproject.toml copied under tmp_path, with `edits` (module -> a line)
    appended to the named modules."""
    shutil.copytree(PACKAGE, tmp_path / "rlhf_course", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    for module, line in edits.items():
        path = tmp_path / "rlhf_course" / f"{module}.py"
        path.write_text(path.read_text() + f"\n{line}\n")
    return tmp_path


def test_a_lower_layer_importing_a_stage_breaks_the_contract(tmp_path):
    # The held-out protocol is shared by every stage; it must not use one.
    result = lint_imports(_copy(tmp_path, {"heldout": "from rlhf_course import ppo  # noqa"}))
    assert result.returncode != 0
    assert "rlhf_course.heldout -> rlhf_course.ppo" in result.stdout


def test_an_earlier_stage_importing_a_later_one_breaks_the_contract(tmp_path):
    result = lint_imports(_copy(tmp_path, {"sft": "from rlhf_course import reward  # noqa"}))
    assert result.returncode != 0
    assert "rlhf_course.sft -> rlhf_course.reward" in result.stdout


def test_a_cycle_within_a_layer_breaks_the_contract(tmp_path):
    # models and training share a layer, so only the no-cycles contract sees this one.
    result = lint_imports(_copy(tmp_path, {"models": "from rlhf_course import training  # noqa",
                                           "training": "from rlhf_course import models  # noqa"}))
    assert result.returncode != 0
    assert "1 kept, 1 broken" in result.stdout


def package_imports_in_functions(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, has a comment) of every import inside a function of `path`."""
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    said = any("#" in line for line in lines[node.lineno - 1:node.end_lineno])
                    found.append((node.lineno, module or "", said))
    return sorted(set(found))


def test_imports_inside_functions_say_why():
    """An import inside a function is there to save start-up time (a heavy library, or IPython
    outside a notebook); its line says so. Anything else belongs at the top of the module."""
    silent = [f"{path.name}:{line} imports {module}" for path in sorted(PACKAGE.glob("*.py"))
              for line, module, commented in package_imports_in_functions(path) if not commented]
    assert silent == []


def test_the_import_check_sees_a_silent_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    import json\n    import torch  # seconds to import\n    return json\n")
    assert package_imports_in_functions(path) == [(2, "json", False), (3, "torch", True)]


LONGEST = 600
"""Lines a module of the package may have, unless its docstring says why it has more."""


def over_long_modules(package: Path = PACKAGE) -> list[str]:
    """Modules over LONGEST lines whose docstring does not say why (mention "600 lines")."""
    long = []
    for path in sorted(package.rglob("*.py")):
        lines = path.read_text().count("\n")
        if lines > LONGEST and "600 lines" not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            long.append(f"{path.relative_to(package.parent)}: {lines} lines")
    return long


def test_no_module_is_over_600_lines_without_saying_why():
    assert over_long_modules() == []


def test_the_length_check_sees_a_long_module(tmp_path):
    (tmp_path / "long.py").write_text('"""A module."""\n' + "x = 1\n" * 700)
    (tmp_path / "table.py").write_text('"""Word tables: over 600 lines, as data."""\n' + "x = 1\n" * 700)
    assert over_long_modules(tmp_path) == [f"{tmp_path.name}/long.py: 701 lines"]
