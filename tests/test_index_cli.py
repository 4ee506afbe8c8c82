"""`derm index build / refresh / tune` on a copy of the tiny demo workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adslog.workspace import Workspace
from cli import main
from dermcore.artifact import get_latest
from embstore.store import embeddings_dir


@pytest.fixture
def work(demo_ws: tuple[Path, dict], tmp_path: Path) -> Path:
    src, _ = demo_ws
    dst = tmp_path / "w"
    shutil.copytree(src, dst)  # never write into the shared session workspace
    return dst


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def _days(work: Path) -> list[int]:
    ws = Workspace(work)
    return ws.published_days(embeddings_dir(ws, "ctr"))


def test_index_refresh_in_place_and_auto(work: Path) -> None:
    days = _days(work)
    d0, d1 = days[-2], days[-1]
    # the daily cycle's index changes only through `derm config set` (index build --spec is a one-off)
    code, out, err = _run(
        "config", "set", "--work", str(work), "index.backend=hnswlib", "index.spec=M16,efc40"
    )
    assert code == 0, err
    assert 'index.spec = "M16,efc40"' in out
    code, out, err = _run(
        "index", "build", "--work", str(work), "--day", str(d0), "--ef", "32", "--overwrite", "--json",
    )  # fmt: skip
    assert code == 0, err
    built = json.loads(out)
    assert built["refresh"]["mode"] == "rebuild" and built["refresh"]["reason"] == "requested"
    assert built["search_params"] == {"ef": 32, "nprobe": None}
    parent = json.loads((work / "index" / f"day={d0}" / "manifest.json").read_text())["artifact_id"]

    code, out, err = _run(
        "index", "refresh", "--work", str(work), "--day", str(d1), "--mode", "in_place", "--overwrite",
        "--json",
    )  # fmt: skip
    assert code == 0, err
    assert err == ""
    doc = json.loads(out)
    r = doc["refresh"]
    assert r["mode"] == "in_place" and r["parent"] == parent
    store = json.loads((work / "embeddings" / "ctr" / f"day={d1}" / "manifest.json").read_text())
    assert doc["n_vectors"] == store["stats"]["ad"]["n_pool"]
    assert r["added"] + r["replaced"] + r["removed"] > 0
    assert doc["search_params"] == {"ef": 32, "nprobe": None}  # inherited from the parent version
    assert 0.0 <= doc["self_check"]["recall"] <= 1.0
    assert get_latest(work / "index") == f"day={d1}"

    # auto: the daily cycle re-embeds every live ad, so most vectors changed: a rebuild, recorded as such
    code, out, err = _run("index", "refresh", "--work", str(work), "--day", str(d1), "--overwrite")
    assert code == 0, err
    assert "refresh: rebuild (" in out and "of ads changed (more than 10%)" in out
    assert "self-check recall@" in out


def test_index_refresh_skips_published_and_errors(work: Path) -> None:
    d1 = _days(work)[-1]
    before = json.loads((work / "index" / f"day={d1}" / "manifest.json").read_text())
    code, out, _ = _run("index", "refresh", "--work", str(work), "--json")
    assert code == 0 and json.loads(out)["n_vectors"] == before["n_vectors"]
    after = json.loads((work / "index" / f"day={d1}" / "manifest.json").read_text())
    assert after["artifact_id"] == before["artifact_id"], "a published version is not recomputed"

    code, _, err = _run("config", "set", "--work", str(work), "index.spec=HNSW16,Flat")
    assert code == 0, err
    # a beam wide enough for the cycle's recall gate (k = 100) whatever the demo's vectors
    code, _, err = _run(
        "index", "build", "--work", str(work), "--day", str(d1 - 1), "--overwrite", "--ef", "256"
    )
    assert code == 0, err
    code, _, err = _run(
        "index", "refresh", "--work", str(work), "--day", str(d1), "--mode", "in_place", "--overwrite"
    )
    assert code == 1
    assert err.strip() == "Error: cannot refresh in place: faiss HNSW graphs cannot remove vectors"


def test_manual_index_commands_apply_the_cycle_gate(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`index build` and `index refresh` publish through the daily cycle's function: an index whose self-check
    recall is under `min_index_recall` is refused on every path and the served version stays."""
    import index.artifact

    d1 = _days(work)[-1]
    before = json.loads((work / "index" / f"day={d1}" / "manifest.json").read_text())
    monkeypatch.setattr(index.artifact, "recall_against_exact", lambda *a, **k: 0.5)
    for cmd in (["build"], ["refresh", "--mode", "rebuild"]):
        code, _, err = _run("index", *cmd, "--work", str(work), "--day", str(d1), "--overwrite")
        assert code == 1
        assert "self-check recall@" in err and "is under the threshold 0.9; not published" in err
        after = json.loads((work / "index" / f"day={d1}" / "manifest.json").read_text())
        assert after["artifact_id"] == before["artifact_id"]
    # and the manual rebuild records the retrieval prior the cycle fits, like the daily cycle
    monkeypatch.undo()
    code, out, err = _run("index", "build", "--work", str(work), "--day", str(d1), "--overwrite", "--json")
    assert code == 0, err
    m = json.loads((work / "index" / f"day={d1}" / "manifest.json").read_text())
    assert m["upstream"]["retrieval_prior"]["validation_days"] == [d1]


def test_index_tune(work: Path) -> None:
    d = _days(work)[-1]
    code, _, err = _run(
        "index", "build", "--work", str(work), "--day", str(d), "--spec", "IVF8,Flat", "--overwrite"
    )
    assert code == 0, err
    code, out, err = _run("index", "tune", "--work", str(work), "--k", "20", "--queries", "200", "--json")
    assert code == 0, err
    assert err == ""
    doc = json.loads(out)
    assert doc["knob"] == "nprobe" and doc["k"] == 20 and doc["default"] == 1
    values = [p["value"] for p in doc["points"]]
    assert values == [1, 2, 4, 8]  # the ladder stops at nlist
    assert doc["points"][-1]["recall_at_k"] == pytest.approx(1.0)  # every list probed: exact
    assert all(p["qps"] > 0 for p in doc["points"])

    code, out, err = _run("index", "tune", "--work", str(work), "--k", "20", "--values", "2,8")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert "default nprobe 1" in lines[0] and lines[1].split()[:2] == ["nprobe", "recall@20"]
    assert [ln.split()[0] for ln in lines[2:]] == ["2", "8"]

    code, _, err = _run("index", "tune", "--work", str(work), "--values", "0,4")
    assert code == 1 and err.strip() == "Error: --values: give at least one value >= 1"


def test_index_commands_have_help() -> None:
    for cmd in ("build", "refresh", "tune"):
        code, out, _ = _run("index", cmd, "--help")
        assert code == 0 and "--work" in out and "--json" in out


def test_config_show_set_and_one_off_index_builds(work: Path) -> None:
    """cycle.json changes only through `derm config set` (validated as a whole, nothing written on error);
    `index build --spec` builds that one version and leaves the cycle's config alone."""
    cycle = work / "cycle.json"
    code, out, err = _run("config", "show", "--work", str(work), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown == json.loads(cycle.read_text())
    before = cycle.read_bytes()
    for bad, msg in (
        ("index.nope=1", "unknown cycle config key 'index.nope'"),
        ("towers=1", "unknown cycle config key 'towers'"),
        ("min_index_recall=2", "invalid value for min_index_recall: min_index_recall must be in [0, 1]"),
        ("ranker.lr=-1", "invalid value for ranker.lr"),
    ):
        code, _, err = _run("config", "set", "--work", str(work), bad)
        assert code == 1 and err.startswith("Error: ") and msg in err, (bad, err)
        assert cycle.read_bytes() == before
    code, _, err = _run("config", "set", "--work", str(work), "nokey")
    assert code == 1 and "KEY=VALUE" in err
    code, out, err = _run(
        "config", "set", "--work", str(work), "ranker.lr=0.001", "prior_windows=[2, 5]", "--json"
    )
    assert code == 0, err
    saved = json.loads(cycle.read_text())
    assert (
        saved["ranker"]["lr"] == 0.001
        and saved["prior_windows"] == [2, 5] == json.loads(out)["prior_windows"]
    )
    d1 = _days(work)[-1]
    code, _, err = _run(  # a beam wide enough for the cycle's recall gate (k = 100) whatever the vectors
        *("index", "build", "--work", str(work), "--day", str(d1), "--spec", "HNSW16,Flat", "--overwrite"),
        *("--ef", "256"),
    )
    assert code == 0, err
    assert "cycle.json is unchanged" in err and "derm config set" in err
    m = json.loads((work / "index" / f"day={d1}" / "manifest.json").read_text())
    assert m["spec"] == "HNSW16,Flat"
    assert json.loads(cycle.read_text()) == saved  # no side effect


def test_popularity_window_is_recorded_in_the_index_and_read_by_retrievers(work: Path) -> None:
    """`popularity_window` (cycle config) is recorded in each index version; every Retriever of that version
    (eval, query, the service) builds its popularity list and cold-start fallback over that many days."""
    from retrieval.retrieve import Retriever, popularity

    d1 = _days(work)[-1]
    ws = Workspace(work)
    assert Retriever(ws, d1 + 1).popularity_window == 7  # the demo's versions: the default
    code, _, err = _run("config", "set", "--work", str(work), "popularity_window=2")
    assert code == 0, err
    code, _, err = _run("index", "build", "--work", str(work), "--day", str(d1), "--overwrite")
    assert code == 0, err
    m = json.loads((work / "index" / f"day={d1}" / "manifest.json").read_text())
    assert m["upstream"]["popularity_window"] == 2
    r = Retriever(ws, d1 + 1)
    assert r.popularity_window == 2
    ids, clicks = popularity(r.ds, d1 + 1, r.live, 2)
    np.testing.assert_array_equal(r.popular, ids)
    assert not np.array_equal(ids, popularity(r.ds, d1 + 1, r.live, 7)[0])
    code, _, err = _run("config", "set", "--work", str(work), "popularity_window=0")
    assert code == 1 and "popularity_window must be an integer >= 1" in err
