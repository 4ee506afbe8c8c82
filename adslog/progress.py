"""Progress reporting without printing: library functions take a callback, the CLI draws bars."""

from __future__ import annotations

from collections.abc import Callable

#: progress(stage, done, total): `stage` names the work, `done` of `total` units are finished.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default callback: report nothing."""
