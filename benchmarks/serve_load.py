"""Load on the HTTP service (`derm serve`) from a load generator in another process, on loopback.

Server and load generator share the machine (2 cores on the project's machines). The load generator is this
script in `--loadgen` mode: an asyncio httpx client with `concurrency` closed-loop workers, each sending the
next `POST /v1/query` (one warm user drawn at random, 500 candidates, top 50) as soon as the previous answer
arrives, for `seconds` after a warm-up. It reports requests/s, p50/p95/p99 latency, errors (any non-200 or
transport error) and the (day, versions) of every answer.

Phases (results in benchmarks/results/serve_load.json):
1. runs: concurrency 1, 8, 32 x micro-batching off (`--max-batch-users 1`) / on (16 users, 2 ms window) x
   user embeddings from the workspace's store / from Redis (`--feature-store`). One server per (batching,
   store), three load levels each.
2. swaps: batching on, local store, concurrency 8, on a copy of the workspace: the newest day's versions are
   withdrawn before the server starts; then published, withdrawn, published, withdrawn, published (5 hot
   swaps, each a full store + index + ranker set loaded and checked by the watcher), then `rollback` to the
   day before (1 rollback). Each step waits for /readyz to name the new set and keeps the load 2 s longer.
   `mixed_versions` counts answers whose (day, versions) is not one of the two sets the server was told
   about by /readyz (a response mixing versions of two sets, or a day with another set's versions).
3. redis_publish: `OnlineStore.publish` of 1M synthetic unit 64-d user embeddings (and 1,000 ads), pipelined,
   up to the pointer flip; the keys are deleted afterwards.

Workspace: `--work` (default `demo`, the `make demo` workspace; built with the demo config when missing).
`--quick`: a smoke run (3 s per level, concurrency 1 and 8, 3 swaps, 100k users published), written to
serve_load_quick.json, for checking the script, not for figures.

    python benchmarks/serve_load.py [--work demo] [--quick] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np  # noqa: E402
from common import ROOT, write_result  # noqa: E402

from embstore.store import embeddings_dir
from index.versions import index_dir

BATCHING = {
    False: {"max_batch_users": 1, "batch_window_ms": 0.0},
    True: {"max_batch_users": 16, "batch_window_ms": 2.0},
}
QUERY = {"k": 50, "candidates": 500}
WORK_DIR = ROOT / "benchmarks" / "work" / "serve_load"


# -- the load generator (another process) ----------------------------------------------------------------
async def _loadgen(
    url: str, users: list[int], concurrency: int, seconds: float, warmup: float, stop_file: str | None = None
) -> dict[str, Any]:
    """Closed-loop load for `seconds` after `warmup` (or until `stop_file` exists)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    lat: list[float] = []
    errors = 0
    sets: dict[str, int] = {}
    rng = np.random.default_rng(concurrency)
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds
    stopped = False

    async def watch_stop() -> None:
        nonlocal stopped
        while stop_file is not None and not stopped:
            stopped = Path(stop_file).exists()
            await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end or stopped:
                    return
                body = {"user_id": int(users[int(rng.integers(len(users)))]), **QUERY}
                try:
                    r = await client.post("/v1/query", json=body)
                    ok = r.status_code == 200
                    doc = r.json() if ok else None
                except httpx.HTTPError:
                    ok, doc = False, None
                t1 = time.perf_counter()
                if t0 < t_measure:
                    continue
                if not ok:
                    errors += 1
                    continue
                lat.append(t1 - t0)
                key = json.dumps([doc["day"], doc["versions"]], sort_keys=True)
                sets[key] = sets.get(key, 0) + 1

        watcher = asyncio.create_task(watch_stop())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stopped = True
        await watcher
    elapsed = min(time.perf_counter(), t_end) - t_measure
    a = np.asarray(lat) * 1000.0 if lat else np.zeros(1)
    return {
        "concurrency": concurrency,
        "requests": len(lat) + errors,
        "seconds": round(elapsed, 2),
        "qps": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "errors": errors,
        "sets": sets,
    }


def loadgen(
    url: str, users: list[int], concurrency: int, seconds: float, warmup: float = 1.0
) -> dict[str, Any]:
    """Run the load generator in another process; returns its JSON report."""
    spec = json.dumps(
        {"url": url, "users": users, "concurrency": concurrency, "seconds": seconds, "warmup": warmup}
    )
    p = subprocess.run(
        [sys.executable, __file__, "--loadgen", spec], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if p.returncode != 0:
        raise SystemExit(f"load generator failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


# -- the server -------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`derm serve` in a subprocess (the CLI, as an operator runs it)."""

    def __init__(self, work: Path, batching: bool, feature_store: str | None, watch: float = 2.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        b = BATCHING[batching]
        cmd = [sys.executable, "-m", "cli", "serve", "--work", str(work), "--port", str(self.port)]
        cmd += [
            "--max-batch-users",
            str(b["max_batch_users"]),
            "--batch-window-ms",
            str(b["batch_window_ms"]),
        ]
        cmd += ["--watch-interval", str(watch)]
        if feature_store:
            cmd += ["--feature-store", feature_store]
        self.log = (WORK_DIR / f"server-{self.port}.log").open("w")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=self.log)

    def ready(self, timeout: float = 180.0) -> dict[str, Any]:
        import httpx

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: see {self.log.name}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=5)
                if r.status_code == 200:
                    return dict(r.json())
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"server not ready after {timeout} s: see {self.log.name}")

    def get(self, path: str) -> dict[str, Any]:
        import httpx

        return dict(httpx.get(f"{self.url}{path}", timeout=10).json())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# -- phases -----------------------------------------------------------------------------------------------
def warm_users(work: Path, n: int = 2000) -> list[int]:
    from adserving.versions import serving_day
    from adslog.workspace import Workspace
    from embstore.store import open_version

    ws = Workspace.open(work)
    store = open_version(embeddings_dir(ws, "ctr"), serving_day(ws) - 1)
    ids = store.ids("user")
    rng = np.random.default_rng(0)
    return [int(x) for x in rng.choice(ids, size=min(n, len(ids)), replace=False)]


def runs(
    work: Path, users: list[int], levels: list[int], seconds: float, redis_url: str | None
) -> list[dict]:
    from adserving.versions import publish_workspace
    from adslog.workspace import Workspace
    from embstore.online import OnlineStoreConfig

    out = []
    stores: list[tuple[str, str | None]] = [("local", None)]
    prefix = f"derm-bench-{uuid.uuid4().hex[:8]}"
    if redis_url:
        url = f"{redis_url}?prefix={prefix}"
        publish_workspace(Workspace.open(work), OnlineStoreConfig(url))
        stores.append(("redis", url))
    try:
        for store, fs in stores:
            for batching in (False, True):
                server = Server(work, batching, fs)
                try:
                    server.ready()
                    for c in levels:
                        r = loadgen(server.url, users, c, seconds)
                        r.pop("sets")
                        out.append({"concurrency": c, "batching": batching, "store": store, **r})
                        print(json.dumps(out[-1]), flush=True)
                finally:
                    server.stop()
    finally:
        if redis_url:
            _delete_prefix(redis_url, prefix)
    return out


def swaps(work: Path, users: list[int], n_swaps: int) -> dict[str, Any]:
    """Hot swaps and one rollback under load, on a copy of the workspace."""
    sys.path.insert(0, str(ROOT))
    from adslog.workspace import Workspace
    from tests.serving import latest_day, republish, withdraw
    from workflow.rollback import rollback

    copy = WORK_DIR / "ws"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(work, copy, symlinks=True)
    ws = Workspace.open(copy)
    day = latest_day(ws)
    aside = WORK_DIR / "aside"
    if aside.exists():
        shutil.rmtree(aside)
    withdraw(ws, day, aside)
    server = Server(copy, True, None, watch=0.5)
    try:
        first = server.ready()
        p = subprocess.Popen(
            [sys.executable, __file__, "--loadgen", json.dumps(
                {"url": server.url, "users": users, "concurrency": 8, "seconds": 900.0, "warmup": 0.0, "stop_file": str(WORK_DIR / "stop")}
            )],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(2.0)
        known = {json.dumps([first["day"], first["versions"]], sort_keys=True)}
        t_swaps = time.perf_counter()
        done = 0
        for i in range(n_swaps):
            done += 1
            (republish if i % 2 == 0 else withdraw)(ws, day, aside)
            known.add(_wait_day(server, day if i % 2 == 0 else day - 1))
            time.sleep(2.0)
        if ws.latest_day(index_dir(ws)) != day:  # a rollback needs the newer day published
            done += 1
            republish(ws, day, aside)
            known.add(_wait_day(server, day))
            time.sleep(2.0)
        with ws.lock():  # rollback to the day before, as `derm rollback --to` does
            rollback(ws, day - 1)
        known.add(_wait_day(server, day - 1))
        time.sleep(2.0)
        t_swaps = time.perf_counter() - t_swaps
        (WORK_DIR / "stop").write_text("stop")
        out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            raise SystemExit(f"load generator failed: {err[-2000:]}")
        report = json.loads(out)
        versions = server.get("/v1/versions")
    finally:
        server.stop()
        (WORK_DIR / "stop").unlink(missing_ok=True)
    mixed = sum(n for k, n in report["sets"].items() if k not in known)
    return {
        "n_swaps": done,
        "n_rollbacks": 1,
        "requests": report["requests"],
        "errors": report["errors"],
        "mixed_versions": mixed,
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "qps": report["qps"],
        "seconds_of_swaps": round(t_swaps, 1),
        "server_swaps_total": versions["swaps"],
        "server_swap_failures": versions["swap_failures"],
        "distinct_sets_answered": len(report["sets"]),
    }


def _wait_day(server: Server, day: int, timeout: float = 120.0) -> str:
    """Wait until the server serves the versions of `day` (query day `day` + 1); their (day, versions) key."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = server.get("/readyz")
        if r.get("day") == day + 1:
            return json.dumps([r["day"], r["versions"]], sort_keys=True)
        time.sleep(0.1)
    raise SystemExit(f"no swap to the versions of day {day} within {timeout} s")


def redis_publish(redis_url: str, n_users: int, dim: int = 64) -> dict[str, Any]:
    from embstore.online import OnlineStore, OnlineStoreConfig

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n_users, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = rng.permutation(np.arange(10**9, 10**9 + 4 * n_users, 4, dtype=np.int64))
    ad_vecs = vecs[:1000].copy()
    prefix = f"derm-bench-{uuid.uuid4().hex[:8]}"
    store = OnlineStore(OnlineStoreConfig(f"{redis_url}?prefix={prefix}"))
    meta = {
        "task": "ctr",
        "day": 0,
        "dim": dim,
        "lineage": "bench",
        "artifact_id": uuid.uuid4().hex,
        "version": "bench",
    }
    try:
        t0 = time.perf_counter()
        out = store.publish(meta, ids, vecs, np.arange(1000, dtype=np.int64), ad_vecs)
        seconds = time.perf_counter() - t0
        looked, found = store.open("ctr").lookup("user", ids[:1000])
        assert found.all() and np.allclose(looked, vecs[:1000])
    finally:
        store.close()
        _delete_prefix(redis_url, prefix)
    return {
        "n_users": n_users,
        "dim": dim,
        "seconds": round(seconds, 2),
        "buckets": int(np.ceil(n_users / 256)),
        "publish_report_seconds": round(out["seconds"], 2),
    }


def _redis_answers(redis_url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def _delete_prefix(redis_url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    batch = []
    for k in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(k)
        if len(batch) >= 1000:
            r.delete(*batch)
            batch = []
    if batch:
        r.delete(*batch)
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="demo")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip the Redis phases")
    ap.add_argument("--loadgen", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen is not None:
        spec = json.loads(args.loadgen)
        print(json.dumps(asyncio.run(_loadgen(**spec))))
        return
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve()
    if not (work / "workspace.json").exists():
        from workflow.demo import DemoConfig, run_demo

        run_demo(work, DemoConfig())
    quick = args.quick
    redis_url = args.redis or None
    if redis_url and not _redis_answers(redis_url):
        print(f"no Redis server at {redis_url}: the Redis phases are skipped", file=sys.stderr)
        redis_url = None
    levels = [1, 8] if quick else [1, 8, 32]
    seconds = 3.0 if quick else 20.0
    t0 = time.perf_counter()
    users = warm_users(work)
    result: dict[str, Any] = {
        "command": "python benchmarks/serve_load.py" + (" --quick" if quick else ""),
        "what": "POST /v1/query (500 candidates, top 50, warm users) from an asyncio httpx load generator in "
        "another process on loopback; server = `derm serve`; both on this machine",
        "workspace": str(work),
        "seconds_per_level": seconds,
        "query": QUERY,
        "batching": {str(k): v for k, v in BATCHING.items()},
    }
    result["runs"] = runs(work, users, levels, seconds, redis_url)
    result["swaps"] = swaps(work, users, 3 if quick else 5)
    print(json.dumps(result["swaps"]), flush=True)
    if redis_url:
        result["redis_publish"] = redis_publish(redis_url, 100_000 if quick else 1_000_000)
        print(json.dumps(result["redis_publish"]), flush=True)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    path = write_result("serve_load_quick" if quick else "serve_load", result)
    print(path)


if __name__ == "__main__":
    main()
