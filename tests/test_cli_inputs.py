"""Bad values of CLI options and OS errors: one `Error:` line on stderr, exit code 1, nothing written."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import main

runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(main, list(args), catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture()
def ws_dir(ws_copy: tuple[Any, dict]) -> Path:
    return Path(ws_copy[0].root)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--user", "99999999999999999999"],
            "Error: Invalid value for '--user': 99999999999999999999 is not in the range "
            "-9223372036854775808<=x<=9223372036854775807.",
        ),
        (
            ["--user", "1", "--k", "0"],
            "Error: Invalid value for '--k': 0 is not in the range 1<=x<=2147483647.",
        ),
        (
            ["--user", "1", "--max-per-advertiser", "-1"],
            "Error: Invalid value for '--max-per-advertiser': -1 is not in the range 0<=x<=2147483647.",
        ),
        (
            ["--user", "1", "--day", "99999999999"],
            "Error: Invalid value for '--day': 99999999999 is not in the range -2147483648<=x<=2147483647.",
        ),
    ],
)
def test_query_option_ranges(demo_ws: tuple[Path, dict], args: list[str], line: str) -> None:
    work, _ = demo_ws
    code, out, err = _run("query", "--work", str(work), *args)
    assert (code, out, err) == (1, "", line + "\n")


def test_query_day_outside_the_data(demo_ws: tuple[Path, dict]) -> None:
    work, summary = demo_ws
    code, _, err = _run("query", "--work", str(work), "--user", "1", "--day", "30000")
    assert code == 1
    assert err.startswith(f"Error: {work.resolve()}: query day 30000 is outside ")
    assert err.endswith("(days after the data's first day, up to the day after its last)\n")


def test_bad_index_spec_leaves_the_cycle_config_alone(ws_dir: Path) -> None:
    before = (ws_dir / "cycle.json").read_bytes()
    code, out, err = _run(
        "index", "build", "--work", str(ws_dir), "--spec", "NotAnIndex,Garbage", "--overwrite"
    )
    assert code == 1 and out == "" and err.startswith("Error: invalid faiss spec 'NotAnIndex,Garbage'")
    assert (ws_dir / "cycle.json").read_bytes() == before


def test_os_errors_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adslog.importers

    def disk_full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ds" / "part-0.parquet"))

    monkeypatch.setattr(adslog.importers, "import_generic", disk_full)
    log = tmp_path / "log.csv"
    log.write_text("uid,item,t,clk\nu1,a,86400,1\n")
    code, out, err = _run(
        "data", "import", "generic", str(tmp_path / "ds"), "--impressions", str(log),
        "--user-col", "uid", "--item-col", "item", "--ts-col", "t", "--click-col", "clk",
    )  # fmt: skip
    assert (code, out) == (1, "")
    assert err == f"Error: {tmp_path / 'ds' / 'part-0.parquet'}: No space left on device\n"


def test_import_ts_flags(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("uid,item,t,clk\nu1,a,-86400,1\nu2,b,5,0\n")
    base = ["data", "import", "generic", "--impressions", str(log), "--user-col", "uid", "--item-col", "item"]
    base += ["--ts-col", "t", "--click-col", "clk"]
    code, _, err = _run(*base[:3], str(tmp_path / "a"), *base[3:])
    assert code == 1 and "1 timestamps outside 0..4102444800" in err and not (tmp_path / "a").exists()
    code, _, err = _run(*base[:3], str(tmp_path / "b"), *base[3:], "--ts-min", "-86400")
    assert code == 0, err
    code, _, err = _run(*base[:3], str(tmp_path / "c"), *base[3:], "--any-ts")
    assert code == 0, err


def test_a_bug_is_not_reported_as_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only domain errors become `Error:` / exit 1; a programming error says it is a bug, exit 2, and shows
    its traceback with -v."""
    import adslog.importers

    def bug(*_a: object, **_k: object) -> None:
        raise ValueError("list index math went wrong")

    monkeypatch.setattr(adslog.importers, "import_generic", bug)
    log = tmp_path / "log.csv"
    log.write_text("uid,item,t,clk\nu1,a,86400,1\n")
    args = ["data", "import", "generic", str(tmp_path / "ds"), "--impressions", str(log)]
    args += ["--user-col", "uid", "--item-col", "item", "--ts-col", "t", "--click-col", "clk"]
    code, out, err = _run(*args)
    assert (code, out) == (2, "")
    assert err == (
        "Internal error (a bug in derm): ValueError: list index math went wrong; rerun with -v for the traceback\n"
    )
    code, _, err = _run("-v", *args)
    assert code == 2 and "Traceback (most recent call last)" in err and 'raise ValueError("list index' in err
