"""The HTML report of a run (`rlhf-course report`), rendered from synthetic report.json files."""

import json
import re

import pytest

from rlhf_course import cli, runs
from rlhf_course.report import render_report

SCRIPT = "<script>alert('pwned')</script>"

SECTIONS = [
    "Stages at a glance",
    "Gold score by task family",
    "The reward model",
    "One PPO, three rewards",
    "Iterated rounds",
    "Over-optimisation of the reward model",
    "What RLHF does not fix",
    "Verbosity",
    "Side by side",
    "The moderation filter",
    "Beyond PPO: DPO, RLOO, GRPO",
]


def _round(n: int, gold: float, words: float) -> dict:
    return {"round": n, "comparisons": 300, "rm_train_rankings": 1200 + 300 * n,
            "rm_accuracy_fresh_before": 0.55, "rm_accuracy_fresh": 0.6, "rm_accuracy_gold_fresh": 0.66,
            "rm_length_bias": 0.004 + 0.001 * n, "gold": gold, "proxy_reward": 0.5, "kl_to_sft": 1.9,
            "reply_words": words, "win_rate_vs_sft": 0.45, "win_rate_vs_previous": 0.52,
            "gold_by_family": {"harmful": 0.6, "false_premise": 0.3}, "seconds": 150.0}


def full_report() -> dict:
    """Every stage and every field the report renders; distinctive numbers to look for."""
    common = {"profile": "cpu", "seed": 7}
    stages = ["base", "sft", "ppo", "iterate"]
    return {
        "base": {**common, "gold": 0.1234, "seconds": 150.2},
        "sft": {**common, "gold": 0.3811, "win_rate_vs_base": 0.8123, "seconds": 61.0},
        "rm": {**common, "accuracy_gold": 0.7341, "accuracy_annotator": 0.6892, "length_bias": 0.0031,
               "seconds": 40.0},
        "ppo": {**common, "gold": 0.4712, "proxy_reward": 0.91, "kl_to_sft": 2.2, "win_rate_vs_sft": 0.58,
                "sft_gold": 0.3811, "gold_by_family": {"harmful": 0.6137, "false_premise": 0.21},
                "sft_gold_by_family": {"harmful": 0.4, "false_premise": 0.25}, "reply_words": 16.3,
                "sft_reply_words": 12.1, "seconds": 300.0, "oracle_gold": 0.5321, "oracle_win_rate_vs_sft": 0.66,
                "annotator_oracle_gold": 0.5012, "annotator_oracle_win_rate_vs_sft": 0.61},
        "moderation": {**common, "precision": 0.9913, "recall": 0.9477, "tp": 151, "fp": 1, "fn": 5,
                       "user": {"precision": 0.9876, "recall": 0.9312, "tp": 91, "fp": 1, "fn": 5},
                       "assistant": {"precision": 1.0, "recall": 1.0, "tp": 60, "fp": 0, "fn": 0}},
        "beyond": {**common, "eval_prompts": 240, "methods": {
            m: {"gold": g, "win_rate_vs_sft": 0.4, "kl_to_sft": 1.5, "proxy_reward": 0.3, "reply_words": 15.0,
                "train_seconds": 99.0, "peak_memory_mb": 1234.0}
            for m, g in (("ppo", 0.4811), ("dpo", 0.5123), ("rloo", 0.4488), ("grpo", 0.4377))}},
        "iterate": {**common, "start": "ppo", "seconds": 300.1,
                    "rounds": [_round(1, 0.4901, 16.9), _round(2, 0.5521, 17.84)]},
        "eval": {
            **common, "stages": stages, "behaviour_prompts": 60, "phrasing_questions": 40, "seconds": 90.0,
            "refusal_rate": {"base": 0.1, "sft": 0.6, "ppo": 0.7, "iterate": 0.7211},
            "overrefusal_rate": {"base": 0.0, "sft": 0.2, "ppo": 0.3, "iterate": None},
            "false_premise_corrected": dict.fromkeys(stages, 0.25),
            "clarifying_rate": dict.fromkeys(stages, 0.15),
            "phrasing_consistency": dict.fromkeys(stages, 0.45),
            "reply_words": {"base": 9.0, "sft": 12.0, "ppo": 16.0, "iterate": 18.0},
            "gold": {"base": 0.12, "sft": 0.38, "ppo": 0.47, "iterate": 0.55},
            "win_rate_vs_sft": {"ppo": {"all": 0.58, "harmful": 0.6}, "iterate": {"all": 0.6, "harmful": 0.7}},
            "win_rate_vs_previous": {"sft": {"all": 0.81}, "ppo": {"all": 0.58}, "iterate": {"all": 0.52}},
            "overopt": {
                "bon": {"points": [{"n": 1, "kl": 0.0, "d": 0.0, "gold": 0.53, "proxy": 0.0},
                                   {"n": 4, "kl": 0.64, "d": 0.8, "gold": 0.6, "proxy": 1.0},
                                   {"n": 16, "kl": 1.83, "d": 1.35, "gold": 0.57, "proxy": 1.6}],
                        "fit": {"alpha": 0.1234, "beta": 0.05, "peak_d": 1.0},
                        "gold_peak": {"n": 4, "kl": 0.64, "d": 0.8, "gold": 0.6, "proxy": 1.0}},
                "rl": {"points": [{"step": 0, "kl": 0.0, "d": 0.0, "gold": 0.53, "proxy": 0.3},
                                  {"step": 5, "kl": 1.0, "d": 1.0, "gold": 0.6677, "proxy": 0.9}],
                       "fit": {"alpha": 0.2, "beta": 0.1, "peak_d": None},
                       "gold_peak": {"step": 5, "kl": 1.0, "d": 1.0, "gold": 0.6677, "proxy": 0.9},
                       "end": {"step": 5, "kl": 1.0, "d": 1.0, "gold": 0.6677, "proxy": 0.9},
                       "init_kl_coef": 0.01}},
            "side_by_side": [{"family": "false_premise", "user": "Why is the moon made of cheese?",
                              "sft": f"It is cheese. {SCRIPT}", "sft gold": 0.2, "sft verdict": "accepts the premise",
                              "rlhf": "The moon is rock, not cheese.", "rlhf gold": 1.0,
                              "rlhf verdict": "meets the rubric"}],
        },
    }


def _write(run_dir, report: dict):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runs.REPORT_NAME).write_text(json.dumps(report))
    return run_dir


def _assert_self_contained(page: str):
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may spell anything
    assert "http" not in text  # no URL of any kind: the page must open offline


def test_full_report_has_every_section_and_figure(tmp_path):
    run_dir = _write(tmp_path / "run", full_report())
    path = render_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "cpu" in page and "<b>7</b>" in page  # profile and seed in the header
    assert "held-out prompts" in page
    # One number from each section.
    for number in ["0.471",   # overview: ppo gold
                   "0.614",   # by family: ppo harmful
                   "0.734",   # reward model: accuracy against gold
                   "0.532",   # the ladder: PPO against gold
                   "0.552",   # iterations: round 2 gold
                   "0.123",   # over-optimisation: best-of-n alpha
                   "0.668",   # over-optimisation: RL gold peak
                   "0.721",   # limitations: iterate refusal rate
                   "17.8",    # verbosity: round 2 words
                   "meets the rubric",  # side by side
                   "0.931",   # moderation: user recall
                   "0.512"]:  # beyond: dpo gold
        assert number in page, number
    # bar_by_family, the ladder, rounds, over-optimisation, behaviour, verbosity.
    assert page.count('<img alt="') == page.count('src="data:image/png;base64,') == 6
    assert 'class="note"' not in page  # nothing is missing
    # Verbosity lists the stages, then the first reward model, then the rounds.
    verbosity = page[page.index("<h2>Verbosity</h2>"):page.index("<h2>Side by side</h2>")]
    rows = re.findall(r"<tr><td>([^<]+)</td>", verbosity)
    assert rows == ["base", "sft", "ppo", "iterate", "rm", "round 1", "round 2"]
    _assert_self_contained(page)
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page


def test_report_of_an_early_run_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "course_root", lambda start=None: None)  # as outside a checkout: the path as given
    report = full_report()
    run_dir = _write(tmp_path / "early", {"base": report["base"],
                                          "sft": {**report["sft"], "gold_by_family": {"harmful": 0.4}}})
    page = render_report(run_dir).read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "0.381" in page  # sft gold in the overview
    for stage in ("rm", "iterate", "eval", "moderation", "beyond"):
        assert f"--profile cpu --out {run_dir} --stages {stage}</code>" in page
    assert page.count("data:image/png;base64,") == 1  # only the family bars
    _assert_self_contained(page)


def test_missing_or_null_parts_still_render(tmp_path):
    report = full_report()
    ev = report["eval"]
    ev["overopt"] = {"bon": None, "rl": {**ev["overopt"]["rl"], "fit": None, "gold_peak": None, "end": None}}
    ev["side_by_side"] = None
    ev["reply_words"] = None
    ev["refusal_rate"]["sft"] = None
    ev["win_rate_vs_previous"] = {"sft": 0.8177, "ppo": None}  # a bare rate counts as 'all'
    report["iterate"]["rounds"] = None
    report["rm"] = {"accuracy_gold": None, "seconds": 1.0}
    page = render_report(_write(tmp_path / "partial", report)).read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "--stages iterate" in page and "--stages rm" in page
    assert "RL (PPO checkpoints)" in page  # the RL points are still tabulated
    assert "side-by-side examples in this run" in page
    assert "16.3" in page  # verbosity falls back to the stages' own reply lengths
    assert '<tr><td>sft</td><td class="num">0.818</td></tr>' in page


def test_eval_stage_shapes_as_evaluate_run_writes_them(tmp_path):
    # evaluate.run_eval also reports per-stage families, counts per behaviour family, the
    # rounds' lengths and biases keyed 'round_N', a fit that failed with a note, the RLHF stage.
    report = full_report()
    ev = report["eval"]
    ev["gold_by_family"] = {"sft": {"harmful": 0.41}, "iterate": {"harmful": 0.6543}}
    ev["behaviour_prompts"] = {"harmful": 20, "benign": 20, "false_premise": 10, "clarify": 10}
    ev["reply_words_by_round"] = {"round_1": 19.37}
    ev["length_bias"] = {"rm": 0.0031, "round_1": 0.0077}
    ev["overopt"]["bon"]["fit"] = {"alpha": None, "beta": None, "peak_d": None,
                                   "note": "fit_overopt needs at least 2 points with d > 0"}
    ev["rlhf_stage"] = "iterate"
    report["iterate"]["rounds"] = []
    page = render_report(_write(tmp_path / "run", report)).read_text(encoding="utf-8")
    families = page[page.index("<h2>Gold score by task family</h2>"):page.index("<h2>The reward model</h2>")]
    assert "<th>sft</th><th>iterate</th>" in families and "0.654" in families
    assert "60 (20 harmful, 20 benign, 10 false_premise, 10 clarify) behaviour prompts" in page
    assert '<tr><td>round 1</td><td class="num">19.4</td><td class="num">0.0077</td></tr>' in page
    assert "best-of-n: no fit (fit_overopt needs at least 2 points with d &gt; 0)" in page
    assert "<th>RLHF (iterate) reply</th>" in page
    _assert_self_contained(page)


def test_render_report_writes_where_asked(tmp_path):
    run_dir = _write(tmp_path / "run", {"sft": {"gold": 0.3811}})
    out = render_report(run_dir, tmp_path / "handout" / "week3.html")
    assert out == tmp_path / "handout" / "week3.html"
    assert "0.381" in out.read_text(encoding="utf-8")
    assert not (run_dir / "report.html").exists()


def test_missing_report_raises_the_command_to_run(tmp_path):
    with pytest.raises(runs.MissingStageOutput, match="rlhf-course run --out"):
        render_report(tmp_path / "nowhere")


def test_cli_report_prints_the_path(tmp_path, capsys):
    run_dir = _write(tmp_path / "run", full_report())
    assert cli.main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    assert "Over-optimisation" in (run_dir / "report.html").read_text(encoding="utf-8")
    out = tmp_path / "x.html"
    assert cli.main(["report", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.exists()


@pytest.mark.parametrize("content, expected", [(None, "no stage has reported"), ("{oops", "not valid JSON")])
def test_cli_report_without_a_readable_report_exits_1(tmp_path, capsys, content, expected):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if content is not None:
        (run_dir / runs.REPORT_NAME).write_text(content)
    assert cli.main(["report", str(run_dir)]) == 1
    captured = capsys.readouterr()
    assert "error: cannot write the report" in captured.err and expected in captured.err
    assert "Traceback" not in captured.err
    assert not (run_dir / "report.html").exists()


def test_the_report_shows_inline_in_a_frame_of_its_own(tmp_path):
    import html
    import re

    run_dir = _write(tmp_path / "run", {"sft": {"gold": 0.3811}})
    from rlhf_course.report import inline_report

    shown = inline_report(render_report(run_dir), height=500)
    frame = re.fullmatch(r'<div><iframe srcdoc="(.*)" title="the course report" style="width: 100%; height: 500px; '
                         r'border: 1px solid #ccc;"></iframe></div>', shown.data, flags=re.S)
    assert frame is not None and '"' not in frame.group(1)  # the page cannot break out of the attribute
    assert html.unescape(frame.group(1)) == (run_dir / "report.html").read_text(encoding="utf-8")
