"""Progress reporting without printing: library functions take a callback, the CLI draws bars."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: progress(stage, done, total): `stage` names the work, `done` of `total` units are finished.
Progress = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The default callback: report nothing."""


class ProgressLog:
    """A progress callback that logs: one INFO line each time a stage crosses one of `marks` equal slices
    (`marks[stage]`, else `default_marks`), then forwards to `inner`. With marks = the epochs of a training
    stage, whose total is steps per epoch x epochs, the lines fall exactly at the ends of epochs and say so
    (`epoch_stages`)."""

    def __init__(
        self,
        logger: logging.Logger,
        inner: Progress = no_progress,
        marks: dict[str, int] | None = None,
        default_marks: int = 4,
    ) -> None:
        self.logger = logger
        self.inner = inner
        self.marks = dict(marks or {})
        self.default_marks = max(1, default_marks)
        self._stage = ""
        self._slice = -1
        self._t0 = 0.0
        self._done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self._stage or done < self._done:  # a new stage, or the same stage run again
            self._stage, self._slice, self._t0 = stage, 0, now
        self._done = done
        m = self.marks.get(stage, self.default_marks)
        k = done * m // max(total, 1)
        if k > self._slice:
            self._slice = k
            secs = now - self._t0
            if stage in self.marks:
                self.logger.info(
                    "%s: epoch %d/%d done (step %d/%d, %.1f s since step 1)", stage, k, m, done, total, secs
                )
            else:
                pct = 100 * done / max(total, 1)
                self.logger.info(
                    "%s: %d/%d (%.0f%%, %.1f s since the first report)", stage, done, total, pct, secs
                )
        self.inner(stage, done, total)
