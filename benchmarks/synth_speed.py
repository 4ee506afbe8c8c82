"""Throughput of the synthetic log generator: ~3M impressions into a temporary directory.

Writes benchmarks/results/synth_speed.json: impressions, seconds, impressions_per_minute, config, machine.
Usage: .venv/bin/python benchmarks/synth_speed.py [--impressions-per-day N] [--days D]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from adslog.synth import SynthConfig, generate

RESULTS = Path(__file__).resolve().parent / "results" / "synth_speed.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impressions-per-day", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=15)
    ap.add_argument("--users", type=int, default=20_000)
    args = ap.parse_args()
    cfg = SynthConfig(n_users=args.users, n_days=args.days, impressions_per_day=args.impressions_per_day)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = generate(cfg, Path(tmp) / "synth")
        seconds = time.perf_counter() - t0
    result = {
        "impressions": stats["n_impressions"],
        "seconds": round(seconds, 3),
        "impressions_per_minute": round(stats["n_impressions"] / seconds * 60),
        "config": asdict(cfg),
        "stats": stats,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: result[k] for k in ("impressions", "seconds", "impressions_per_minute")}))


if __name__ == "__main__":
    main()
