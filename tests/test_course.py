"""Course map and the tables notebooks show."""

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
