"""The ranking widget in a real JupyterLab, clicked in headless Chromium (Debian's build).

What a headless test of the widget cannot show: that the front end renders the buttons, that a
click in the browser reaches the kernel, and that the ranking is on disk once the page says so.
Recipe and pitfalls: the notes on browser end-to-end tests (JupyterLab 4, ipywidgets 8,
Playwright with /usr/bin/chromium, never `playwright install`).
"""

import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_course.rankings import load_comparisons
from rlhf_course.world import World

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def _screenshots():
    """scripts/screenshots.py as a module: its helpers start `scripts/lab.sh` and open notebook
    04's ranking widget, the same path the README's screenshot takes."""
    spec = importlib.util.spec_from_file_location("screenshots", REPO / "scripts" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


SHOTS = _screenshots()
CHROMIUM, CHROMIUM_ARGS = SHOTS.CHROMIUM, SHOTS.CHROMIUM_ARGS
REQUIRE = "RLHF_COURSE_REQUIRE_BROWSER"


def _unavailable(why: str) -> None:
    # CI sets RLHF_COURSE_REQUIRE_BROWSER=1 so a missing browser fails there instead of skipping.
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{why} ({REQUIRE}=1, so the browser test may not be skipped)")
    pytest.skip(why)


@pytest.fixture
def chromium():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found: install Debian's browser with "
                     "`sudo apt-get install -y chromium` (not `playwright install`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: `pip install -e '.[dev]'`")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a free port, run by this interpreter (so the kernel is this venv's);
    yields (url, token, root). Stopped with SIGTERM, which shuts its kernels down too."""
    root, log_path = tmp_path / "root", tmp_path / "jupyter.log"
    root.mkdir()
    port, token = SHOTS.free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "MPLBACKEND": "agg"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        SHOTS.wait_until_answering(url, token, proc, log_path, timeout=90)
        yield url, token, root
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# The notebook cell: one item per task, its first three replies (ideal and two flawed ones).
CELL = """\
from rlhf_course.comparisons import RankItem
from rlhf_course.ranking_widget import RankingWidget
from rlhf_course.world import World

items = [RankItem(context=t.prompt, replies=list(t.replies().values())[:3], task=t, item_id=f"e2e-{j}")
         for j, t in enumerate(World(0).tasks("train", 2))]
RankingWidget(items, SAVED)
"""


def _notebook(source: str) -> dict:
    return {
        "nbformat": 4, "nbformat_minor": 5,
        # A named kernelspec: JupyterLab starts it instead of asking which kernel to use.
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                    "language": "python"}},
        "cells": [{"cell_type": "code", "id": "rank", "metadata": {}, "execution_count": None,
                   "outputs": [], "source": source}],
    }


def test_rank_replies_in_jupyterlab(chromium, lab):  # chromium first: skip before starting a server
    from playwright.sync_api import expect

    url, token, root = lab
    saved = root / "ranked.jsonl"
    (root / "rank.ipynb").write_text(json.dumps(_notebook(CELL.replace("SAVED", repr(str(saved))))))
    page = chromium.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{url}/lab/tree/rank.ipynb?token={token}")

    # The cell's own indicator says idle while the kernel is still starting (and Shift+Enter is
    # then lost): wait for the status bar, then for the prompt to show the cell ran.
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle",
                                                                timeout=120_000)
    page.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".jp-Cell .jp-InputPrompt").first).to_contain_text("[1]:", timeout=120_000)

    out = page.locator(".jp-OutputArea-output")
    order = [2, 0, 1]  # C best, then A, then B
    for place, i in enumerate(order, start=1):
        button = out.locator(f"button.rlhf-reply-{'ABC'[i]}")
        button.click()
        # Each click goes to the kernel and back; the new label proves it arrived, in order.
        expect(button).to_have_text(f"{'ABC'[i]}: {['1st', '2nd', '3rd'][place - 1]}")
    out.locator("button.rlhf-submit").click()
    # The widget moves on only after the record is fsynced, so this label means it is on disk.
    expect(out.locator(".rlhf-progress")).to_have_text("ranked 1 / 2")
    expect(out.locator(".rlhf-message")).to_contain_text("Saved C > A > B to ranked.jsonl")

    (record,) = load_comparisons(saved)
    task = World(0).tasks("train", 2)[0]
    assert record["ranking"] == order
    assert record["id"] == "e2e-0" and record["ranker"] == "person"
    assert record["context"] == task.prompt
    assert record["replies"] == list(task.replies().values())[:3]


# The chat cell: an untrained tiny model (the test is about the widget, not the replies); the
# kernel writes its pid so the test can kill it the hard way after the click.
CHAT_CELL = """\
import os, sys
sys.path.insert(0, TESTS)
import torch
from _corpus import synthetic_corpus
from rlhf_course.chat import ChatWidget
from rlhf_course.config import BaseConfig
from rlhf_course.models import build_model, train_tokenizer

open(PID, "w").write(str(os.getpid()))
torch.manual_seed(0)
tok = train_tokenizer(synthetic_corpus(300, chat_every=2), vocab_size=300, model_max_length=256)
model = build_model(BaseConfig.preset("cpu", d_model=64, n_layers=2, n_heads=2, d_ff=192, max_seq_len=128), tok)
ChatWidget({"sft": (tok, model)}, FEEDBACK, max_new_tokens=8)
"""


def test_chat_send_and_rate_in_jupyterlab_survives_a_killed_kernel(chromium, lab):
    from playwright.sync_api import expect

    from rlhf_course.feedback import load_feedback

    url, token, root = lab
    feedback, pid_file = root / "feedback.jsonl", root / "kernel.pid"
    source = (CHAT_CELL.replace("TESTS", repr(str(Path(__file__).parent)))
              .replace("PID", repr(str(pid_file))).replace("FEEDBACK", repr(str(feedback))))
    (root / "chat.ipynb").write_text(json.dumps(_notebook(source)))
    page = chromium.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{url}/lab/tree/chat.ipynb?token={token}")
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle",
                                                                timeout=120_000)
    page.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".jp-Cell .jp-InputPrompt").first).to_contain_text("[1]:", timeout=120_000)

    out = page.locator(".jp-OutputArea-output")
    message = "Héllo 👋 世界 — שלום?"
    out.get_by_placeholder("Message the assistant").fill(message)
    out.get_by_role("button", name="Send").click()
    expect(out.locator(".widget-html").filter(has_text=message).first).to_be_visible()
    out.get_by_role("button", name="👍").click()
    # The status line changes only after the record is fsynced.
    expect(out).to_contain_text("Saved your 👍 to feedback.jsonl")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)

    (record,) = load_feedback(feedback)
    assert record["rating"] == "up" and record["stage"] == "sft"
    assert record["context"][-1] == {"role": "user", "content": message}


# Typed into a new cell once notebook 04 has run: which Python the kernel is and where it found
# the package (and its pid, to check that stopping the server stops the kernel too).
PROBE = "import os, sys, rlhf_course; print(sys.prefix); print(rlhf_course.__file__); print(os.getpid())"


def test_lab_sh_opens_notebook_04_with_the_venv_kernel(chromium, tmp_path):
    """The README's third command: `bash scripts/lab.sh` starts JupyterLab from .venv, notebook
    04 runs in it against the run folder named by RLHF_COURSE_RUN_DIR, and its ranking widget
    renders; SIGTERM (Ctrl+C) stops the server and its kernel."""
    from _runs import tiny_run
    from playwright.sync_api import expect

    run = tmp_path / "run"
    run.mkdir()
    tiny_run(run)

    with SHOTS.lab_server(run, tmp_path / "lab") as lab:
        page = chromium.new_page()
        page.set_default_timeout(60_000)
        widget = SHOTS.open_ranking_widget(page, lab)

        # The widget rendered: the first item's replies as buttons, and its controls.
        replies = widget.locator("button[class*='rlhf-reply-']")
        assert replies.count() >= 2
        for i in range(replies.count()):
            expect(replies.nth(i)).to_be_visible()
        for name in ("submit", "reset", "undo"):
            expect(widget.locator(f"button.rlhf-{name}")).to_be_visible()
        expect(widget.locator(".rlhf-progress")).to_have_text(re.compile(r"ranked 0 / \d+"))
        # The cells before it ran in the kernel: the package resolved the tiny run's folder from
        # the environment lab.sh passed on, and read the profile the run recorded.
        cells = page.locator(".jp-Notebook")
        expect(cells).to_contain_text(f"run folder: {run}\nprofile: cpu")
        expect(cells).to_contain_text("RewardConfig(profile='cpu'")

        # A new cell below: the kernel is .venv's Python, importing this checkout's package.
        page.keyboard.press("Escape")
        page.keyboard.press("b")
        page.keyboard.press("Enter")
        page.keyboard.type(PROBE)
        page.keyboard.press("Shift+Enter")
        probe = page.locator(".jp-Notebook .jp-Cell").filter(has_text="print(os.getpid())")
        expect(probe.locator(".jp-OutputArea-output")).to_contain_text(str(REPO / ".venv"))
        prefix, package, pid = probe.locator(".jp-OutputArea-output").inner_text().split()
        assert prefix == str(REPO / ".venv")
        assert package == str(REPO / "rlhf_course" / "__init__.py")

        # lab.sh printed where to open the course, token included.
        printed = f"lab: the course is open at  {lab.url}/lab/tree/00_welcome.ipynb?token={lab.token}"
        assert printed in lab.log.read_text()

    # Stopped as Ctrl+C stops it: lab.sh forwarded the signal and exited 0 (not killed), the
    # server shut its kernel down, and it never saved the notebook (no outputs written into
    # notebooks/; the server logs every save).
    log = lab.log.read_text()
    assert lab.proc.returncode == 0, log[-3000:]
    assert "Kernel shutdown" in log
    assert "Saving file at" not in log
    deadline = time.monotonic() + 20
    while _alive(int(pid)):
        assert time.monotonic() < deadline, f"kernel {pid} still running after the server stopped"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
