"""Names from data are data, not paths: every planted escape is refused or encoded, nothing lands outside.

Each test plants one escape (a column header, a LATEST pointer, a manifest path, a symbolic link) and checks
both the outcome (clean DataError or an encoded name) and that no file appeared outside the artifact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from adslog.dataset import Dataset
from adslog.importers import GenericImportConfig, import_generic
from adslog.workspace import Workspace
from cli import main
from dermcore.artifact import get_latest, publishing, set_latest, write_json_atomic
from dermcore.errors import DataError
from dermcore.safepath import check_component, is_plain, resolve_under, safe_component
from embstore.store import embeddings_dir
from eval.evaluate import eval_path
from index.versions import index_dir
from ranking.train import ranker_dir
from towers.train import models_dir


def _files_below(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _cfg(imp: Path, **kw: object) -> GenericImportConfig:
    return GenericImportConfig(imp, user_col="uid", item_col="item", ts_col="t", click_col="clk", **kw)  # type: ignore[arg-type]


def _log(tmp: Path) -> Path:
    f = tmp / "log.csv"
    f.write_text("uid,item,t,clk\nu1,a,86400,1\nu2,b,90000,0\nu1,b,172800,0\n")
    return f


# -- the helpers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["age", "ads.brand", "day=3", "x_1-2+3", "A" * 100])
def test_plain_names_stay_as_they_are(name: str) -> None:
    assert is_plain(name) and safe_component(name) == name


@pytest.mark.parametrize(
    "name",
    ["../../x", "/etc/passwd", "..", ".", ".hidden", "a/b", "a\\b", "", "x\x00y", "é", "a b", "A" * 101],
)
def test_unsafe_names_are_encoded_into_one_plain_component(name: str) -> None:
    enc = safe_component(name)
    assert is_plain(enc) and "/" not in enc and enc not in (".", "..")
    assert safe_component(name) == enc  # deterministic: the same column always maps to the same file
    with pytest.raises(DataError):
        check_component(name, "/where")


def test_distinct_unsafe_names_encode_apart() -> None:
    names = ["../x", "..\\x", "/x", "x/", "x y", "x\ty"]
    assert len({safe_component(n) for n in names}) == len(names)


def test_resolve_under_refuses_every_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    assert resolve_under(root, "sub/f.parquet") == root / "sub" / "f.parquet"
    for rel in ("../x", "sub/../../x", "/abs/x", str(outside / "x"), ""):
        with pytest.raises(DataError):
            resolve_under(root, rel)
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError) as e:
        resolve_under(root, "link/f.parquet")
    assert (
        str(e.value) == f"{root / 'link'}: is a symbolic link; derm reads and writes only inside the artifact"
    )
    (root / "sub" / "file_link").symlink_to(outside / "victim")
    with pytest.raises(DataError):
        resolve_under(root, "sub/file_link")
    assert not (outside / "victim").exists()


# -- the importer: column names -----------------------------------------------------------------------------
@pytest.mark.parametrize("col", ["../../../../x", "/tmp/derm_abs_escape", "..", "sub/../../y"])
def test_users_file_column_cannot_write_outside_the_dataset(tmp_path: Path, col: str) -> None:
    """The probe's case: a users-file text column named `../../../../x` wrote `x.parquet` outside."""
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    log = _log(work)
    users = work / "users.parquet"
    pq.write_table(pa.table({"uid": ["u1", "u2"], col: ["p", "q"]}), users)
    before = _files_below(tmp_path)
    abs_target = Path("/tmp/derm_abs_escape.parquet")
    abs_before = abs_target.exists()
    out = work / "ds"
    import_generic(_cfg(log, users=users), out)
    new = _files_below(tmp_path) - before
    assert all(n.startswith(str(out.relative_to(tmp_path))) for n in new), new
    assert abs_target.exists() == abs_before
    ds = Dataset.open(out)
    vocab = ds.manifest["vocabularies"][f"users.{col}"]
    f = out / vocab["path"]
    assert f.parent == out / "vocab" and f.is_file()
    assert is_plain(f.name) and pq.read_table(f).column("raw").to_pylist() == ["p", "q"]
    assert ds.users().column(col).to_pylist() == [0, 1]  # the column keeps its name as data


def test_cli_import_with_escaping_header_exits_0_and_stays_inside(tmp_path: Path) -> None:
    work = tmp_path / "w" / "x"
    work.mkdir(parents=True)
    log = _log(work)
    (work / "users.csv").write_text("uid,../../../../x\nu1,p\nu2,q\n")
    before = _files_below(tmp_path)
    r = CliRunner().invoke(
        main,
        ["data", "import", "generic", str(work / "ds"), "--impressions", str(log), "--user-col", "uid"]
        + ["--item-col", "item", "--ts-col", "t", "--click-col", "clk", "--users", str(work / "users.csv")],
    )
    assert r.exit_code == 0, r.output
    new = _files_below(tmp_path) - before
    assert new and all(n.startswith("w/x/ds") for n in new), new


# -- pointers and manifests ---------------------------------------------------------------------------------
def _publish(parent: Path, name: str) -> None:
    with publishing(parent / name) as tmp:
        write_json_atomic(tmp / "manifest.json", {"kind": "x", "schema_version": 1})


def test_latest_must_name_a_published_sibling(tmp_path: Path) -> None:
    parent = tmp_path / "models" / "ctr"
    _publish(parent, "day=3")
    set_latest(parent, "day=3")
    assert get_latest(parent) == "day=3"
    with pytest.raises(DataError):
        set_latest(parent, "../../evil")
    for bad in ("../../evil", "/etc", "day=3/../../x"):
        (parent / "LATEST").write_text(json.dumps({"name": bad}))
        with pytest.raises(DataError) as e:
            get_latest(parent)
        assert str(e.value).startswith(f"{parent / 'LATEST'}: ")
    (parent / "LATEST").write_text(json.dumps({"name": "day=9"}))
    with pytest.raises(DataError) as e:
        get_latest(parent)
    assert str(e.value) == (
        f"{parent / 'LATEST'}: names 'day=9', which is not a published version (no day=9/manifest.json)"
    )


def test_workspace_refuses_planted_symlinks(tmp_path: Path, demo_ws: tuple[Path, dict]) -> None:
    src, _ = demo_ws
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("index", "ranker", "evals"):
        (ws.root / name).symlink_to(outside, target_is_directory=True)
    (ws.root / "models").mkdir()
    (ws.root / "models" / "ctr").symlink_to(outside, target_is_directory=True)
    for get in (
        lambda: index_dir(ws),
        lambda: ranker_dir(ws),
        lambda: eval_path(ws, 3),
        lambda: models_dir(ws, "ctr"),
    ):
        with pytest.raises(DataError) as e:
            get()
        assert "is a symbolic link" in str(e.value)
    with pytest.raises(DataError):
        models_dir(ws, "../../x")
    assert embeddings_dir(ws, "ctr") == ws.root / "embeddings" / "ctr"
    assert list(outside.iterdir()) == []


def test_publishing_never_follows_a_symlinked_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "day=1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError), publishing(tmp_path / "day=1", overwrite=True) as tmp:
        write_json_atomic(tmp / "manifest.json", {})
    assert list(outside.iterdir()) == [] and (tmp_path / "day=1").is_symlink()


def test_manifest_paths_cannot_point_outside(tmp_path: Path, demo_ws: tuple[Path, dict]) -> None:
    from adslog.oracle import Oracle
    from index.artifact import load_index_artifact
    from index.delta import read_delta

    work, _ = demo_ws
    ws = Workspace.open(work)
    data = ws.data_path()
    copy = tmp_path / "ds"
    os.symlink(data, tmp_path / "orig")
    shutil.copytree(data, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["oracle"]["path"] = "../orig/oracle"
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError) as e:
        Oracle.load(copy)
    assert str(e.value) == f"{copy / 'manifest.json'}: path '../orig/oracle' leaves {copy}"

    idx = index_dir(ws) / f"day={ws.latest_day(index_dir(ws))}"
    icopy = tmp_path / "idx"
    shutil.copytree(idx, icopy)
    im = json.loads((icopy / "manifest.json").read_text())
    im["files"] = ["../" + im["files"][0]]
    (icopy / "manifest.json").write_text(json.dumps(im))
    with pytest.raises(DataError) as e:
        load_index_artifact(icopy)
    assert "is not a plain file name" in str(e.value)
    with pytest.raises(DataError) as e:
        read_delta(icopy, {"delta_file": "../delta.npz"}, 8)
    assert "storage names no valid delta file" in str(e.value)


# -- the importer: values -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("t", "shown"),
    [("9000000000000000000", "9e+18"), ("1e30", "1e+30"), ("-5", "-5"), ("1700000000000", "1.7e+12")],
)
def test_implausible_timestamps_are_refused(tmp_path: Path, t: str, shown: str) -> None:
    log = tmp_path / "log.csv"
    log.write_text(f"uid,item,t,clk\nu1,a,86400,1\nu2,b,{t},0\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log), tmp_path / "ds")
    msg = str(e.value)
    assert msg.startswith(f"{log}: column 't': 1 timestamps outside 0..4102444800 (e.g. ")
    assert "row 2" in msg and not (tmp_path / "ds").exists()


def test_timestamp_range_is_configurable(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("uid,item,t,clk\nu1,a,-86400,1\nu2,b,5,0\n")
    with pytest.raises(DataError):
        import_generic(_cfg(log), tmp_path / "ds")
    s = import_generic(_cfg(log, ts_range_check=False), tmp_path / "ds")
    assert (s["first_day"], s["last_day"]) == (-1, 0)
    with pytest.raises(DataError):
        import_generic(_cfg(log, ts_min=0, ts_max=3), tmp_path / "ds2")
    big = tmp_path / "big.csv"
    big.write_text("uid,item,t,clk\nu1,a,9000000000000000000,1\n")
    with pytest.raises(DataError):  # still refused: its day does not fit the int32 day column
        import_generic(_cfg(big, ts_range_check=False), tmp_path / "ds3")
    with pytest.raises(ValueError):
        _cfg(log, ts_min=10, ts_max=5)


def test_empty_and_nested_ids_are_clean_errors(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("uid,item,t,clk\nu1,a,86400,1\n  ,b,90000,0\n,c,90000,0\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log), tmp_path / "ds")
    assert str(e.value) == f"{log}: column 'uid' has 2 empty ids"
    for arr, typ in (
        (pa.array([[1], [2]]), "list<"),
        (pa.array([{"a": 1}, {"a": 2}]), "struct<"),
        (pa.array([1.5, 2.0]), "double"),
    ):
        f = tmp_path / "log.parquet"
        pq.write_table(pa.table({"uid": arr, "item": [1, 2], "t": [1, 2], "clk": [0, 1]}), f)
        with pytest.raises(DataError) as e:
            import_generic(_cfg(f), tmp_path / "ds")
        assert str(e.value).startswith(
            f"{f}: column 'uid' must hold ids (integers or text), found type {typ}"
        )
    assert not (tmp_path / "ds").exists()


def test_non_utf8_text_names_the_file(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_bytes(b"uid,item,t,clk\nu\xff\xfe1,a,86400,1\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log), tmp_path / "ds")
    assert str(e.value).startswith(f"{log}: ")
    users = tmp_path / "users.csv"
    log.write_text("uid,item,t,clk\nu1,a,86400,1\n")
    users.write_bytes(b"uid,city\nu1,caf\xe9\n")
    with pytest.raises(DataError) as e:
        import_generic(_cfg(log, users=users), tmp_path / "ds")
    assert str(e.value).startswith(f"{users}: ")
    assert not (tmp_path / "ds").exists()


def test_valid_ids_of_every_kind_still_import(tmp_path: Path) -> None:
    f = tmp_path / "log.parquet"
    pq.write_table(
        pa.table(
            {"uid": pa.array([-3, 7], pa.int64()), "item": ["a b", "ü"], "t": [0, 4102444800], "clk": [0, 1]}
        ),
        f,
    )
    s = import_generic(_cfg(f), tmp_path / "ds")
    assert s["rows"] == 2 and s["users"] == 2
    ds = Dataset.open(tmp_path / "ds")
    assert np.array_equal(np.sort(ds.users().column("user_id").to_numpy()), [0, 1])
