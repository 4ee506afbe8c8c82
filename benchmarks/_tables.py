"""The one way the results renderer formats a figure and draws a Markdown table (docs/RESULTS.md and the
README's generated block). A key a run did not write shows as "-"."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def fmt(x: Any, nd: int = 4) -> str:
    """A float to `nd` decimals, None as "-", anything else as str()."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def row(cells: Sequence[Any]) -> str:
    """One Markdown table row; an empty cell is drawn as "| |"."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]] = ()) -> list[str]:
    """A Markdown table: the header, its `|---|` rule, then one line per row (cells already formatted, or
    anything `str()` draws)."""
    return [row(header), "|" + "---|" * len(header), *(row(r) for r in rows)]
