"""The CLI through click's CliRunner: happy paths assert outputs and artifacts, error paths assert exit code 1
and the exact `Error:` line, and every command has help text."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main
from dermcore.errors import DermError

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
    return out


def test_every_command_has_help() -> None:
    cmds = _commands(main)
    names = {" ".join(c) for c in cmds}
    for required in (
        "data synth",
        "data import movielens-100k",
        "data import gowalla",
        "data import generic",
        "train",
        "embed",
        "index build",
        "query",
        "ranker train",
        "eval",
        "daily",
        "demo",
    ):
        assert required in names
    for c in cmds:
        code, out, _ = _run(*c, "--help")
        assert code == 0
        cmd = main
        for part in c:
            cmd = cmd.commands[part]  # type: ignore[attr-defined]
        assert cmd.help and cmd.help.strip(), f"{' '.join(c)} has no help text"
        assert "Usage:" in out


def test_synth_json(tmp_path: Path) -> None:
    out = tmp_path / "d"
    code, stdout, stderr = _run(
        "data",
        "synth",
        str(out),
        "--users",
        "300",
        "--ads",
        "200",
        "--days",
        "3",
        "--impressions-per-day",
        "2000",
        "--json",
    )
    assert code == 0 and stderr == ""
    doc = json.loads(stdout)
    assert doc["stats"]["n_impressions"] == 6000
    assert (out / "manifest.json").exists()
    code, _, stderr = _run("data", "synth", str(out), "--users", "300", "--ads", "200", "--days", "3")
    assert code == 1 and stderr == f"Error: {out.resolve()}: already exists (pass overwrite to replace it)\n"


def test_eval_json_matches_report(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    code, stdout, stderr = _run("eval", "--work", str(work), "--json")
    assert code == 0 and stderr == ""
    assert json.loads(stdout) == json.loads((work / "report.json").read_text())
    # the human output: tests/test_eval_report.py::test_cli_eval_report (one evaluation fewer here)


def test_query_json(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    from adslog.workspace import Workspace

    imp = Workspace.open(work).dataset().impressions(s["daily_days"][-1], ["user_id"])
    user = str(imp.column("user_id")[0].as_py())  # active on the last published day: has an embedding
    code, stdout, stderr = _run("query", "--work", str(work), "--user", user, "--k", "4", "--json")
    assert code == 0 and stderr == ""
    doc = json.loads(stdout)
    assert set(doc) == {"user_id", "day", "path", "versions", "config", "n_candidates", "results"}
    assert doc["path"] == "ann" and len(doc["results"]) == 4
    assert {"ad_id", "score", "rank_score", "p_ctr", "p_cvr", "ecpm", "rank"} <= set(doc["results"][0])


def test_daily_skips_published_day(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    code, stdout, stderr = _run("daily", "--work", str(work), "--day", str(s["daily_days"][0]), "--json")
    assert code == 0 and stderr == ""
    assert json.loads(stdout)["days"][0]["skipped"] is True


NO_WS = "Error: {tmp}/nope: workspace does not exist (create one: `derm run --data DATA --work WORK`)"


@pytest.mark.parametrize(
    "args, expected",
    [
        (("eval", "--work", "{tmp}/nope"), NO_WS),
        (("query", "--work", "{tmp}/nope", "--user", "1"), NO_WS),
        (("daily", "--work", "{tmp}/nope", "--day", "1"), NO_WS),
        (("data", "import", "gowalla", "{tmp}/nope", "{tmp}/out"), None),
    ],
)
def test_missing_paths_are_domain_errors(tmp_path: Path, args: tuple[str, ...], expected: str | None) -> None:
    code, stdout, stderr = _run(*(a.format(tmp=tmp_path) for a in args))
    assert code == 1 and stdout == ""
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1
    if expected:
        assert stderr == expected.format(tmp=tmp_path) + "\n"


def test_day_outside_range(demo_ws: tuple[Path, dict]) -> None:
    work, s = demo_ws
    data = Path(s["data"])
    code, stdout, stderr = _run("eval", "--work", str(work), "--day", "5", "--json")
    assert code == 1 and stdout == ""
    first, last = s["train_days"][0], s["eval_day"]
    assert stderr == f"Error: {data}: day 5 is outside the data's range {first}..{last}\n"


def test_invalid_config_is_a_domain_error(tmp_path: Path) -> None:
    code, stdout, stderr = _run("data", "synth", str(tmp_path / "x"), "--users", "0")
    assert code == 1 and stdout == ""
    assert stderr == "Error: Invalid value for '--users': 0 is not in the range 1<=x<=2147483647.\n"
    assert not (tmp_path / "x").exists()
    from adslog.synth import SynthConfig  # the library's own check, for callers that skip the CLI

    with pytest.raises(DermError, match="SynthConfig.n_users must be a positive integer, got 0"):
        SynthConfig(n_users=0)


def test_corrupt_partition_is_named(demo_ws: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    work, s = demo_ws
    data = tmp_path / "data"
    shutil.copytree(s["data"], data)
    part = sorted((data / "impressions" / f"day={s['eval_day']}").glob("*.parquet"))[0]
    part.write_bytes(b"not parquet at all")
    ws2 = tmp_path / "w2"
    code, stdout, stderr = _run("eval", "--work", str(ws2), "--data", str(data), "--json")
    assert code == 1 and stdout == ""
    # the dataset manifest's payload record catches it before Parquet is read
    assert stderr.startswith(f"Error: {part}: size 18 differs from the manifest's ")


def test_movielens_end_to_end(tmp_path: Path) -> None:
    """Import the real MovieLens-100K log and run the manual path: train, embed, index, ranker, eval, query.
    On its first 10 days (6,107 ratings; the eval day holds 597): every command's cost grows with the days it
    embeds and the rows the ranker fits, and what is checked here is that the path runs on real data."""
    src = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens_100k"
    if not (src / "ml-100k.inter").exists():
        pytest.skip(f"{src} not available")
    ml, w = tmp_path / "ml", tmp_path / "w"
    assert _run("data", "import", "movielens-100k", str(src), str(ml), "--json")[0] == 0
    first, last = 10124, 10133  # the first 10 days
    code, out, err = _run(
        "train",
        "--work",
        str(w),
        "--data",
        str(ml),
        "--first-day",
        str(first),
        "--last-day",
        str(last),
        "--epochs",
        "1",
        "--json",
    )
    assert code == 0 and err == "" and json.loads(out)["days"] == {"first": first, "last": last, "n": 10}
    assert _run("embed", "--work", str(w), "--from", str(first), "--to", str(last), "--json")[0] == 0
    assert _run("index", "build", "--work", str(w), "--json")[0] == 0
    assert _run("ranker", "train", "--work", str(w), "--json")[0] == 0
    code, out, err = _run("eval", "--work", str(w), "--day", str(last + 1), "--json")
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["embedding_day"] == last and doc["retrieval"]["n_users"] > 0
    assert "oracle_recall_at_k" not in doc["retrieval"] and "oracle_roc_auc" not in doc["ranking"]
    assert "nonpersonal_oracle_roc_auc" not in doc["ranking"]
    assert 0.0 <= doc["ranking"]["roc_auc"] <= 1.0
    code, out, _ = _run("query", "--work", str(w), "--user", "1", "--k", "5", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 5
