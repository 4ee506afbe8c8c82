"""`derm graph build` and `derm kge train` through CliRunner: JSON outputs and artifacts, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from adslog.synth import SynthConfig, generate
from cli import main

runner = CliRunner()
DAY0 = 20_000


def _run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kgcli") / "data"
    generate(SynthConfig(n_users=200, n_ads=150, n_days=3, impressions_per_day=5000, n_advertisers=15), out)
    return out


def test_graph_build_then_kge_train_scratch_and_increment(data: Path, tmp_path: Path) -> None:
    work = str(tmp_path / "work")
    code, out, err = _run("graph", "build", "--work", work, "--data", str(data), "--day", str(DAY0), "--json")
    assert code == 0 and err == ""
    g = json.loads(out)
    assert g["day"] == DAY0 and g["serves_day"] == DAY0 + 1 and g["n_edges"] > 0
    assert (Path(work) / "graph" / f"day={DAY0}" / "edges.parquet").is_file()
    assert _run("graph", "build", "--work", work, "--day", str(DAY0 + 1), "--json")[0] == 0
    args = ("kge", "train", "--work", work, "--dim", "8", "--epochs", "2", "--json")
    code, out, err = _run(*args, "--day", str(DAY0))
    assert code == 0 and err == "", err
    first = json.loads(out)
    assert first["mode"] == "scratch" and first["model"] == "transra" and first["entities"]["user"] > 0
    code, out, _ = _run(*args, "--day", str(DAY0 + 1))
    second = json.loads(out)
    assert second["mode"] == "incremental" and second["lineage"] == first["lineage"]
    assert (Path(second["kge"]) / "weights.pt").is_file()
    cfg = json.loads((Path(first["kge"]) / "manifest.json").read_text())["config"]
    assert (cfg["sampling"], cfg["lr"]) == ("degree", 0.1)  # KGEConfig's defaults, not the CLI's
    code, out, err = _run(
        *args, "--day", str(DAY0), "--model", "transe", "--sampling", "uniform", "--lr", "0.02"
    )
    assert code == 0 and err == "", err
    cfg = json.loads((Path(json.loads(out)["kge"]) / "manifest.json").read_text())["config"]
    assert (cfg["sampling"], cfg["lr"]) == ("uniform", 0.02)


def test_kge_train_errors(data: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert _run("graph", "build", "--work", str(work), "--data", str(data), "--day", str(DAY0))[0] == 0
    code, out, err = _run("kge", "train", "--work", str(work), "--day", str(DAY0 + 2))
    assert code == 1 and out == ""
    assert err == (
        f"Error: {work.resolve()}/graph/day={DAY0 + 2}: graph version not published "
        f"(run `derm graph build --day {DAY0 + 2}` first)\n"
    )
    code, _, err = _run("graph", "build", "--work", str(work), "--day", str(DAY0 + 9))
    assert code == 1 and err.startswith("Error: ") and "outside the data's range" in err
