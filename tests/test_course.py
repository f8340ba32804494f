"""Course map and the tables notebooks show."""

from pathlib import Path

from rlhf_course.course import COURSE_MAP, course_map_markdown, markdown_table, world_tour
from rlhf_course.world import FAMILIES, World


def test_course_map_lists_every_notebook_in_order():
    assert [row[0] for row in COURSE_MAP] == [f"{i:02d}" for i in range(11)]
    assert course_map_markdown().count("\n") == len(COURSE_MAP) + 1


def test_world_tour_has_one_row_per_family_and_ideal_beats_flawed():
    rows = world_tour(World(0))
    assert [r["family"] for r in rows] == list(FAMILIES)
    assert all(r["ideal gold"] > r["flawed gold"] for r in rows)
    assert all(r["why"] for r in rows), "a flawed reply should come with the reason it lost points"


def test_markdown_table_escapes_pipes_and_newlines():
    table = markdown_table([{"a": "x|y", "b": "1\n2"}])
    assert "x\\|y" in table and "1 ⏎ 2" in table
    assert markdown_table([]) == "(no rows)"


def _notebook_links():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "notebook_links.py"
    spec = importlib.util.spec_from_file_location("notebook_links", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_badges_readme_table_and_install_cells_name_the_one_repository(monkeypatch, capsys):
    links = _notebook_links()
    repo = links.repository()
    assert repo.startswith("https://github.com/")
    assert links.main(["--check"]) == 0  # every notebook and the README are as the script writes them
    notebooks = sorted((links.ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    readme = (links.ROOT / "README.md").read_text()
    for path in notebooks:
        text = path.read_text()
        assert links.colab_url(repo, path.name) in text and f"git+{repo}" in text
        assert links.colab_url(repo, path.name) in readme
    # Another address in pyproject.toml makes every one of them stale.
    monkeypatch.setattr(links, "repository", lambda: "https://github.com/someone-else/fork")
    assert links.main(["--check"]) == 1
    assert capsys.readouterr().err.count("stale:") == len(notebooks) + 1


def test_references_list_what_the_prose_cites_in_a_fixed_order():
    from rlhf_course.course import references_markdown

    text = references_markdown("GRPO and DPO are newer than PPO; see the ChatGPT post.")
    lines = text.splitlines()
    assert lines[0] == "## References"
    assert [line.split("](")[1] for line in lines[2:]] == [
        "https://openai.com/index/chatgpt/)", "https://arxiv.org/abs/1707.06347)",
        "https://arxiv.org/abs/2305.18290)", "https://arxiv.org/abs/2402.03300)"]
    assert references_markdown("a notebook about tokenizers") is None
    assert "2210.10760" in references_markdown("as Gao, Schulman & Hilton measured")


def test_every_notebook_ends_with_links_to_the_sources_it_cites():
    import json

    links = _notebook_links()
    for path in sorted((links.ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        last = json.loads(path.read_text())["cells"][-1]
        assert last.get("id") == links.REFERENCES_ID, path.name  # every notebook cites ChatGPT or PPO
        assert "".join(last["source"]).startswith("## References\n\n- [")
