"""Keep the notebooks' links in step with their one source each: the repository's address, kept
once in pyproject.toml ([project.urls] Repository), in each notebook's install cell and "Open in
Colab" badge and in the README's table of notebooks; and a last "References" cell in each
notebook linking the sources its prose cites (`rlhf_course.course.REFERENCES`).

    .venv/bin/python scripts/notebook_links.py           # rewrite them (after the address changes)
    .venv/bin/python scripts/notebook_links.py --check   # exit 1, naming the files, if any is stale

tests/test_course.py runs the check, so a badge cannot point elsewhere than the install cell and
a source cited in a notebook cannot go unlinked.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
INSTALL = re.compile(r'(%pip install -q "rlhf-course @ git\+)[^"]+(")')
BRANCH = "main"
REFERENCES_ID = "references"
"""The cell id of each notebook's references cell, so it is found and replaced, not added twice."""


def repository() -> str:
    """The repository's address from pyproject.toml, without a trailing slash or .git."""
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    return url.rstrip("/").removesuffix(".git")


def colab_url(repo: str, notebook: str) -> str:
    """The address that opens `notebook` (a file name in notebooks/) from GitHub in Colab."""
    path = repo.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/notebooks/{notebook}"


def badge(repo: str, notebook: str) -> str:
    return f"[![Open in Colab]({BADGE_IMAGE})]({colab_url(repo, notebook)})"


def _lines(source: list[str] | str) -> list[str]:
    return "".join(source).splitlines(keepends=True)


def update_notebook(path: Path, repo: str) -> str:
    """The notebook's JSON text with its badge (a paragraph under the title) and its install
    cell's address up to date."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = next(c for c in nb["cells"] if c["cell_type"] == "markdown")
    lines = _lines(first["source"])
    for i, line in enumerate(lines):
        if BADGE_IMAGE in line:  # an earlier badge and the blank line after it
            del lines[i : i + 2]
            break
    title = next(i for i, line in enumerate(lines) if line.startswith("# "))
    if not lines[title].endswith("\n"):
        lines[title] += "\n"
    if title + 1 >= len(lines) or lines[title + 1].strip():
        lines.insert(title + 1, "\n")
    lines[title + 2 : title + 2] = [badge(repo, path.name) + "\n", "\n"]
    first["source"] = lines
    update_references(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "%pip install" in "".join(cell["source"]):
            cell["source"] = [INSTALL.sub(rf"\g<1>{repo}\g<2>", line) for line in _lines(cell["source"])]
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def update_references(nb: dict) -> None:
    """Make `nb`'s last cell the references of what its Markdown cells cite (or drop it)."""
    sys.path.insert(0, str(ROOT))
    from rlhf_course.course import references_markdown

    nb["cells"] = [c for c in nb["cells"] if c.get("id") != REFERENCES_ID]
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    text = references_markdown(prose)
    if text is not None:
        nb["cells"].append({"cell_type": "markdown", "id": REFERENCES_ID, "metadata": {},
                            "source": text.splitlines(keepends=True)})


def update_readme(text: str, repo: str) -> str:
    """README.md's text with the notebook table's Colab column up to date."""
    names = {p.name[:2]: p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    out, header = [], False
    for line in text.split("\n"):
        if line.startswith("| # | notebook |"):
            header = True
            if not line.endswith("| Colab |"):
                line += " Colab |"
        elif header and line.startswith("|---"):
            line = "|---" * (line.count("|---") + (0 if BADGE_IMAGE in text else 1)) + "|"
            header = False
        else:
            row = re.match(r"\| (\d\d) \|", line)
            if row and row.group(1) in names:
                cells = line.removesuffix(" |").split(" | ")
                if BADGE_IMAGE in cells[-1]:
                    cells = cells[:-1]
                line = " | ".join(cells) + f" | {badge(repo, names[row.group(1)])} |"
        out.append(line)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    repo = repository()
    wanted = {p: update_notebook(p, repo) for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
    readme = ROOT / "README.md"
    wanted[readme] = update_readme(readme.read_text(encoding="utf-8"), repo)
    stale = [p for p, text in wanted.items() if p.read_text(encoding="utf-8") != text]
    if args.check:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)} (run scripts/notebook_links.py)", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(wanted[p], encoding="utf-8")
        print(f"updated {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
