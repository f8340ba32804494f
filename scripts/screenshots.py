"""The README's two screenshots, taken in a real headless Chromium from a real run.

    .venv/bin/python scripts/screenshots.py runs/full0     # writes docs/img/*.png
    .venv/bin/python scripts/screenshots.py                # the course's run folder, runs/course

1. `docs/img/ranking-widget.png`: notebook 04's ranking widget in JupyterLab, started the way a
   learner starts it (`bash scripts/lab.sh`), with its cells run up to the widget.
2. `docs/img/report.png`: the top of the run's HTML report (`rlhf-course report RUN_DIR`).

The run folder is copied first (into .tmp/) and the copy is what JupyterLab and the report use,
so the run you name is never written to. Needs Debian's browser (`apt-get install chromium`, at
/usr/bin/chromium; never `playwright install`) and playwright (`pip install -e ".[dev]"`).

`tests/test_browser.py` drives JupyterLab through the helpers below (`lab_server`,
`open_ranking_widget`), so the path the screenshots take is the one the test checks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = "04_comparisons.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1000, "height": 720}
"""Modest on purpose: the PNGs stay small and readable at the README's width."""
_ACTIVE = re.compile(r"\bjp-mod-active\b")
"""The class JupyterLab gives the selected cell."""

# JupyterLab user settings for a scripted session: no autosave (running cells must not write
# outputs into the committed notebooks), no news toast over the page, every cell in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running `scripts/lab.sh`: where it answers, and its process (lab.sh itself)."""

    url: str
    token: str
    log: Path
    proc: subprocess.Popen


def wait_until_answering(url: str, token: str, proc: subprocess.Popen, log_path: Path,
                         timeout: float) -> None:
    """Return once the Jupyter server at `url` answers its status API; RuntimeError, with the
    end of its log, if `proc` exits first (e.g. root without --allow-root) or `timeout` seconds
    pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:2]} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def lab_server(run_dir: Path, workdir: Path, *, timeout: float = 180.0) -> Iterator[Lab]:
    """`bash scripts/lab.sh` on a free port, its notebooks reading and writing `run_dir`; yields
    a `Lab` once the server answers, and stops it with SIGTERM, as Ctrl+C does.

    Jupyter's config, runtime, settings and workspace folders go into `workdir`, so nothing of
    the user's own JupyterLab is read or changed. Raises RuntimeError, with the end of the log,
    if the server exits or does not answer within `timeout` seconds (setup.sh included)."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings = workdir / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "RLHF_COURSE_RUN_DIR": str(run_dir), "MPLBACKEND": "agg",
           "JUPYTER_CONFIG_DIR": str(workdir / "config"), "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "workspaces")}
    cmd = ["bash", str(REPO / "scripts" / "lab.sh"), "--no-browser", "--port", str(port),
           "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           # Opening a notebook checkpoints it; keep those copies out of notebooks/ too.
           f"--FileCheckpoints.checkpoint_dir={workdir / 'checkpoints'}"]
    log_path = workdir / "lab.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            wait_until_answering(url, token, proc, log_path, timeout)
            yield Lab(url, token, log_path, proc)
        finally:
            # lab.sh forwards SIGTERM to the server, which shuts its kernels down and exits.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: lab.sh and what it started
                proc.wait()


def widget_cell(notebook: Path = REPO / "notebooks" / NOTEBOOK) -> int:
    """The index of the notebook's cell that shows the ranking widget."""
    cells = json.loads(notebook.read_text())["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and "RankingWidget(" in "".join(cell["source"]):
            return i
    raise ValueError(f"{notebook} has no cell that calls RankingWidget(")


def open_ranking_widget(page, lab: Lab, timeout_ms: int = 180_000):
    """Open notebook 04 of `lab` in `page`, run its cells from the top through the ranking widget's, and
    return the locator of that cell's output once the widget's buttons are visible. Raises
    AssertionError with the page's outputs if a cell fails or the widget does not appear."""
    from playwright.sync_api import expect

    last = widget_cell()
    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}")
    # The cell's own indicator reads idle while the kernel is still starting (and Shift+Enter
    # is then lost): wait for the status bar to show the kernel idle first.
    expect(page.locator("#jp-main-statusbar")).to_contain_text("| Idle", timeout=timeout_ms)
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.first.click()
    for i in range(last + 1):
        page.keyboard.press("Shift+Enter")
        expect(cells.nth(i + 1)).to_have_class(_ACTIVE)  # the press arrived: the next cell is selected
    target = cells.nth(last)
    submit = target.locator("button.rlhf-submit")
    deadline = time.monotonic() + timeout_ms / 1000
    while not submit.is_visible():
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        failed = [t for t in errors.all_inner_texts() if "Error" in t or "Traceback" in t]
        if failed or time.monotonic() > deadline:
            why = "a cell failed" if failed else f"no ranking widget after {timeout_ms / 1000:.0f} s"
            raise AssertionError(f"{why}; the page's outputs:\n" + "\n---\n".join(
                page.locator(".jp-OutputArea-output").all_inner_texts())[-4000:])
        time.sleep(0.5)
    # The outermost output: the widget holds output areas of its own.
    return target.locator(".jp-OutputArea-output").filter(has=page.locator("button.rlhf-submit")).first


def take(run: Path, out_dir: Path) -> list[Path]:
    """Both screenshots from a copy of `run`, written to `out_dir`; returns their paths."""
    from playwright.sync_api import expect, sync_playwright

    from rlhf_course.report import render_report

    out_dir.mkdir(parents=True, exist_ok=True)
    (REPO / ".tmp").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="screenshots-", dir=REPO / ".tmp"))
    try:
        copy = work / run.name  # the report's title names the run folder
        shutil.copytree(run, copy)
        report = render_report(copy)
        widget_png, report_png = out_dir / "ranking-widget.png", out_dir / "report.png"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(60_000)
                page.goto(report.as_uri())
                page.screenshot(path=report_png)
                with lab_server(copy, work / "lab") as lab:
                    page = browser.new_page(viewport=VIEWPORT)
                    page.set_default_timeout(60_000)
                    output = open_ranking_widget(page, lab)
                    # One reply placed, so the picture shows how a ranking is built.
                    output.locator("button.rlhf-reply-A").click()
                    expect(output.locator("button.rlhf-reply-A")).to_have_text("A: 1st")
                    # The file browser folded away (Ctrl+B) so the notebook has the width; the
                    # widget from its top, under the last lines of the cell that made it.
                    page.keyboard.press("Escape")
                    page.keyboard.press("Control+b")
                    expect(page.locator(".jp-FileBrowser")).to_be_hidden()
                    output.evaluate("e => e.scrollIntoView({block: 'start'})")
                    box = output.bounding_box()
                    page.mouse.move(box["x"] + 10, box["y"] + 10)
                    page.mouse.wheel(0, -110)
                    page.mouse.move(0, VIEWPORT["height"] - 1)  # no hover highlight in the picture
                    page.wait_for_timeout(500)
                    page.screenshot(path=widget_png)
            finally:
                browser.close()
        return [widget_png, report_png]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from rlhf_course.runs import resolve_run_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR",
                        help="a finished run (default: the course's run folder, runs/course); only a copy is used")
    parser.add_argument("--out", default=str(REPO / "docs" / "img"), help="where the PNGs go (default: docs/img)")
    args = parser.parse_args(argv)
    run = Path(resolve_run_dir(args.run_dir))
    if not (run / "report.json").exists():
        print(f"error: {run} has no report.json: run the course first (bash scripts/course.sh)", file=sys.stderr)
        return 1
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} not found: `sudo apt-get install -y chromium` (not `playwright install`)",
              file=sys.stderr)
        return 1
    for path in take(run, Path(args.out)):
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
