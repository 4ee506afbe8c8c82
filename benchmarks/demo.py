"""The demo's figures and stage timings: `derm demo` on a fresh workspace (benchmarks/work/demo).

Writes benchmarks/results/demo.json: the report (the `derm eval --json` document of the last day), the seconds
of each stage, the total, the dataset's statistics, and the machine. Usage: python benchmarks/demo.py
"""

from __future__ import annotations

import json
import os
import shutil

from common import ROOT, write_result

from adslog.workspace import Workspace
from eval.baselines import logistic_vs_ranker
from workflow.demo import run_demo


def main() -> None:
    work = ROOT / "benchmarks" / "work" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    load_start = list(os.getloadavg())
    s = run_demo(work)
    baselines = logistic_vs_ranker(Workspace.open(work), s["eval_day"])
    result = {
        "command": "python benchmarks/demo.py  (runs `derm demo` on a fresh workspace)",
        "report": s["report"],
        "stage_seconds": s["stage_seconds"],
        "total_seconds": s["total_seconds"],
        "dataset_stats": s["dataset_stats"],
        "train_days": s["train_days"],
        "daily_days": s["daily_days"],
        "eval_day": s["eval_day"],
        "baselines": baselines,
        # the machine's load average before and after: stage seconds from a loaded machine are not the demo's
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
    }
    path = write_result("demo", result)
    r = s["report"]
    print(
        json.dumps(
            {
                "results": str(path),
                "recall_at_k": r["retrieval"]["recall_at_k"],
                "popularity_recall_at_k": r["retrieval"]["popularity_recall_at_k"],
                "roc_auc": r["ranking"]["roc_auc"],
                "logistic_roc_auc": baselines["logistic_roc_auc"],
                "total_seconds": s["total_seconds"],
            }
        )
    )


if __name__ == "__main__":
    main()
