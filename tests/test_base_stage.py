"""The `base` stage end to end on a shrunken cpu config: the real command, the real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_course.config import BaseConfig
from rlhf_course.models import load_base
from rlhf_course.pretrain import run_base
from rlhf_course.runs import MissingStageOutput, require

# Small enough to run in seconds; the stage's logic is the same as the cpu preset's.
TINY = {"steps": 12, "corpus_docs": 400, "d_model": 64, "n_heads": 2, "d_ff": 128, "n_layers": 1,
        "vocab_size": 320, "batch_size": 8, "eval_prompts": 200, "max_new_tokens": 12}


@pytest.mark.slow
def test_cli_run_writes_report_with_base_entry(tmp_path):
    out = tmp_path / "run"
    sets = [arg for k, v in TINY.items() for arg in ("--set", f"base.{k}={v}")]
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_course.cli", "run", "--profile", "cpu", "--out", str(out), "--stages", "base",
         *sets],
        capture_output=True, text=True, timeout=600, env={**os.environ, "MPLBACKEND": "agg"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    base = json.loads((out / "report.json").read_text())["base"]
    assert 0.0 <= base["gold"] <= 1.0
    assert base["eval_prompts"] >= 200 and base["gold_ideal"] == 1.0
    assert base["seconds"] > 0 and base["peak_rss_mb"] > 0
    assert set(base["gold_by_family"]) == {
        "followup", "false_premise", "harmful", "benign", "act", "restyle", "summarize",
        "clarify", "fact", "concise"}
    samples = (out / "base" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == base["eval_prompts"]
    # The saved model is what later stages load.
    tokenizer, model = load_base("cpu", path=out / "base" / "model")
    assert model.config.hidden_size == TINY["d_model"]
    assert tokenizer.decode(tokenizer("Dear Sam, 🙂")["input_ids"], skip_special_tokens=True) == "Dear Sam, 🙂"


@pytest.mark.slow
def test_same_seed_same_base_report(tmp_path):
    cfg = BaseConfig.preset("cpu", **TINY)
    a = run_base(cfg, tmp_path / "a", progress=False)
    b = run_base(cfg, tmp_path / "b", progress=False)
    for key in ("gold", "gold_by_family", "final_loss", "params"):
        assert a[key] == b[key], key
    assert (tmp_path / "a/base/samples.jsonl").read_text() == (tmp_path / "b/base/samples.jsonl").read_text()


def test_base_stage_refuses_fewer_than_200_eval_prompts(tmp_path):
    with pytest.raises(ValueError, match="at least 200"):
        run_base(BaseConfig.preset("cpu", eval_prompts=50), tmp_path)


def test_missing_base_output_names_the_stage_and_command(tmp_path):
    with pytest.raises(MissingStageOutput) as err:
        require(tmp_path, "base", "model", profile="cpu")
    message = str(err.value)
    assert "base" in message and "rlhf-course run --profile cpu" in message and "--stages base" in message


def test_corrupt_base_model_folder_is_a_clear_error(tmp_path):
    folder = Path(tmp_path) / "base" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(Exception) as err:
        load_base("cpu", path=folder)
    assert str(folder) in str(err.value)


def test_unknown_autocast_is_a_clear_error():
    from rlhf_course.models import build_model, train_tokenizer
    from rlhf_course.pretrain import pretrain

    cfg = BaseConfig.preset("cpu", **TINY, autocast="fp16")
    texts = ["Mara Voss was born in 1701. " * 40] * 5
    tokenizer = train_tokenizer(texts, 300)
    with pytest.raises(ValueError, match="autocast"):
        pretrain(build_model(cfg, tokenizer), tokenizer, texts, cfg, progress=False)
