"""The cost model: one daily cycle on synthetic days of 1M, 3M and 10M impressions, one process and Ray.

For each size N the synthetic log (`adslog.synth`, users and ads scaled with N from the generator's defaults:
10,000 users and 6,000 ads per 100,000 impressions a day) has two days of N impressions. Day 0 bootstraps the
workspace (not measured: towers and ranker from scratch, one epoch); day 1 is the measured daily cycle
(`workflow.cycle.run_day`, the cycle's own stages and gates) on a fresh copy of that workspace, once per engine:
`local` (one process) and `ray` with 2 workers (inference on 2 Ray Data actors, towers and ranker trained by
2 Ray Train workers under torch DDP). Each run is a child process; this script samples the summed PSS
(proportional set size: shared pages such as Ray's object store counted once) of the child's whole process
tree every 0.25 s and reports the peak per stage and per run.

The cycle config is the default on CPU with negative downsampling at rate 0.1 for the towers and the ranker's
deep part (`negative_rate`: every click and conversion kept, a tenth of the other impressions with weight 10;
quality against every row: benchmarks/downsampling.py). Eval scores retrieval on at most 10,000 clicked users and
the ranker on at most 2M impressions (`eval.evaluate.RETRIEVAL_USERS`, `RANKING_ROWS`), and the daily prior /
graph fits read at most 10,000 users (`workflow.cycle.RERANK_FIT_USERS`): at 3M and 10M those samples are taken,
and the per-stage table shows what they leave.

Stages: eval (day 1 scored with the bootstrap versions), train (the towers' increment, 2 epochs), embed (the
day's users and ads through the towers), aggregate (the store's aggregation and atomic publish), index (the
refresh, with the retrieval prior's and graph's fits and the self-check gate), ranker (its one-epoch increment
and the wide part's refit on the window).

Runs are made in the order of `PLAN`: the bar's pair first (1M and 10M in one process, always run), then the
others while they fit: a run whose projected time (the measured seconds per million impressions of the bootstrap
and of the engine's day at the largest size measured so far, or the local day's times
`UNMEASURED_ENGINE_FACTOR` for an engine not measured yet, times N) would end past the 45-minute budget is
not started, and the projection that ruled it out is recorded under `not_run`. 1M and 3M on both engines are
`scale_ray.py`'s (`scale_ray.json`). The load average is recorded before and after each run.

Writes benchmarks/results/scale.json. Usage (from the repository root): python benchmarks/scale.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import ROOT, write_result

#: (impressions, engine, workers, required) in the order they are run: the bar's pair (1M and 10M in one process)
#: always runs; the others when the budget guard projects them to fit. The 3M runs and Ray at 3M are
#: `scale_ray.py`'s (they do not fit beside a 10M day in 45 minutes on 2 cores)
Run = tuple[int, str, int, bool]
PLAN: tuple[Run, ...] = (
    (1_000_000, "local", 1, True),
    (10_000_000, "local", 1, True),
    (1_000_000, "ray", 2, False),
    (3_000_000, "local", 1, False),
)
NEGATIVE_RATE = 0.1
BUDGET_S = 45 * 60
#: an engine whose day has not been measured yet is projected at the local rate times this (Ray with 2 workers
#: took 1.4-1.6x the local day at 1M on 2 cores, scale.json and scale_ray.json at 98059a3)
UNMEASURED_ENGINE_FACTOR = 2.0
USERS_PER_IMPRESSION = 10_000 / 100_000
ADS_PER_IMPRESSION = 6_000 / 100_000
STAGES = ("eval", "train", "embed", "aggregate", "index", "ranker")


def cycle_config(engine: str, workers: int) -> Any:
    """The default cycle config on CPU with negative downsampling (`NEGATIVE_RATE`) for the towers and the
    ranker; one epoch from scratch at bootstrap (not measured)."""
    from dermdist.config import Engine
    from workflow.cycle import CycleConfig

    base = CycleConfig(device="cpu")
    towers = replace(base.towers, epochs_initial=1, negative_rate=NEGATIVE_RATE)
    cfg = replace(base, towers=towers, ranker=replace(base.ranker, negative_rate=NEGATIVE_RATE))
    if engine == "ray":
        cfg = replace(cfg, engine=Engine.RAY, ray_actors=workers, train_workers=workers)
    return cfg


# --- child process: one bootstrap or one measured day ---------------------------------------------------


def child(mode: str, work: Path, data: Path, engine: str, workers: int, out: Path) -> None:
    import torch

    from adslog.workspace import Workspace
    from workflow import cycle

    torch.set_num_threads(1)
    ws = Workspace.open(work, data)
    ds = ws.dataset()
    days = ds.days()
    cfg = cycle_config(engine, workers)
    intervals: list[tuple[str, float, float]] = []

    class Timed(cycle.Timer):
        def stage(self, name: str) -> Any:
            done, t0 = super().stage(name), time.time()

            def finish() -> None:
                done()
                intervals.append((name, t0, time.time()))

            return finish

    real_publish = cycle.publish_day

    def timed_publish(*args: Any, **kwargs: Any) -> Any:
        t0 = time.time()
        try:
            return real_publish(*args, **kwargs)
        finally:
            intervals.append(("aggregate", t0, time.time()))

    cycle.publish_day = timed_publish  # type: ignore[assignment]
    t0 = time.time()
    if mode == "bootstrap":
        cycle.bootstrap(ws, [days[0]], cfg, timer=Timed())
    else:
        with ws.lock():
            cycle.run_day(ws, days[1], cfg, timer=Timed())
    out.write_text(json.dumps({"start": t0, "end": time.time(), "intervals": intervals}))


# --- memory sampling of a process tree ------------------------------------------------------------------


def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _pss_mb(pids: list[int]) -> float:
    kb = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return kb / 1024


def run_child(mode: str, work: Path, data: Path, engine: str, workers: int) -> dict[str, Any]:
    """Run one child; returns its intervals, wall seconds, and the peak summed PSS (MB) of its process tree,
    overall and per stage."""
    out = work.parent / f"{work.name}-{mode}-{engine}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(work), str(data), engine]
    cmd += [str(workers), str(out)]
    load_before = os.getloadavg()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.time(), _pss_mb(_tree(proc.pid))))
            stop.wait(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {engine} failed ({proc.returncode}): {err[-3000:]}")
    doc = json.loads(out.read_text())
    stage_seconds: dict[str, float] = {}
    stage_peak: dict[str, float] = {}
    agg = sum(e - s for n, s, e in doc["intervals"] if n == "aggregate")
    for name, s, e in doc["intervals"]:
        key = {"train_ctr": "train", "embed_ctr": "embed"}.get(name, name)
        secs = e - s - (agg if key == "embed" else 0.0)
        stage_seconds[key] = round(stage_seconds.get(key, 0.0) + secs, 2)
        peak = max((m for t, m in samples if s <= t <= e), default=0.0)
        stage_peak[key] = round(max(stage_peak.get(key, 0.0), peak), 1)
    return {
        "stage_seconds": stage_seconds,
        "stage_peak_mb": stage_peak,
        "total_seconds": round(doc["end"] - doc["start"], 2),
        "peak_rss_mb": round(max((m for _, m in samples), default=0.0), 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


# --- orchestration --------------------------------------------------------------------------------------


def make_data(n: int, data: Path) -> dict[str, Any]:
    from adslog.synth import SynthConfig, generate

    cfg = SynthConfig(
        n_users=int(n * USERS_PER_IMPRESSION),
        n_ads=int(n * ADS_PER_IMPRESSION),
        n_days=2,
        impressions_per_day=n,
        seed=0,
    )
    t0 = time.perf_counter()
    stats = generate(cfg, data)
    return {
        "n_users": cfg.n_users,
        "n_ads": cfg.n_ads,
        "seconds": round(time.perf_counter() - t0, 2),
        "n_impressions": stats["n_impressions"],
    }


def growth(runs: list[dict[str, Any]], engine: str) -> dict[str, Any]:
    """Least-squares slope of log(total seconds) on log(impressions) over the engine's finished runs
    (1.0: linear cost), and the cost per impression of each size over the smallest's."""
    pts = sorted((r["impressions"], r["total_seconds"]) for r in runs if r["engine"] == engine)
    if len(pts) < 2:
        return {"exponent": None, "sizes": [p[0] for p in pts]}
    xs, ys = [math.log(p[0]) for p in pts], [math.log(p[1]) for p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    base = pts[0][1] / pts[0][0]
    return {
        "exponent": round(slope, 3),
        "sizes": [p[0] for p in pts],
        "cost_per_impression_over_smallest": [round(t / n / base, 3) for n, t in pts],
    }


def stage_growth(runs: list[dict[str, Any]], small: int, large: int) -> dict[str, float] | None:
    """Per stage, its seconds per impression at `large` over at `small` (single process): which stage grows."""
    a = next((x for x in runs if x["impressions"] == small and x["engine"] == "local"), None)
    b = next((x for x in runs if x["impressions"] == large and x["engine"] == "local"), None)
    if a is None or b is None:
        return None
    return {
        k: round((b["stage_seconds"][k] / large) / (a["stage_seconds"][k] / small), 3)
        for k in STAGES
        if a["stage_seconds"].get(k) and k in b["stage_seconds"]
    }


def _cap(module: str, attr: str) -> int:
    import importlib

    return int(getattr(importlib.import_module(module), attr))


def over_budget(
    n: int, engine: str, elapsed: float, day_rate: dict[str, float], boot_rate: float | None, booted: bool
) -> dict[str, Any] | None:
    """The budget guard: None when a run of `n` impressions on `engine` projects to end within `BUDGET_S` (or
    nothing is measured yet to project from), else its `not_run` record (projected seconds, reason). The
    projection: the engine's measured day rate (seconds per million impressions at the largest size measured so
    far), or the local rate x `UNMEASURED_ENGINE_FACTOR` for an engine not measured yet, times n, plus the data
    and bootstrap rate times n when this size is not booted yet."""
    m = n / 1e6
    rate = day_rate.get(engine)
    if rate is None and "local" in day_rate:
        rate = day_rate["local"] * (1.0 if engine == "local" else UNMEASURED_ENGINE_FACTOR)
    if rate is None or boot_rate is None:
        return None
    need = rate * m + (0.0 if booted else boot_rate * m)
    if elapsed + need <= BUDGET_S:
        return None
    how = "" if booted else f"the data and bootstrap ({boot_rate:.0f} s/M) and "
    how += (
        f"the {engine} day ({rate:.0f} s/M)"
        if engine in day_rate
        else f"the local day x {UNMEASURED_ENGINE_FACTOR:g} ({rate:.0f} s/M)"
    )
    return {
        "projected_seconds": round(need, 1),
        "reason": f"at {elapsed:.0f} s of the {BUDGET_S} s budget, {how} measured at a "
        f"smaller size project {need:.0f} s for {m:g}M impressions",
    }


def main(plan: tuple[Run, ...] = PLAN, name: str = "scale") -> None:
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    runs: list[dict[str, Any]] = []
    not_run: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    data_info: dict[str, Any] = {}
    boot_rate: float | None = None  # the data's generation and the bootstrap, seconds per million impressions
    day_rate: dict[str, float] = {}  # the engine's day at the largest size measured, seconds per million
    tmp = Path(tempfile.mkdtemp(prefix="derm-scale-"))
    booted: dict[int, tuple[Path, Path]] = {}
    try:
        for i, (n, engine, workers, required) in enumerate(plan):
            m = n / 1e6
            elapsed = time.perf_counter() - t_start
            skip = over_budget(n, engine, elapsed, day_rate, boot_rate, n in booted)
            if skip is not None and not required:
                not_run.append({"impressions": n, "engine": engine, "workers": workers, **skip})
                continue
            if n not in booted:
                size_dir = tmp / f"n{n}"
                data = size_dir / "data"
                info = make_data(n, data)
                boot_ws = size_dir / "boot"
                try:
                    boot = run_child("bootstrap", boot_ws, data, "local", 1)
                except RuntimeError as e:  # recorded, and the other runs go on (a 10M OOM must not lose 1M)
                    failed.append({"impressions": n, "engine": "bootstrap", "error": str(e)[-2000:]})
                    shutil.rmtree(size_dir, ignore_errors=True)
                    continue
                boot_rate = (boot["total_seconds"] + info["seconds"]) / m
                data_info[str(n)] = {
                    **info,
                    "bootstrap_seconds": boot["total_seconds"],
                    "bootstrap_peak_rss_mb": boot["peak_rss_mb"],
                }
                booted[n] = (data, boot_ws)
            data, boot_ws = booted[n]
            work = boot_ws.parent / f"day-{engine}"
            shutil.copytree(boot_ws, work)
            try:
                r = run_child("day", work, data, engine, workers)
            except RuntimeError as e:
                failed.append({"impressions": n, "engine": engine, "error": str(e)[-2000:]})
                continue
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if n >= max((x["impressions"] for x in runs if x["engine"] == engine), default=0):
                day_rate[engine] = r["total_seconds"] / m
            run = {
                "impressions": n,
                "engine": engine,
                "workers": workers,
                **r,
                "seconds_per_million": round(r["total_seconds"] / m, 2),
            }
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("impressions", "engine", "total_seconds")}), flush=True)
            if all(x[0] != n for x in plan[i + 1 :]):  # no later run of this size
                shutil.rmtree(boot_ws.parent, ignore_errors=True)
                booted.pop(n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def per_impression(n: int) -> float | None:
        r = next((x for x in runs if x["impressions"] == n and x["engine"] == "local"), None)
        return r["total_seconds"] / n if r else None

    c1, c3, c10 = per_impression(1_000_000), per_impression(3_000_000), per_impression(10_000_000)
    result = {
        "command": f"python benchmarks/{name}.py",
        "budget_seconds": BUDGET_S,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "shared_machine": (
            f"{os.cpu_count()} cores; the load average before and after each run is recorded with it "
            "(a load well above the core count means other work shared the machine)"
        ),
        "config": cycle_config("local", 1).to_json(),
        "negative_rate": NEGATIVE_RATE,
        "samples": {
            "eval_retrieval_users": _cap("eval.evaluate", "RETRIEVAL_USERS"),
            "eval_ranking_impressions": _cap("eval.evaluate", "RANKING_ROWS"),
            "rerank_fit_users": _cap("workflow.cycle", "RERANK_FIT_USERS"),
            "ranker_calibration_rows": _cap("ranking.train", "CALIBRATION_ROWS"),
        },
        "plan": [list(x) for x in plan],
        "synthetic": {
            "users_per_impression": USERS_PER_IMPRESSION,
            "ads_per_impression": ADS_PER_IMPRESSION,
            "days": 2,
            "sizes": data_info,
        },
        "stages": list(STAGES),
        "memory": "peak summed PSS of the run's process tree (driver, Ray processes and workers), MB",
        "runs": runs,
        "not_run": not_run,
        "failed": failed,
        "growth_1m_to_10m": round(c10 / c1, 3) if c1 and c10 else None,
        "growth_1m_to_3m": round(c3 / c1, 3) if c1 and c3 else None,
        "growth_1m_to_10m_by_stage": stage_growth(runs, 1_000_000, 10_000_000),
        "growth_exponent": {"local": growth(runs, "local"), "ray": growth(runs, "ray")},
    }
    write_result(name, result)
    print(json.dumps({k: result[k] for k in ("growth_1m_to_10m", "growth_1m_to_3m", "wall_seconds")}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=6, metavar=("MODE", "WORK", "DATA", "ENGINE", "WORKERS", "OUT"))
    ap.add_argument(
        "--sizes",
        type=str,
        default=None,
        help="comma-separated impressions per day, each run by both engines",
    )
    a = ap.parse_args()
    if a.child:
        mode, work, data, engine, workers, out = a.child
        child(mode, Path(work), Path(data), engine, int(workers), Path(out))
    elif a.sizes:
        main(tuple((int(x), e, w, False) for x in a.sizes.split(",") for e, w in (("local", 1), ("ray", 2))))
    else:
        main()
