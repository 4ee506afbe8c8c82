"""Issue 17, items 3-4: `derm run` on a real-world-shaped own log end to end; the run config file; every eval
warning fires on a constructed case and not on the demo."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ownlog import START, write_ownlog

from adslog.dataset import Dataset
from adslog.importers import GenericImportConfig, import_generic
from cli import main
from dermcore.artifact import read_json
from dermcore.errors import DataError
from eval.warnings import WarningConfig, eval_warnings, hoeffding_interval
from workflow.cycle import daily_gap
from workflow.rollback import rollback
from workflow.run_config import KEY_DOCS, RunConfig, flat_keys, load_run_config

TINY = """
train_periods = 3
ks = [10, 20]
[towers]
dim = 16
token_dim = 8
hidden = [32]
batch_size = 256
epochs_initial = 2
epochs_incremental = 1
seed = 3
[ranker]
token_dim = 8
hidden = [32]
batch_size = 256
epochs_initial = 2
seed = 5
[cycle]
self_check_queries = 50
"""


@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An own log (two years, dense for 5 weeks, 3 sparse weeks later) imported weekly, run with `derm run`."""
    d = tmp_path_factory.mktemp("own")
    p = write_ownlog(d / "src", dense_weeks=5, rows_per_week=600)
    cfg = GenericImportConfig(
        p["log"],
        "uid",
        "item",
        "when",
        "clicked",
        users=p["users"],
        items=p["items"],
        context_cols=("pos=position", "surface"),
        missing_features="unknown",
        period="week",
    )
    import_generic(cfg, d / "ds")
    (d / "tiny.toml").write_text(TINY)
    args = ["run", "--data", str(d / "ds"), "--work", str(d / "work"), "--config", str(d / "tiny.toml")]
    r = CliRunner().invoke(main, [*args, "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    return {"dir": d, "args": args, "doc": json.loads(r.stdout), "stderr": r.stderr}


def test_run_end_to_end(own_run: dict[str, Any]) -> None:
    d, doc = own_run["dir"], own_run["doc"]
    ds = Dataset.open(d / "ds")
    origin = START // 86400
    last = origin + 100  # the last sparse week
    assert doc["day"] == last and doc["period"]["name"] == "week"
    assert own_run["stderr"] == ""
    # its JSON is the last period's eval document, also in WORK/report.json and WORK/evals
    assert (
        doc == read_json(d / "work" / "report.json") == read_json(d / "work" / "evals" / f"day={last}.json")
    )
    evals = sorted(int(p.stem.split("=")[1]) for p in (d / "work" / "evals").glob("day=*.json"))
    assert evals == [origin + 3, origin + 4, origin + 20, origin + 55, last]  # every later period with rows
    # counts each figure rests on: the last week has 3 impressions
    assert doc["retrieval"]["n_impressions"] == 3 == ds.impressions(last).num_rows
    assert doc["ranking"]["n_impressions"] == 3
    assert doc["retrieval"]["n_clicks"] == int(ds.impressions(last, ["click"]).column(0).to_numpy().sum())
    codes = {w["code"] for w in doc["warnings"]}
    assert {"stale_versions", "few_positives"} <= codes
    stale = next(w for w in doc["warnings"] if w["code"] == "stale_versions")
    assert stale["age"] == last - (origin + 55)
    # a dense week evaluated right after its predecessor: versions 1 period old, no stale warning
    dense = read_json(d / "work" / "evals" / f"day={origin + 4}.json")
    assert "stale_versions" not in {w["code"] for w in dense["warnings"]}
    assert dense["retrieval"]["n_impressions"] == 600 and dense["ranking"]["n_users"] > 30
    # the resolved config is in the workspace; the cycle got the config file's choices
    rc = read_json(d / "work" / "run_config.json")
    assert rc["train_periods"] == 3 and rc["towers"]["seed"] == 3 and rc["ranker"]["seed"] == 5
    cyc = read_json(d / "work" / "cycle.json")
    assert cyc["towers"]["dim"] == 16 and cyc["ranker"]["epochs_initial"] == 2
    md = (d / "work" / "report.md").read_text()
    assert "## Every evaluated period" in md and "WARNING stale_versions" in md


def test_run_resumes_and_refuses_another_config(own_run: dict[str, Any]) -> None:
    d, args = own_run["dir"], own_run["args"]
    before = {p.name: p.stat().st_mtime_ns for p in (d / "work" / "models" / "ctr").iterdir()}
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == own_run["doc"]
    assert {p.name: p.stat().st_mtime_ns for p in (d / "work" / "models" / "ctr").iterdir()} == before
    r = CliRunner().invoke(main, [*args, "--train-periods", "2"])
    assert r.exit_code == 1
    assert r.stderr.startswith(
        f"Error: {d / 'work' / 'run_config.json'}: this workspace ran with another config"
    )
    assert "train_periods" in r.stderr
    # human output: the period table, the counts and the warnings
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0
    assert "| period | users | impressions | clicks |" in r.stdout
    assert "retrieval rests on" in r.stdout and "WARNING stale_versions" in r.stdout


def test_eval_after_run_and_query(own_run: dict[str, Any]) -> None:
    d = own_run["dir"]
    r = CliRunner().invoke(main, ["eval", "--work", str(d / "work"), "--k", "10,20"])
    assert r.exit_code == 0, r.output
    assert "WARNING few_positives" in r.stdout and "ranking rests on 3 impressions" in r.stdout
    r = CliRunner().invoke(main, ["query", "--work", str(d / "work"), "--user", "7", "--k", "5", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["results"]) == 5


def test_run_errors(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["eval", "--work", str(tmp_path / "w"), "--data", str(tmp_path / "x")])
    assert r.exit_code == 1
    p = write_ownlog(tmp_path / "src", dense_weeks=2, rows_per_week=30, sparse_weeks=())
    import_generic(GenericImportConfig(p["log"], "uid", "item", "when", "clicked"), tmp_path / "ds")
    r = CliRunner().invoke(main, ["run", "--data", str(tmp_path / "ds"), "--work", str(tmp_path / "w")])
    assert r.exit_code == 1
    assert "no training window to suggest" in r.stderr and "--train-periods" in r.stderr
    assert not (tmp_path / "w").exists()
    r = CliRunner().invoke(
        main, ["run", "--data", str(tmp_path / "ds"), "--work", str(tmp_path / "w"), "--train-periods", "14"]
    )
    assert r.exit_code == 1 and "leaves no later period with impressions" in r.stderr
    r = CliRunner().invoke(main, ["run", "--work", str(tmp_path / "new")])
    assert r.exit_code == 1 and "give --data DATA" in r.stderr and not (tmp_path / "new").exists()
    # eval in a workspace where nothing is published names derm run
    from adslog.workspace import Workspace

    Workspace.open(tmp_path / "w", tmp_path / "ds")
    r = CliRunner().invoke(main, ["eval", "--work", str(tmp_path / "w")])
    assert r.exit_code == 1 and "nothing is published" in r.stderr
    assert "(run `derm run --data DATA --work WORK` on a dataset, or `derm daily` up to day" in r.stderr
    r = CliRunner().invoke(main, ["eval", "--work", str(tmp_path / "none")])
    assert r.exit_code == 1 and "create one: `derm run --data DATA --work WORK`" in r.stderr
    # a workspace another command set up with another cycle config is not taken over
    (tmp_path / "w" / "cycle.json").write_text(json.dumps({"tasks": ["ctr"]}))
    r = CliRunner().invoke(main, ["run", "--work", str(tmp_path / "w"), "--train-periods", "1"])
    assert r.exit_code == 1 and "set up by another command" in r.stderr
    assert not (tmp_path / "w" / "run_config.json").exists()


def test_run_config_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(TINY + "\n[towers.extra_table]\nx = 1\n")
    with pytest.raises(DataError) as e:
        load_run_config(f)
    assert str(e.value).startswith(f"{f}: unknown key 'towers.extra_table'")
    f.write_text("[towers]\nbackbone = 'mlp'\nepochs_initial = 5\n[ranker]\nseed = 9\nepochs_initial = 3\n")
    cfg = load_run_config(f)
    assert cfg.cycle.towers.backbone.value == "mlp" and cfg.cycle.towers.epochs_initial == 5
    assert cfg.cycle.ranker.seed == 9 and cfg.cycle.ranker.epochs_initial == 3
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"aggregation": {"users": {"ttl_days": 12}}, "warnings": {"min_positives": 5}}))
    cfg = load_run_config(j)
    assert cfg.cycle.aggregation.ttl_days == 12 and cfg.warnings.min_positives == 5
    for text, msg in (
        ("[towers]\nbackbone = 'cnn'\n", "towers: 'cnn' is not a valid Backbone"),
        ("[aggregation.users]\nweight = 2\n", "aggregation.users: weight must be in [0, 1)"),
        ("trainperiods = 3\n", "unknown key 'trainperiods'"),
        ("[aggregation.pins]\n", "unknown key 'aggregation.pins'"),
        ("train_periods = 0\n", "train_periods must be >= 1"),
        ("[towers\n", "not valid TOML"),
    ):
        f.write_text(text)
        with pytest.raises(DataError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_run_config(f)
    r = CliRunner().invoke(main, ["run", "--config", str(f), "--work", str(tmp_path / "w")])
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: {f}: not valid TOML")
    assert not (tmp_path / "w").exists()


def test_every_config_key_documented() -> None:
    keys = flat_keys(RunConfig().to_json())
    assert sorted(keys) == sorted(KEY_DOCS)
    r = CliRunner().invoke(main, ["run", "--show-config"])
    assert r.exit_code == 0
    assert len(r.stdout.splitlines()) == len(KEY_DOCS)
    assert 'towers.backbone = "dhen"  # dhen' in r.stdout


# -- warnings on constructed documents ------------------------------------------------------------------
def _doc(**kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "day": 10,
        "version_days": {"embeddings": 9, "towers": 9, "ranker": 9},
        "retrieval": {"n_users": 200, "n_live_ads": 500, "recall_at_k": {"20": 0.3, "100": 0.6}},
        "ranking": {"n_impressions": 5000, "n_clicks": 400, "roc_auc": 0.7},
    }
    for k, v in kw.items():
        doc[k] = {**doc[k], **v} if isinstance(v, dict) and k != "version_days" else v
    return doc


def test_warnings_fire_on_constructed_cases() -> None:
    assert eval_warnings(_doc()) == []
    w = eval_warnings(_doc(version_days={"embeddings": 7, "towers": 7, "ranker": 9}))
    assert [x["code"] for x in w] == ["stale_versions"] and w[0]["age"] == 3
    assert eval_warnings(_doc(version_days={"embeddings": 8, "towers": 8, "ranker": 8})) == []  # age 2 = max
    assert (
        eval_warnings(_doc(version_days={"embeddings": 8}), WarningConfig(max_version_age=1))[0]["age"] == 2
    )
    w = eval_warnings(_doc(retrieval={"n_users": 1, "recall_at_k": {"20": 0.0}}))
    assert [(x["code"], x["figure"], x["n"]) for x in w] == [("few_positives", "retrieval.recall_at_k.20", 1)]
    assert w[0]["interval"] == [0.0, 1.0]
    w = eval_warnings(_doc(ranking={"n_impressions": 4, "n_clicks": 0, "roc_auc": None}))
    assert w[0]["figure"] == "ranking.roc_auc" and "undefined" in w[0]["message"]
    w = eval_warnings(_doc(ranking={"n_impressions": 5000, "n_clicks": 20, "roc_auc": 0.8}))
    half = math.sqrt(math.log(40) / 40)
    assert w[0]["n"] == 20 and w[0]["interval"] == [round(0.8 - half, 6), 1.0]
    w = eval_warnings(_doc(retrieval={"n_live_ads": 80}))
    assert [(x["code"], x["k"]) for x in w] == [("k_exceeds_live_items", 100)]
    w = eval_warnings(_doc(retrieval={"n_live_ads": 20}))
    assert [x["k"] for x in w] == [20, 100]


def test_hoeffding_interval() -> None:
    assert hoeffding_interval(0.5, 100) == [round(0.5 - 0.135810, 6), round(0.5 + 0.135810, 6)]
    assert hoeffding_interval(0.9, 0) == [0.0, 1.0]


def test_no_warning_on_the_demo(demo_ws: tuple[Path, dict]) -> None:
    work, summary = demo_ws
    assert summary["report"]["warnings"] == []
    assert "- warnings: none" in (work / "report.md").read_text()
    for f in sorted((work / "evals").glob("day=*.json")):
        doc = read_json(f)
        assert doc["warnings"] == [], (f, doc["warnings"])
        assert doc["retrieval"]["n_clicks"] > 0 and doc["ranking"]["n_clicks"] > 0


def test_daily_gap(ws_copy: tuple[Any, dict]) -> None:
    ws, summary = ws_copy
    ds = ws.dataset()
    last = summary["eval_day"]
    assert all(daily_gap(ws, ds, d) is None for d in summary["daily_days"])
    with ws.lock():
        rollback(ws, last - 2)
    gap = daily_gap(ws, ds, last)
    assert gap is not None and (gap["from_day"], gap["to_day"], gap["n_periods"]) == (last - 1, last - 1, 1)
    assert gap["n_impressions"] == ds.impressions(last - 1).num_rows
    r = CliRunner().invoke(main, ["daily", "--work", str(ws.root), "--day", str(last), "--json"])
    assert r.exit_code == 0, r.output
    codes = [w["code"] for w in json.loads(r.stdout)["days"][0]["warnings"]]
    assert codes == ["daily_gap"]


def test_verbose_logs_a_line_per_epoch_and_quiets_faiss(own_run: dict[str, Any], tmp_path: Path) -> None:
    import logging

    from cli import _setup

    d = own_run["dir"]
    origin = START // 86400
    args = [
        "-v",
        "train",
        "--work",
        str(tmp_path / "w"),
        "--data",
        str(d / "ds"),
        "--last-day",
        str(origin + 2),
    ]
    r = CliRunner().invoke(main, [*args, "--epochs", "3", "--backbone", "mlp", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    epochs = [ln for ln in r.stderr.splitlines() if "derm.progress: train: epoch" in ln]
    assert [ln.split("epoch ")[1].split(" ")[0] for ln in epochs] == ["1/3", "2/3", "3/3"]
    assert read_json(tmp_path / "w" / "cycle.json")["towers"]["backbone"] == "mlp"
    r = CliRunner().invoke(
        main,
        ["-v", "ranker", "train", "--work", str(tmp_path / "w"), "--last-day", str(origin + 2)]
        + ["--epochs", "2", "--seed", "7", "--device", "cpu"],
    )
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if "train ranker: epoch" in ln]
    assert [ln.split("epoch ")[1].split(" ")[0] for ln in lines] == ["1/2", "2/2"]
    m = read_json(tmp_path / "w" / "ranker" / f"day={origin + 2}" / "manifest.json")
    assert (m["config"]["seed"], m["config"]["epochs_initial"]) == (7, 2)
    assert read_json(tmp_path / "w" / "cycle.json")["ranker"]["seed"] == 0  # this training only
    _setup(False, 1)
    assert logging.getLogger("faiss.loader").getEffectiveLevel() == logging.WARNING
    _setup(False, 2)
    assert logging.getLogger("faiss.loader").getEffectiveLevel() == logging.INFO
    _setup(True, 0)
