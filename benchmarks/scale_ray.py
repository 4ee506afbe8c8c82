"""The cost model's engine comparison: one daily cycle on synthetic days of 1M and 3M impressions, in one
process and on Ray with 2 workers (`scale.py`'s runs, config and measurement; that script runs the 1M -> 10M
pair in one process, which leaves no room for these in its 45 minutes on 2 cores).

Writes benchmarks/results/scale_ray.json (the keys of scale.json). Usage (from the repository root):
python benchmarks/scale_ray.py
"""

from __future__ import annotations

import scale

PLAN: tuple[scale.Run, ...] = (
    (1_000_000, "local", 1, True),
    (1_000_000, "ray", 2, True),
    (3_000_000, "local", 1, False),
    (3_000_000, "ray", 2, False),
)

if __name__ == "__main__":
    scale.main(PLAN, "scale_ray")
