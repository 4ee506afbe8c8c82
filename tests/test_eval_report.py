"""`derm eval --report` and the keys the eval document gained: figures exist, are real PNGs and are linked from
report.md; the new metrics agree with the old ones and with their definitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from adslog.workspace import Workspace
from cli import main
from eval.ann_sweep import AnnSweepConfig
from eval.report import ablation_rows, read_ablations, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("recall_at_k.png", "auc_by_day.png", "embeddings_by_day.png", "ann_recall_qps.png")
SMALL_SWEEP = AnnSweepConfig(nprobes=(1, 4), efs=(10, 40), max_queries=200)


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert 15_000 < len(data) < 2_000_000, (path, len(data))  # drawn axes and text, not an empty canvas


def test_eval_document_new_keys(demo_ws: tuple[Path, dict]) -> None:
    _, s = demo_ws
    doc = s["report"]
    r, g = doc["retrieval"], doc["ranking"]
    ks = sorted(r["recall_at_k"], key=int)
    for key in (
        "ndcg_at_k",
        "hit_rate_at_k",
        "random_recall_at_k",
        "random_ndcg_at_k",
        "random_hit_rate_at_k",
    ):
        assert sorted(r[key], key=int) == ks
    for k in ks:
        # random: exact expectation K / n_live per user times the share of clicked ads that are live (<= 1)
        assert 0 < r["random_recall_at_k"][k] <= int(k) / r["n_live_ads"] + 1e-12
        assert r["hit_rate_at_k"][k] >= r["recall_at_k"][k]  # a user with recall > 0 has a hit
        assert r["recall_at_k"][k] > 3 * r["random_recall_at_k"][k]
        b = r["vs_popularity"][k]
        assert b["diff"] == pytest.approx(r["recall_at_k"][k] - r["popularity_recall_at_k"][k], abs=1e-12)
        assert b["lo"] <= b["diff"] <= b["hi"] and b["n_boot"] == 1000
    curve = r["recall_curve"]
    assert {10, 20, 50, 100, 200} <= set(curve["k"]) and {"ours", "popularity", "random", "oracle"} <= set(
        curve
    )
    i20 = curve["k"].index(20)
    assert (
        curve["ours"][i20] == r["recall_at_k"]["20"] and curve["oracle"][i20] == r["oracle_recall_at_k"]["20"]
    )
    assert np.all(np.diff(curve["ours"]) >= 0) and np.all(np.diff(curve["random"]) > 0)
    assert set(r["by_surface"]) == {"home_feed", "search", "related"}
    assert 0.5 < g["gauc"] < 1 and g["gauc_detail"]["weighting"] == "impressions"
    assert g["oracle_log_loss"] < g["constant_log_loss"] and g["log_loss"] < g["constant_log_loss"]
    cal = g["calibration"]
    assert sum(b["n"] for b in cal["buckets"]) == g["n_impressions"] and cal["ece"] < 0.02
    assert cal["predicted"] == pytest.approx(g["predicted_ctr"], rel=1e-5)
    assert sum(v["n_impressions"] for v in g["by_surface"].values()) == g["n_impressions"]
    assert all(v["oracle_roc_auc"] > 0.5 for v in g["by_surface"].values())


def test_write_report_figures(demo_ws: tuple[Path, dict], tmp_path: Path) -> None:
    work, s = demo_ws
    out = tmp_path / "rep"
    res = write_report(
        Workspace.open(work), None, out, doc=s["report"], results_dir=tmp_path, sweep_cfg=SMALL_SWEEP
    )
    assert res["files"] == ["report.md", *FIGURES]  # no ablation results in tmp_path: no ablations figure
    md = (out / "report.md").read_text()
    for name in FIGURES:
        _check_png(out / name)
        assert f"]({name})" in md
    assert "ablations.png" not in md
    # the by-day figures cover every day derm daily evaluated
    assert all(f"| {d} |" in md for d in s["daily_days"] + [s["eval_day"]])
    sweep = res["ann_sweep"]
    exact = [p for p in sweep["points"] if p["param"] is None]
    assert len(exact) == 1 and exact[0]["recall"] == pytest.approx(1.0)
    ivf = sorted((p for p in sweep["points"] if p["param"] == "nprobe"), key=lambda p: p["value"])
    hnsw = sorted((p for p in sweep["points"] if p["param"] == "ef"), key=lambda p: p["value"])
    assert len(ivf) == 2 and len(hnsw) == 2 and all(p["qps"] > 0 for p in sweep["points"])
    assert ivf[0]["recall"] <= ivf[1]["recall"] and hnsw[-1]["recall"] > 0.9


def test_ablations_figure_from_results_files(demo_ws: tuple[Path, dict], tmp_path: Path) -> None:
    work, s = demo_ws
    results = tmp_path / "results"
    results.mkdir()
    (results / "pooling_ablation.json").write_text(
        json.dumps(
            {
                "machine": {"cpu_count": 2},
                "arms": {
                    "ma": {"recall_at_k": {"20": 0.41, "100": 0.6}, "roc_auc": 0.70},
                    "acc": {
                        "recall_at_k": {"20": 0.43, "100": 0.62},
                        "roc_auc": {"value": 0.71, "lo": 0.7, "hi": 0.72},
                    },
                },
            }
        )
    )
    (results / "demo.json").write_text("{}")  # not an ablation: ignored
    (results / "broken_ablation.json").write_text("not json")  # unreadable: skipped, not fatal
    rows = read_ablations(results)
    assert {(r["arm"], r["metric"]) for r in rows} == {
        (a, m) for a in ("ma", "acc") for m in ("recall_at_k@20", "recall_at_k@100", "roc_auc")
    }
    assert next(r for r in rows if r["arm"] == "acc" and r["metric"] == "roc_auc") == {
        "source": "pooling_ablation",
        "arm": "acc",
        "metric": "roc_auc",
        "value": 0.71,
        "lo": 0.7,
        "hi": 0.72,
    }
    out = tmp_path / "rep"
    res = write_report(
        Workspace.open(work), None, out, doc=s["report"], results_dir=results, sweep_cfg=SMALL_SWEEP
    )
    assert res["files"][-1] == "ablations.png" and res["ablation_rows"] == 6
    _check_png(out / "ablations.png")
    assert "](ablations.png)" in (out / "report.md").read_text()


def test_ablation_rows_shapes() -> None:
    listed = {"arms": [{"name": "a", "recall": 0.5, "note": "x"}, {"arm": "b", "recall": 0.6}]}
    assert [(r["arm"], r["value"]) for r in ablation_rows(listed, "f")] == [("a", 0.5), ("b", 0.6)]
    top = {"git_sha": "abc", "ours": {"auc": 0.7, "flag": True}, "base": {"auc": 0.6}}
    assert [(r["arm"], r["metric"]) for r in ablation_rows(top, "f")] == [("ours", "auc"), ("base", "auc")]
    assert ablation_rows([1, 2], "f") == [] and ablation_rows({"arms": 3}, "f") == []


def test_cli_eval_report(demo_ws: tuple[Path, dict], tmp_path: Path) -> None:
    work, s = demo_ws
    out = tmp_path / "cli-report"
    r = CliRunner().invoke(
        main, ["eval", "--work", str(work), "--report", str(out), "--json"], catch_exceptions=False
    )
    assert r.exit_code == 0 and r.stderr == ""
    doc = json.loads(r.stdout)
    rep = doc.pop("report")
    assert doc == json.loads(json.dumps(s["report"]))  # the eval document itself is unchanged
    assert rep["dir"] == str(out.resolve()) and rep["files"][:5] == ["report.md", *FIGURES]
    for name in FIGURES:
        _check_png(out / name)
    r = CliRunner().invoke(main, ["eval", "--work", str(work), "--report", str(out)], catch_exceptions=False)
    assert r.exit_code == 0 and f"report: {out.resolve() / 'report.md'}" in r.stdout
    assert "| recall@100 |" in r.stdout and "popularity" in r.stdout  # the human table
