"""docs/RESULTS.md and the README's figures block are what benchmarks/render_results.py makes of the committed
benchmarks/results/*.json: a hand edit, or a results file committed without re-rendering, fails here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:  # the scripts import each other by bare name (`from common import ...`)
    sys.path.append(str(BENCH))

import render_results  # noqa: E402
from _render_readme import BEGIN, END, readme_block, replace_block  # noqa: E402
from _tables import fmt, row, table  # noqa: E402


@pytest.mark.parametrize("name", ["docs/RESULTS.md", "README.md"])
def test_committed_file_is_the_render_of_the_committed_json(name: str) -> None:
    rendered = {p.relative_to(render_results.ROOT).as_posix(): t for p, t in render_results.render().items()}
    committed = (render_results.ROOT / name).read_text()
    assert committed == rendered[name], (
        f"{name} differs from what the committed JSON renders: run `cd benchmarks && python render_results.py`"
    )


def test_readme_block_names_its_source_and_every_figure_is_filled() -> None:
    results = render_results.load_results()
    block = readme_block(results)
    assert block[0] == BEGIN and block[-1] == END
    body = block[3:-1]
    assert len(body) >= 10
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        stem = cells[2].strip("`").removesuffix(".json")
        assert stem in results  # every figure names the results file it comes from
        assert "-" not in cells[1].split(" / ")  # and that file holds it


def test_replace_block_refuses_missing_markers() -> None:
    with pytest.raises(ValueError):
        replace_block("no markers here", [BEGIN, END])
    text = f"a\n{BEGIN}\nold\n{END}\nb"
    assert replace_block(text, [BEGIN, "new", END]) == f"a\n{BEGIN}\nnew\n{END}\nb"


def test_table_helper() -> None:
    assert table(("a", "b"), [(1, fmt(0.5)), ("x", "")]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | 0.5000 |",
        "| x | |",
    ]
    assert row(("", None)) == "| | None |"
    assert fmt(None) == "-" and fmt(2.0, 1) == "2.0" and fmt(3) == "3"
