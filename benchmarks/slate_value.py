"""The served slate's true value on the synthetic test day (issue 13): `eval.slate.slate_value` on the default
demo, every user shown ads that day, k = 10 and 50, 500 candidates, advertiser cap 3 for the served order.

The workspace is the default demo (`workflow.demo.run_demo` with `DemoConfig()`), built afresh under
benchmarks/work/slate_value; the test day is its last day, served by the versions published before it, as
`derm eval` evaluates it. See `eval/slate.py` for the systems and the units. Writes
benchmarks/results/slate_value.json (keys `k50`, `k10`: each system's true expected clicks per user, plus
`two_stage_minus_retrieval_ci`; the same under `revenue`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import ROOT, write_result  # noqa: E402

from adserving.two_stage import TwoStage  # noqa: E402
from adslog.oracle import Oracle  # noqa: E402
from adslog.workspace import Workspace  # noqa: E402
from eval.slate import slate_value  # noqa: E402
from workflow.demo import DemoConfig, run_demo  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "slate_value"


def main() -> None:
    """`python benchmarks/slate_value.py [WORK]`: with no argument the default demo is built afresh; WORK names
    a finished default demo workspace built by the same code (e.g. benchmarks/work/demo right after
    benchmarks/demo.py), which is measured as is."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else WORK
    if work == WORK:
        shutil.rmtree(WORK, ignore_errors=True)  # run_demo resumes: a stale workspace would keep old models
    summary = run_demo(work, DemoConfig())  # a finished demo: nothing is recomputed
    build_s = round(time.perf_counter() - t0, 1)
    ws = Workspace.open(work)
    day = int(summary["eval_day"])
    users = np.unique(ws.dataset().impressions(day, ["user_id"]).column("user_id").to_numpy()).astype(
        np.int64
    )
    t1 = time.perf_counter()
    ts = TwoStage(ws, day=day)
    result = slate_value(ts, Oracle.load(ws.data_path()), users)
    result = {
        "command": "python benchmarks/slate_value.py" + (f" {sys.argv[1]}" if len(sys.argv) > 1 else ""),
        "dataset": "synthetic (DemoConfig defaults)",
        "test_day": day,
        "versions": ts.versions,
        **result,
        "build_seconds": build_s,
        "measure_seconds": round(time.perf_counter() - t1, 1),
    }
    print(write_result("slate_value", result))
    for k in ("k10", "k50"):
        print(
            k,
            {
                s: round(result[k][s], 4)
                for s in ("retrieval", "two_stage", "served", "oracle_candidates", "oracle")
            },
        )


if __name__ == "__main__":
    main()
