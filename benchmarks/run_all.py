"""`make bench`: run every benchmark script in benchmarks/ (each writes benchmarks/results/<name>.json), then
regenerate docs/RESULTS.md and the README's figures block from those files. Prints each script's wall time and the total, and records them
(with the machine) in benchmarks/results/bench_times.json, so the page states how long `make bench` took."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP = {"run_all.py", "render_results.py", "common.py", "harness.py"}  # and the _render_* helpers


def main() -> int:
    t0 = time.perf_counter()
    failed = []
    times: dict[str, dict[str, float | int]] = {}
    for script in sorted(HERE.glob("*.py")):
        if script.name in SKIP or script.name.startswith("_"):
            continue
        t = time.perf_counter()
        rc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode
        times[script.name] = {"seconds": round(time.perf_counter() - t, 1), "exit": rc}
        print(f"{script.name}: exit {rc} in {times[script.name]['seconds']:.0f} s", flush=True)
        if rc:
            failed.append(script.name)
    from common import write_result  # imports torch for the machine description: only after the scripts ran

    total = round(time.perf_counter() - t0, 1)
    write_result("bench_times", {"command": "make bench", "scripts": times, "total_seconds": total})
    rc = subprocess.run([sys.executable, str(HERE / "render_results.py")], cwd=HERE.parent).returncode
    print(f"total: {time.perf_counter() - t0:.0f} s; failed: {failed or 'none'}")
    return 1 if failed or rc else 0


if __name__ == "__main__":
    sys.exit(main())
