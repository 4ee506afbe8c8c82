"""The fault matrix (issue 19): bad inputs, corrupt artifacts, SIGKILLs and planted path escapes, counted.

Everything runs on a tiny demo workspace (`DemoConfig.tiny()`, days 20000..20006; `derm daily --day 20006` is
the cycle that is killed and corrupted) built afresh under `benchmarks/work/robustness/`.

- `bad_inputs`: a generated corpus of broken import files (missing / mistyped / empty columns, implausible or
  non-finite timestamps, empty, nested or float ids, non-0/1 labels, non-UTF-8 bytes, garbage and truncated
  files, duplicate or unknown ids in side files, unsupported extensions ...) through `derm data import
  generic`, and out-of-range or malformed options of `derm query`, `derm eval`, `derm daily` and `derm data
  synth`. Each must end in exactly one `Error:` line on stderr with exit code 1 (`clean_errors`); exit 0 on a
  broken input is a `silent_accept`, anything else (an exception, exit 2, several lines) a `traceback`.
  Valid controls are counted in `accepted_valid` (must exit 0).
- `corruption`: each way a published artifact can go bad (NaN vectors, reordered rows, random bytes, a flipped
  byte, truncation, a deleted manifest, a broken or dangling LATEST, an edited dataset partition) x `query`,
  `eval` and `daily`. `refused`: exit 1 with one `Error:` line; `recovered`: `daily` exited 0 and rebuilt what
  it needed from intact inputs, saying so (an unreadable previous index is rebuilt, its manifest's `refresh`
  names why); `served_garbage`: exit 0 from a corrupt input; `silent_fallbacks`: exit 0 serving other versions
  than the intact workspace does, unnamed; `tracebacks`: anything else.
- `kills`: `derm daily --day 20006` in a subprocess, SIGKILLed after a random delay (uniform over the length of
  an uninterrupted run), then rerun to completion. `resumed`: the rerun exits 0 with every family at day 20006;
  `identical`: every payload file (sha256 from the manifests) of the day's versions and the day's evaluation
  equal those of an uninterrupted run.
- `writes_outside`: planted escapes (column headers such as `../../x`, LATEST pointers holding paths, symbolic
  links in the workspace, manifest paths leaving the artifact) followed by the commands that would write
  through them. `escaped`: a file created or changed anywhere outside the artifact being written.

Writes benchmarks/results/robustness.json. Run with no arguments from the repository root.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embstore.store import embeddings_dir
from eval.evaluate import eval_path
from index.versions import index_dir
from ranking.train import ranker_dir
from towers.train import models_dir

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from common import ROOT, write_result  # noqa: E402

from adslog.workspace import Workspace  # noqa: E402
from cli import main  # noqa: E402
from tests.corpus import GOOD, import_cases, query_cases  # noqa: E402 (the same corpus as the test suite)
from workflow.demo import DemoConfig, run_demo  # noqa: E402

torch.set_num_threads(1)
WORK = ROOT / "benchmarks" / "work" / "robustness"
DAY = 20006
N_KILLS = 24
SEED = 0
runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str, BaseException | None]:
    r = runner.invoke(main, list(args))
    exc = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
    return r.exit_code, r.stdout, r.stderr, exc


def clean_error(code: int, out: str, err: str, exc: BaseException | None) -> bool:
    return (
        exc is None and code == 1 and out == "" and len(err.splitlines()) == 1 and err.startswith("Error: ")
    )


# -- bad inputs (the corpus lives in tests/corpus.py, shared with tests/test_bad_inputs.py) -------------------
def run_bad_inputs(base: Path) -> dict[str, Any]:
    d = WORK / "inputs"
    d.mkdir()
    work = WORK / "inputs-ws"
    shutil.copytree(base, work)
    user = int(np.load(_serving(work, "store") / "user_ids.npy")[0])
    counts = {"tried": 0, "clean_errors": 0, "accepted_valid": 0, "tracebacks": 0, "silent_accepts": 0}
    detail = []
    for name, valid, args in import_cases(d) + query_cases(work, user):
        code, out, err, exc = cli(*args)
        if valid:
            outcome = "accepted_valid" if code == 0 and exc is None else "tracebacks"
        elif clean_error(code, out, err, exc):
            outcome = "clean_errors"
        elif code == 0 and exc is None:
            outcome = "silent_accepts"
        else:
            outcome = "tracebacks"
        counts["tried"] += 1
        counts[outcome] += 1
        detail.append({"case": name, "outcome": outcome, "exit": code,
                       "stderr": (err or repr(exc)).strip().splitlines()[-1][:200] if (err or exc) else ""})  # fmt: skip
    return {**counts, "cases": detail}


# -- corruption ---------------------------------------------------------------------------------------------
def _serving(work: Path, family: str) -> Path:
    ws = Workspace(work)
    parent = {"store": embeddings_dir(ws, "ctr"), "index": index_dir(ws), "ranker": ranker_dir(ws),
              "model": models_dir(ws, "ctr")}[family]  # fmt: skip
    return parent / f"day={ws.latest_day(parent)}"


def _replace(f: Path, data: bytes) -> Path:
    f.unlink()
    f.write_bytes(data)
    return f


def _npy_edit(f: Path, edit: Callable[[np.ndarray], np.ndarray]) -> Path:
    a = edit(np.load(f))
    f.unlink()
    np.save(f, a)
    return f


CORRUPTIONS: dict[str, Callable[[Path], Path]] = {
    "nan_in_ad_vecs": lambda w: _npy_edit(
        _serving(w, "store") / "ad_vecs.npy",
        lambda a: np.where(np.arange(len(a))[:, None] == 3, np.nan, a).astype(a.dtype),
    ),
    "inf_in_user_vecs": lambda w: _npy_edit(
        _serving(w, "store") / "user_vecs.npy",
        lambda a: np.where(np.arange(len(a))[:, None] == 0, np.inf, a).astype(a.dtype),
    ),
    "user_rows_reversed": lambda w: _npy_edit(
        _serving(w, "store") / "user_vecs.npy", lambda a: a[::-1].copy()
    ),
    "ad_ids_shuffled": lambda w: _npy_edit(_serving(w, "store") / "ad_ids.npy", lambda a: a[::-1].copy()),
    "store_ids_truncated": lambda w: _replace(
        _serving(w, "store") / "user_ids.npy", (_serving(w, "store") / "user_ids.npy").read_bytes()[:-8]
    ),
    "ranker_weights_random": lambda w: _replace(
        _serving(w, "ranker") / "weights.pt",
        random.Random(2).randbytes((_serving(w, "ranker") / "weights.pt").stat().st_size),
    ),
    "model_weights_random": lambda w: _replace(
        _serving(w, "model") / "weights.pt",
        random.Random(3).randbytes((_serving(w, "model") / "weights.pt").stat().st_size),
    ),
    "index_byte_flipped": lambda w: _flip(_serving(w, "index") / "index.faiss"),
    "store_manifest_deleted": lambda w: _unlink(
        _serving(w, "store") / "manifest.json", _serving(w, "store").parent / "LATEST"
    ),
    "index_manifest_deleted": lambda w: _unlink(
        _serving(w, "index") / "manifest.json", _serving(w, "index").parent / "LATEST"
    ),
    "ranker_manifest_corrupt_json": lambda w: _replace(_serving(w, "ranker") / "manifest.json", b"{not json"),
    "latest_dangling": lambda w: _write(ranker_dir(Workspace(w)) / "LATEST", '{"name": "day=99999"}'),
    "latest_path": lambda w: _write(
        index_dir(Workspace(w)) / "LATEST", '{"name": "../models/ctr/day=20005"}'
    ),
    "latest_garbage": lambda w: _write(embeddings_dir(Workspace(w), "ctr") / "LATEST", "\x00\x01"),
    "dataset_partition_rewritten": lambda w: _rewrite_partition(w),
}


# the commands that read each artifact (query and eval never load the upstream model: only the daily cycle
# trains from it)
READ_BY = {"model_weights_random": ("daily",)}


def _flip(f: Path) -> Path:
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    return _replace(f, bytes(raw))


def _unlink(f: Path, named: Path) -> Path:
    f.unlink()
    return named


def _write(f: Path, text: str) -> Path:
    f.write_text(text)
    return f


def _rewrite_partition(w: Path) -> Path:
    data = Workspace(w).data_path()
    part = sorted((data / "impressions" / f"day={DAY - 1}").glob("*.parquet"))[0]
    t = pq.read_table(part)
    pq.write_table(t.slice(0, t.num_rows // 2), part)
    return part


def run_corruption(base: Path) -> dict[str, Any]:
    counts = {
        "tried": 0,
        "refused": 0,
        "recovered": 0,
        "served_garbage": 0,
        "silent_fallbacks": 0,
        "tracebacks": 0,
    }
    detail = []
    user = int(np.load(_serving(base, "store") / "user_ids.npy")[0])
    ref = json.loads(cli("query", "--work", str(base), "--user", str(user), "--json")[1])["versions"]
    for kind, corrupt in CORRUPTIONS.items():
        for cmd in READ_BY.get(kind, ("query", "eval", "daily")):
            work = WORK / f"c-{kind}-{cmd}"
            shutil.copytree(base, work)
            if kind == "dataset_partition_rewritten":  # the dataset is shared: give this copy its own
                data = WORK / f"c-{kind}-{cmd}-data"
                shutil.copytree(Workspace(base).data_path(), data)
                (work / "workspace.json").write_text(
                    json.dumps({"kind": "workspace", "schema_version": 1, "data": str(data)})
                )
            bad = corrupt(work).resolve()
            args = {"query": ["query", "--work", str(work), "--user", str(user), "--json"],
                    "eval": ["eval", "--work", str(work), "--json"],
                    "daily": ["daily", "--work", str(work), "--day", str(DAY), "--device", "cpu", "--json"]}[cmd]  # fmt: skip
            code, out, err, exc = cli(*args)
            if clean_error(code, out, err, exc):
                outcome = "refused"
            elif exc is not None or code != 0:
                outcome = "tracebacks"
            elif cmd == "daily" and _rebuilt_and_said(work, kind):
                outcome = "recovered"
            elif cmd == "query" and json.loads(out)["versions"] != ref:
                outcome = "silent_fallbacks"
            else:
                outcome = "served_garbage"
            counts["tried"] += 1
            counts[outcome] += 1
            detail.append({"kind": kind, "command": cmd, "outcome": outcome, "exit": code,
                           "names_file": str(bad) in err or str(bad.parent) in err,
                           "stderr": (err or repr(exc)).strip().splitlines()[-1][:240] if (err or exc) else ""})  # fmt: skip
            shutil.rmtree(work)
    return {**counts, "cases": detail}


def _rebuilt_and_said(work: Path, kind: str) -> bool:
    """A daily that exited 0 after an index was corrupted must have rebuilt it and named the reason."""
    if kind != "index_byte_flipped":
        return False
    m = json.loads((index_dir(Workspace(work)) / f"day={DAY}" / "manifest.json").read_text())
    r = m.get("refresh") or {}
    return r.get("mode") == "rebuild" and "unreadable" in str(r.get("reason", ""))


# -- kills --------------------------------------------------------------------------------------------------
def _daily_proc(work: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DERM_CRASH_AT"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "daily",
        "--work",
        str(work),
        "--day",
        str(DAY),
        "--device",
        "cpu",
        "--json",
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


def _day_fingerprint(work: Path) -> dict[str, Any]:
    """Payload sha256 of every version of DAY (the daily parquet files by content: ids, days and vectors),
    and the day's evaluation (timings dropped). Artifact ids are random per run, so manifests are not compared."""
    ws = Workspace(work)
    out: dict[str, Any] = {}
    for parent in (models_dir(ws, "ctr"), embeddings_dir(ws, "ctr"), index_dir(ws), ranker_dir(ws)):
        d = parent / f"day={DAY}"
        m = json.loads((d / "manifest.json").read_text())
        rec = {k: v["sha256"] for k, v in m["payload"].items()}
        for k in rec:
            if k.startswith("daily_"):  # its `model_version` column names the model's random artifact id
                t = pq.read_table(d / k, columns=["id", "day", "vector"])
                rec[k] = hashlib.sha256(repr(t.to_pydict()).encode()).hexdigest()
        out[parent.relative_to(ws.root).as_posix()] = rec
    out["eval"] = _strip_times(json.loads(eval_path(ws, DAY).read_text()))
    out["latest"] = {str(p.relative_to(ws.root)): (p / "LATEST").read_text() for p in
                     (models_dir(ws, "ctr"), embeddings_dir(ws, "ctr"), index_dir(ws), ranker_dir(ws))}  # fmt: skip
    return out


def _strip_times(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _strip_times(v) for k, v in o.items() if "second" not in k and k not in ("created_unix",)}
    if isinstance(o, list):
        return [_strip_times(v) for v in o]
    return o


def run_kills(base: Path) -> dict[str, Any]:
    ref_work = WORK / "k-ref"
    shutil.copytree(base, ref_work)
    t0 = time.perf_counter()
    p = _daily_proc(ref_work)
    if p.wait() != 0:
        raise RuntimeError(f"reference daily failed: {p.stderr.read().decode() if p.stderr else ''}")
    ref_seconds = time.perf_counter() - t0
    ref = _day_fingerprint(ref_work)
    rng = random.Random(SEED)
    counts = {"tried": 0, "resumed": 0, "identical": 0, "killed_before_exit": 0}
    detail = []
    for i in range(N_KILLS):
        work = WORK / f"k-{i}"
        shutil.copytree(base, work)
        delay = rng.uniform(0.05, 0.98) * ref_seconds
        p = _daily_proc(work)
        time.sleep(delay)
        killed = p.poll() is None
        if killed:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        rerun = _daily_proc(work)
        code = rerun.wait()
        resumed = code == 0 and all(
            (f / "LATEST").read_text() == json.dumps({"name": f"day={DAY}"}, indent=2) + "\n"
            for f in (
                models_dir(Workspace(work), "ctr"),
                embeddings_dir(Workspace(work), "ctr"),
                index_dir(Workspace(work)),
                ranker_dir(Workspace(work)),
            )  # fmt: skip
        )
        identical = resumed and _day_fingerprint(work) == ref
        leftovers = [str(x) for x in work.rglob(".tmp-*")]
        counts["tried"] += 1
        counts["resumed"] += resumed
        counts["identical"] += identical
        counts["killed_before_exit"] += killed
        detail.append({"delay_s": round(delay, 2), "killed": killed, "resumed": resumed, "identical": identical,
                       "tmp_leftovers": len(leftovers)})  # fmt: skip
        shutil.rmtree(work)
    return {**counts, "reference_seconds": round(ref_seconds, 2), "cases": detail}


# -- writes outside -----------------------------------------------------------------------------------------
def _snapshot(root: Path, skip: list[Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if any(s == p or s in p.parents for s in skip) or not (p.is_file() or p.is_symlink()):
            continue
        st = p.lstat()
        out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def run_writes_outside(base: Path) -> dict[str, Any]:
    box = WORK / "escape"
    box.mkdir()
    outside = box / "outside"
    outside.mkdir()
    (outside / "victim.parquet").write_bytes(b"keep me")
    counts = {"tried": 0, "escaped": 0, "refused": 0, "contained": 0}
    detail = []

    def attempt(
        name: str, target: Path, run: Callable[[], tuple[int, str, str, BaseException | None]]
    ) -> None:
        before = _snapshot(box, [target])
        code, _, err, exc = run()
        after = _snapshot(box, [target])
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        counts["tried"] += 1
        outcome = "escaped" if changed else ("refused" if code == 1 else "contained")
        counts[outcome] += 1
        detail.append({"case": name, "outcome": outcome, "exit": code, "changed_outside": changed[:5],
                       "stderr": (err or repr(exc) if exc else err).strip()[:200]})  # fmt: skip

    for i, col in enumerate(["../../../../x", "../outside/victim", "/tmp/derm-escape", "..", "sub/../../y",
                             "..\\..\\z", "vocab/../../../w", "../../outside/victim"]):  # fmt: skip
        d = box / f"imp{i}" / "a" / "b"
        d.mkdir(parents=True)
        (d / "log.csv").write_text(GOOD)
        (d / "users.csv").write_text(f"uid,{col}\nu1,p\nu2,q\n")
        out = d / "ds"
        attempt(f"column {col!r}", out, lambda d=d, out=out: cli(
            "data", "import", "generic", str(out), "--impressions", str(d / "log.csv"), "--user-col", "uid",
            "--item-col", "item", "--ts-col", "t", "--click-col", "clk", "--users", str(d / "users.csv")))  # fmt: skip

    def ws_case(name: str, plant: Callable[[Path], None], args: list[str]) -> None:
        work = box / f"ws-{len(detail)}"
        shutil.copytree(base, work)
        plant(work)
        attempt(name, work, lambda: cli(*[a.replace("WORK", str(work)) for a in args]))

    daily = ["daily", "--work", "WORK", "--day", str(DAY), "--device", "cpu"]
    evals = ["eval", "--work", "WORK"]
    for fam in ("index", "ranker", "evals"):

        def plant(w: Path, fam: str = fam) -> None:
            shutil.rmtree(w / fam)
            (w / fam).symlink_to(outside, target_is_directory=True)

        ws_case(f"symlink {fam} -> outside, daily", plant, daily)

    def plant_models(w: Path) -> None:
        shutil.rmtree(w / "models" / "ctr")
        (w / "models" / "ctr").symlink_to(outside, target_is_directory=True)

    ws_case("symlink models/ctr -> outside, daily", plant_models, daily)

    def plant_version(w: Path) -> None:
        (w / "index" / f"day={DAY}").symlink_to(outside, target_is_directory=True)

    ws_case("symlink index/day=D -> outside, daily", plant_version, daily)

    def plant_report(w: Path) -> None:
        (w / "evals" / f"day={DAY}.json").unlink(missing_ok=True)
        (w / "evals" / f"day={DAY}.json").symlink_to(outside / "victim.parquet")

    ws_case("symlink evals/day=D.json -> outside file, daily", plant_report, daily)
    for fam, val in (
        ("index", "../../outside"),
        ("ranker", str(outside)),
        ("models/ctr", "day=1/../../../outside"),
    ):

        def plant_latest(w: Path, fam: str = fam, val: str = val) -> None:
            (w / fam / "LATEST").write_text(json.dumps({"name": val}))

        ws_case(f"LATEST {fam} = {val!r}, daily", plant_latest, daily)
        ws_case(f"LATEST {fam} = {val!r}, eval", plant_latest, evals)

    def plant_oracle(w: Path) -> None:
        data = box / f"data-{len(detail)}"
        shutil.copytree(Workspace(base).data_path(), data)
        m = json.loads((data / "manifest.json").read_text())
        m["oracle"]["path"] = "../outside"
        (data / "manifest.json").write_text(json.dumps(m))
        (w / "workspace.json").write_text(
            json.dumps({"kind": "workspace", "schema_version": 1, "data": str(data)})
        )

    ws_case("dataset manifest oracle path ../outside, eval", plant_oracle, evals)

    def plant_index_files(w: Path) -> None:
        f = _serving(w, "index") / "manifest.json"
        m = json.loads(f.read_text())
        m["files"] = ["../../outside/victim.parquet"]
        f.write_text(json.dumps(m))

    ws_case("index manifest files ../../outside, daily", plant_index_files, daily)
    return {**counts, "cases": detail}


def main_() -> None:
    t0 = time.perf_counter()
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    base = WORK / "base"
    run_demo(base, DemoConfig.tiny())
    # the base must not have day DAY's cycle yet (the demo evaluates DAY but runs daily up to DAY - 1)
    assert not (ranker_dir(Workspace(base)) / f"day={DAY}").exists()
    result: dict[str, Any] = {"command": "python benchmarks/robustness.py", "day": DAY}
    for name, fn in (("bad_inputs", run_bad_inputs), ("corruption", run_corruption),
                     ("writes_outside", run_writes_outside), ("kills", run_kills)):  # fmt: skip
        t = time.perf_counter()
        result[name] = fn(base)
        result[name]["seconds"] = round(time.perf_counter() - t, 1)
        summary = {k: v for k, v in result[name].items() if k != "cases"}
        print(name, json.dumps(summary), flush=True)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print("wrote", write_result("robustness", result))


if __name__ == "__main__":
    main_()
