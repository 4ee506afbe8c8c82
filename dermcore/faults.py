"""Crash injection for tests of crash safety (SIGKILL at a named point, no cleanup of any kind).

Set `DERM_CRASH_AT=<point>` or `<point>:<substring>`; the process kills itself with SIGKILL when it reaches
`crash_point(point, detail)` and the substring (if given) occurs in `detail`. Points: `publish` (an artifact's
files are written and fsynced, before the rename that publishes it; detail = the target path) and `train`
(after the first optimiser step of a training run; detail = the snapshot directory). Unset, it costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DERM_CRASH_AT"


def crash_point(point: str, detail: str = "") -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, needle = spec.partition(":")
    if want == point and needle in detail:
        os.kill(os.getpid(), signal.SIGKILL)
