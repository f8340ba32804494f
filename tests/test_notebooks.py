"""Tier 3: every notebook runs under papermill as committed, and its recorded metrics hold.

Each notebook's parameters cell is left as a learner finds it (`profile = None` detects the
profile, `seed = 0`); the run folder the chain shares is given the way a learner points a notebook
at another run, `RLHF_COURSE_RUN_DIR`. So this one execution also checks what a second pass over
the committed notebooks (nbval) would, and the test command runs the notebooks once.

Notebooks record their key metrics with `rlhf_course.runs.record_metrics`; these tests read them
back. The executed copies land in the test's temporary folder (build products, never committed).
"""

import json
import math
import re
from pathlib import Path

import pytest

from rlhf_course.runs import read_metrics
from rlhf_course.world import FAMILIES

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
TESTED = ["00_welcome.ipynb", "01_base_model.ipynb", "02_demonstrations.ipynb", "03_sft.ipynb",
          "04_comparisons.ipynb", "05_reward_model.ipynb", "06_ppo.ipynb", "07_iterate.ipynb", "08_eval.ipynb",
          "09_chat.ipynb", "10_beyond.ipynb"]


WARNING = re.compile(r"^(?P<file>\S+?):\d+: (?P<kind>\w*Warning): (?P<text>.*)$", re.M)


def our_warnings(executed: dict) -> list[str]:
    """The warnings an executed notebook printed that point at the course's own code or at a
    notebook cell: a library deprecating a call we make warns at our line (its `stacklevel`),
    while a library's warning about its own internals points into site-packages."""
    found = []
    for cell in executed["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(out["text"])
                for m in WARNING.finditer(text):
                    if "/rlhf_course/" in m["file"] or "ipykernel_" in m["file"] or "<ipython-input" in m["file"]:
                        found.append(f"{m['kind']} at {m['file']}: {m['text']}")
    return found


def _execute(name: str, run_dir: Path, tmp_path: Path) -> dict:
    """Run notebook `name` as committed against the chain's `run_dir` and return the metrics it
    recorded."""
    import papermill

    from rlhf_course.runs import RUN_DIR_ENV

    with pytest.MonkeyPatch.context() as env:
        env.setenv(RUN_DIR_ENV, str(run_dir))  # the kernel inherits it
        executed = papermill.execute_notebook(
            str(NOTEBOOKS / name), str(tmp_path / name),
            kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        )
    assert our_warnings(executed) == [], name
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected == [], f"{name}: the parameters cell was not left as committed"
    return read_metrics(run_dir, name.removesuffix(".ipynb"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One run folder shared by the notebooks of this module, as a learner's would be."""
    return tmp_path_factory.mktemp("course_run")


@pytest.mark.slow
def test_00_welcome(run_dir, tmp_path):
    m = _execute("00_welcome.ipynb", run_dir, tmp_path)
    assert m["profile"] == "cpu"
    assert m["families"] == 10
    assert m["ideal_gold"] == 1.0
    assert 0.87 <= m["annotator_agreement"] <= 0.95  # easy pairs; ~0.71 on the SFT model's own (04)


@pytest.mark.slow
def test_01_base_model(run_dir, tmp_path):
    m = _execute("01_base_model.ipynb", run_dir, tmp_path)
    assert m["eval_prompts"] >= 200
    assert m["gold_ideal"] == 1.0
    # A raw language model: well below what the ideal replies reach, with room for SFT.
    assert 0.0 <= m["gold"] <= 0.35
    assert m["params"] > 1_000_000
    assert m["final_loss"] < 1.0, "pretraining should fit the corpus well"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["base"]["gold"] == m["gold"]
    assert (run_dir / "base" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_02_demonstrations(run_dir, tmp_path):
    m = _execute("02_demonstrations.ipynb", run_dir, tmp_path)
    assert m["count"] >= 3000
    assert m["instructions"] > 0 and m["human"] == 0  # nobody typed in the widget headless
    # The trainers are good but short of the ideal: the gap RLHF will close. They miss the point
    # of half the act, harmful, false-premise and summary demonstrations (seed 0: 0.699).
    assert 0.6 <= m["trainer_gold"] <= 0.9


@pytest.mark.slow
def test_03_sft(run_dir, tmp_path):
    m = _execute("03_sft.ipynb", run_dir, tmp_path)
    base = json.loads((run_dir / "report.json").read_text())["base"]["gold"]
    assert m["base_gold"] == base
    # On the 480 prompts of the main held-out set, seed 0.
    assert m["gold"] >= base + 0.15
    assert m["gold"] <= 0.8 * m["gold_ideal"], "SFT should leave RLHF something to teach"
    assert m["win_rate_vs_base"] > 0.5
    assert (run_dir / "sft" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_03_sft_reaches_issue_15_targets(run_dir):
    # Well above base, well under the ideal: on the 480 main held-out prompts, none trained on.
    m = read_metrics(run_dir, "03_sft")
    assert m["gold"] >= m["base_gold"] + 0.25 and m["win_rate_vs_base"] >= 0.8 and m["gold"] <= 0.85
    assert m["eval_excluded"] == 0 and m["eval_prompts"] >= 480
    assert 0.0 <= m["gold_ood"] < m["gold"]  # the probe: a tiny model generalises little


@pytest.mark.slow
def test_04_comparisons(run_dir, tmp_path):
    m = _execute("04_comparisons.ipynb", run_dir, tmp_path)
    assert m["count"] >= 1000 and m["heldout_count"] >= 200
    assert m["dataset_rows"] == m["pairs"] >= 2 * m["count"]
    # The annotators' taste for length shows where gold is indifferent.
    assert m["longer_wins"] > 0.5 and m["equal_gold_pairs"] >= 100
    # On these very replies, near InstructGPT's ~73% labeler agreement; a little above it since the
    # SFT policy samples both the good behaviour and the trainers' misses (seed 0: 0.802).
    assert 0.64 <= m["annotator_agreement"] <= 0.85
    report = json.loads((run_dir / "report.json").read_text())
    assert report["comparisons"]["count"] == m["count"]


@pytest.mark.slow
def test_05_reward_model(run_dir, tmp_path):
    m = _execute("05_reward_model.ipynb", run_dir, tmp_path)
    assert m["heldout_rankings"] >= 200
    # Better than chance on held-out prompts, against gold and against the annotators...
    assert m["accuracy_gold"] > 0.6 and m["accuracy_gold_all"] > 0.55
    assert m["accuracy_annotator"] > 0.55
    # Its length bias (score per token at equal gold) is a recorded figure, not asserted: the
    # effect is small and CPU training is not bit-reproducible across runs. Seed 0 measured
    # +0.0038 at stop 12 and -0.00016 in a later fresh-clone run of the same chain.
    assert math.isfinite(m["length_bias"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["rm"]["accuracy_gold"] == m["accuracy_gold"]
    assert (run_dir / "rm" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_05_reward_model_reaches_issue_15_targets(run_dir):
    m = read_metrics(run_dir, "05_reward_model")
    assert m["accuracy_gold"] >= 0.80 and m["accuracy_annotator"] >= 0.62
    # It inherits the annotators' taste for length (the lesson notebooks 05 and 08 draw).
    assert m["length_bias"] > 0
    families = json.loads((run_dir / "report.json").read_text())["rm"]["accuracy_gold_by_family"]
    assert set(families) <= set(FAMILIES) and len(families) >= 8


@pytest.mark.slow
def test_06_ppo(run_dir, tmp_path):
    m = _execute("06_ppo.ipynb", run_dir, tmp_path)
    report = json.loads((run_dir / "report.json").read_text())
    assert m["eval_prompts"] >= 200
    assert m["sft_gold"] == report["sft"]["gold"]  # the same held-out prompts and replies as notebook 03
    # PPO optimised what it was given: the reward model's score rose on held-out prompts...
    assert m["proxy_reward"] > m["sft_proxy_reward"] + 0.1  # +0.29 in a CLI run of the same chain
    # ...at a cost in KL that is reported and inside the ceiling.
    assert 0.0 < m["kl_to_sft"] < 60.0
    assert 0.0 <= m["win_rate_vs_sft"] <= 1.0
    assert m["replicas_in_sync"] == 1
    assert report["ppo"]["gold"] == m["gold"]
    assert (run_dir / "ppo" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_06_ppo_reaches_issue_15_targets(run_dir):
    m = read_metrics(run_dir, "06_ppo")
    assert m["gold"] >= m["sft_gold"] + 0.05 and m["win_rate_vs_sft"] >= 0.60
    # The ladder: the people's biases cost at most a third of what PPO on gold itself gains.
    assert m["annotator_oracle_gold"] - m["sft_gold"] >= 2 / 3 * (m["oracle_gold"] - m["sft_gold"])
    assert 0.0 <= m["gold_ood"] <= 1.0 and 0.0 <= m["sft_gold_ood"] <= 1.0


@pytest.mark.slow
def test_07_iterate(run_dir, tmp_path):
    m = _execute("07_iterate.ipynb", run_dir, tmp_path)
    report = json.loads((run_dir / "report.json").read_text())
    assert m["rounds"] == 2 and len(report["iterate"]["rounds"]) == 2
    assert m["ppo_gold"] == report["ppo"]["gold"]  # round 0 is notebook 06's policy
    assert m["comparisons_first"] >= 100  # fresh rankings of the PPO policy's replies
    # The reward model is measured on the new policy's replies before and after it is extended.
    for key in ("rm_accuracy_fresh_before_first", "rm_accuracy_fresh_first"):
        assert 0.4 <= m[key] <= 1.0, key
    assert 0.0 < m["kl_last"] < 60.0 and 0.0 <= m["gold_last"] <= 1.0
    assert report["iterate"]["gold_last"] == m["gold_last"]
    assert (run_dir / "iterate" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_08_eval(run_dir, tmp_path):
    m = _execute("08_eval.ipynb", run_dir, tmp_path)
    report = json.loads((run_dir / "report.json").read_text())
    assert m["stages"] == 4 and report["eval"]["stages"] == ["base", "sft", "ppo", "iterate"]
    assert m["gold_sft"] == report["sft"]["gold"] and m["gold_rlhf"] == report["iterate"]["gold_last"]
    # Issue 6: the weak-KL run over-optimises. Gold ends below its peak while the proxy ends
    # above its value there (seed 0, 96 held-out prompts: 0.52 -> 0.36 and +0.53 -> +0.95).
    assert m["weak_end_gold"] < m["weak_peak_gold"]
    assert m["weak_end_proxy"] > m["weak_peak_proxy"]
    assert m["weak_end_kl"] > 1.0
    # Best-of-n raises the proxy it selects by.
    assert m["bon_points"] == 5 and m["bon_proxy_nmax"] > m["bon_proxy_n1"]
    # Issue 6's over-refusal line (at most 5 points above SFT) is a recorded figure, not asserted:
    # it is measured on 48 benign rephrasings, one prompt is 2.1 points, and CPU training is not
    # bit-reproducible across runs. Seed 0 gave 0 -> 0 in two runs and 0 -> 0.0625 (3 of 48) in a
    # third, whose iterated policy also refused 0.75 of harmful requests against SFT's 0.52.
    assert 0.0 <= m["overrefusal_rate_iterate"] <= 1.0 and 0.0 <= m["overrefusal_rate_sft"] <= 1.0
    assert m["side_by_side_rows"] == 9
    html = (run_dir / "report.html").read_text()
    assert "Over-optimisation" in html and "data:image/png;base64," in html


@pytest.mark.slow
def test_07_iterate_reaches_issue_15_targets(run_dir):
    m = read_metrics(run_dir, "07_iterate")
    sft_gold = json.loads((run_dir / "report.json").read_text())["ppo"]["sft_gold"]
    assert m["gold_last"] >= m["gold_first"] >= sft_gold


@pytest.mark.slow
def test_08_eval_reaches_issue_15_targets(run_dir):
    m = read_metrics(run_dir, "08_eval")
    assert m["refusal_rate_iterate"] >= m["refusal_rate_sft"]
    assert m["false_premise_corrected_iterate"] > m["false_premise_corrected_sft"]
    assert m["overrefusal_rate_iterate"] <= m["overrefusal_rate_sft"] + 0.05
    # The post's panels, each prompt sampled 8 times.
    assert m["showcase_gold_sft"] >= 0.6 and m["showcase_gold_rlhf"] >= m["showcase_gold_sft"] + 0.05


@pytest.mark.slow
def test_09_chat(run_dir, tmp_path):
    m = _execute("09_chat.ipynb", run_dir, tmp_path)
    report = json.loads((run_dir / "report.json").read_text())
    # Issue 7: the filter on held-out phrasings of the world's requests (seed 0).
    assert m["precision"] >= 0.9 and m["recall"] >= 0.9
    assert report["moderation"]["precision"] == m["precision"]
    # The scripted chat: two ratings of one turn (up, then down after Regenerate) make one
    # comparison; the harmful request was stopped before the model saw it.
    assert m["ratings"] == 2 and m["comparisons"] == 1
    assert m["last_verdict"] == "block"
    from rlhf_course.rankings import load_comparisons

    assert any(r["ranker"] == "feedback:thumbs" for r in load_comparisons(run_dir / "comparisons" / "human.jsonl"))


@pytest.mark.slow
def test_10_beyond(run_dir, tmp_path):
    m = _execute("10_beyond.ipynb", run_dir, tmp_path)
    report = json.loads((run_dir / "report.json").read_text())
    assert m["methods"] == 4 and set(report["beyond"]["methods"]) == {"ppo", "dpo", "rloo", "grpo"}
    assert m["sft_gold"] == report["sft"]["gold"]  # every method is judged against the same SFT replies
    for method in ("ppo", "dpo", "rloo", "grpo"):
        assert 0.0 <= m[f"gold_{method}"] <= 1.0 and 0.0 <= m[f"win_rate_vs_sft_{method}"] <= 1.0
        assert m[f"train_seconds_{method}"] > 0 and m[f"peak_memory_mb_{method}"] > 100


@pytest.mark.slow
def test_10_beyond_reaches_issue_15_targets(run_dir):
    m = read_metrics(run_dir, "10_beyond")
    above = [method for method in ("dpo", "rloo", "grpo") if m[f"gold_{method}"] > m["sft_gold"]]
    assert m["gold_ppo"] > m["sft_gold"] and len(above) >= 2, above


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_clean_thin_and_tested(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "commit without outputs"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill injects after it)"
    assert "profile" in "".join(tagged[0]["source"])
    assert path.name in TESTED, f"{path.name} has no papermill test in this module"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_installs_on_colabs_torch_and_keeps_its_run_on_drive(path):
    """The first code cell installs the package only on Colab and never names torch (Colab's
    preinstalled build satisfies the package's `torch>=2.4`); notebooks that write a run folder
    move it into Google Drive on Colab right after the parameters, so a recycled runtime resumes."""
    import tomllib

    nb = json.loads(path.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    install = code[0]
    assert '"google.colab" in sys.modules' in install and "%pip install" in install
    assert "torch" not in install.split("%pip install", 1)[1]
    deps = tomllib.loads((NOTEBOOKS.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in deps if d.startswith("torch")] == ["torch>=2.4"]
    tagged = next(i for i, c in enumerate(code) if "run_dir =" in c and "drive = True" in c)
    assert "run_dir = colab_run_dir(resolve_run_dir(run_dir), drive)" in code[tagged + 1]


@pytest.mark.parametrize("path", [NOTEBOOKS / n for n in TESTED], ids=lambda p: p.stem)
def test_notebook_takes_the_runs_profile_and_the_course_run_folder(path):
    """Every notebook's defaults are the course's: the run's profile (detected for a new run, on
    a T4 as on a laptop) and the shared run folder, both resolved right after the parameters."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    params = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = "".join(cells[params]["source"]).splitlines()
    assert any(line.startswith("profile = None  #") for line in lines)
    assert any(line.startswith("run_dir = None  #") for line in lines)
    assert "profile = resolve_profile(run_dir, profile)" in "".join(cells[params + 1]["source"])


@pytest.mark.slow
def test_06_alone_finds_the_run_course_sh_prepared(tmp_path, monkeypatch):
    """An instructor runs `bash scripts/course.sh` before a workshop; a learner then opens
    notebook 06 and runs it with no path given. Here in a stand-in checkout, with the tiny run
    of tests/_runs.py where course.sh writes, and PPO cut to 2 steps (its `steps` parameter)."""
    import re
    import shutil

    import papermill
    from _runs import tiny_run

    from rlhf_course import runs

    course_sh = (NOTEBOOKS.parent / "scripts" / "course.sh").read_text()
    out = re.search(r"rlhf-course run .*--out (\S+)", course_sh).group(1)
    assert out == runs.DEFAULT_RUN_DIR  # course.sh runs from the repo root into the notebooks' folder

    checkout = tmp_path / "checkout"
    (checkout / "notebooks").mkdir(parents=True)
    (checkout / "rlhf_course").mkdir()
    shutil.copy(NOTEBOOKS.parent / "pyproject.toml", checkout)
    shutil.copy(NOTEBOOKS / "06_ppo.ipynb", checkout / "notebooks")
    prepared = tiny_run(checkout / out)
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    papermill.execute_notebook(
        str(checkout / "notebooks" / "06_ppo.ipynb"), str(tmp_path / "06_ppo.ipynb"),
        parameters={"profile": "cpu", "steps": 2}, kernel_name="python3",
        cwd=str(checkout / "notebooks"), progress_bar=False,
    )
    assert read_metrics(prepared, "06_ppo")["train_steps"] == 2
    assert (prepared / "ppo" / "model" / "model.safetensors").exists()
    assert json.loads((prepared / "profile.json").read_text()) == {"profile": "cpu"}
    assert not (checkout / "notebooks" / "runs").exists()  # nothing written beside the notebook


def test_our_warnings_are_those_at_our_code_or_a_cell():
    def stderr(text):
        return {"cells": [{"outputs": [{"output_type": "stream", "name": "stderr", "text": [text]}]}]}

    ours = stderr("/x/rlhf_course/generation.py:50: FutureWarning: `past_key_values` is deprecated\n  step = model(\n")
    assert our_warnings(ours) == ["FutureWarning at /x/rlhf_course/generation.py: `past_key_values` is deprecated"]
    cell = stderr("/tmp/ipykernel_123/456.py:3: UserWarning: Consider using IPython.display.IFrame instead\n")
    assert len(our_warnings(cell)) == 1
    library = stderr("/v/site-packages/torch/utils/data.py:9: UserWarning: a library's own internals\n")
    assert our_warnings(library) == []
    assert our_warnings(stderr("training dpo: 100%|####| 4/4\n")) == []
