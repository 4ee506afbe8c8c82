"""Throughput of the synthetic log generator: ~3M impressions into a temporary directory.

Writes benchmarks/results/synth_speed.json: impressions, seconds, impressions_per_minute, config, machine.
Usage: .venv/bin/python benchmarks/synth_speed.py [--impressions-per-day N] [--days D]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common import write_result

from adslog.synth import SynthConfig, generate


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
        "command": "python benchmarks/synth_speed.py",
        "impressions": stats["n_impressions"],
        "seconds": round(seconds, 3),
        "impressions_per_minute": round(stats["n_impressions"] / seconds * 60),
        "config": asdict(cfg),
        "stats": stats,
    }
    write_result("synth_speed", result)
    print(json.dumps({k: result[k] for k in ("impressions", "seconds", "impressions_per_minute")}))


if __name__ == "__main__":
    main()
