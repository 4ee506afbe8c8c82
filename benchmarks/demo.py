"""The demo's figures and stage timings: `derm demo` on a fresh workspace (benchmarks/work/demo).

Writes benchmarks/results/demo.json: the report (the `derm eval --json` document of the last day), the seconds
of each stage, the total, the dataset's statistics, and the machine. Usage: python benchmarks/demo.py
"""

from __future__ import annotations

import json
import shutil

from common import ROOT, write_result

from workflow.demo import run_demo


def main() -> None:
    work = ROOT / "benchmarks" / "work" / "demo"
    shutil.rmtree(work, ignore_errors=True)
    s = run_demo(work)
    result = {
        "command": "python benchmarks/demo.py  (runs `derm demo` on a fresh workspace)",
        "report": s["report"],
        "stage_seconds": s["stage_seconds"],
        "total_seconds": s["total_seconds"],
        "dataset_stats": s["dataset_stats"],
        "train_days": s["train_days"],
        "daily_days": s["daily_days"],
        "eval_day": s["eval_day"],
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
                "total_seconds": s["total_seconds"],
            }
        )
    )


if __name__ == "__main__":
    main()
