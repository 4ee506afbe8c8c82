"""Property-based tests (hypothesis) of the generic importer and the query inputs.

Whatever the bytes of a log or the values of a query's options: the outcome is a dataset that says exactly
what the log held, or a `DataError` / one `Error:` line with exit code 1, never another exception, and never
a file outside the output directory.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adslog.dataset import Dataset
from adslog.importers import TS_MAX, GenericImportConfig, import_generic
from cli import main
from dermcore.errors import DataError

# valid values drawn four times as often as broken ones, so both outcomes are exercised
_valid_ts = st.integers(0, TS_MAX)
ids = st.one_of(
    st.integers(0, 50), st.text("abc", min_size=1, max_size=3), st.integers(-5, 10**19), st.text(max_size=6)
)
timestamps = st.one_of(
    _valid_ts, _valid_ts, _valid_ts, _valid_ts,
    st.integers(-(10**12), 10**19), st.floats(allow_nan=True, allow_infinity=True), st.just(""),
)  # fmt: skip
labels = st.one_of(
    st.sampled_from([0, 1]),
    st.sampled_from([0, 1]),
    st.sampled_from([0, 1]),
    st.integers(-2, 3),
    st.just("x"),
)
col_names = st.text(min_size=1, max_size=12).filter(
    lambda s: "\x00" not in s and "\r" not in s and "\n" not in s
)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8", errors="surrogatepass")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(ids, ids, timestamps, labels), min_size=0, max_size=8),
    # (min_size 0: an empty log is one of the cases)
    feature=col_names,
    feature_values=st.lists(st.one_of(st.text(max_size=4), st.integers(-3, 300), st.floats()), min_size=1),
)
def test_generic_import_never_crashes_and_never_escapes(
    rows: list[tuple[object, object, object, object]], feature: str, feature_values: list[object]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        work = root / "in"
        work.mkdir()
        log = work / "log.csv"
        _write_csv(log, ["uid", "item", "t", "clk"], [list(r) for r in rows])
        users = sorted({str(r[0]) for r in rows})
        ufile = work / "users.csv"
        header = ["uid", feature] if feature != "uid" else ["uid"]
        _write_csv(
            ufile,
            header,
            [[u, feature_values[i % len(feature_values)]][: len(header)] for i, u in enumerate(users)],
        )
        before = {p for p in root.rglob("*")}
        out = work / "ds"
        cfg = GenericImportConfig(log, "uid", "item", "t", "clk", users=ufile if users else None)
        try:
            summary = import_generic(cfg, out)
        except DataError as e:
            event("refused: " + e.problem.split(" (")[0][:40])
            assert str(e).split(": ")[0] in (str(log), str(ufile), str(out), str(out.resolve()))
            assert not out.exists()
        else:
            event("imported")
            ds = Dataset.open(out)
            imp = ds.impressions(ds.days())
            assert summary["rows"] == len(rows) == imp.num_rows
            assert imp.column("user_id").to_numpy().dtype == np.int64
            ts = imp.column("ts").to_numpy()
            assert (ts >= 0).all() and (ts <= TS_MAX).all()
        created = {p for p in root.rglob("*")} - before
        assert all(out in p.parents or p == out for p in created), created


runner = CliRunner()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    user=st.integers(-(2**70), 2**70),
    k=st.integers(-5, 10**12),
    candidates=st.integers(-5, 10**12),
    day=st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    cap=st.integers(-3, 10**11),
)
def test_query_options_give_results_or_one_error_line(
    demo_ws: tuple[Path, dict], user: int, k: int, candidates: int, day: int | None, cap: int
) -> None:
    work, _ = demo_ws
    args = ["query", "--work", str(work), "--user", str(user), "--k", str(k), "--candidates", str(candidates)]
    args += ["--max-per-advertiser", str(cap), "--json"] + ([] if day is None else ["--day", str(day)])
    r = runner.invoke(main, args)
    assert r.exit_code in (0, 1), r.exception
    if r.exit_code == 1:
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("Error: ")
    else:
        assert r.stderr == ""


@pytest.mark.parametrize("user", ["1e3", "abc", "", "0x10"])
def test_query_user_must_be_an_integer(demo_ws: tuple[Path, dict], user: str) -> None:
    work, _ = demo_ws
    r = runner.invoke(main, ["query", "--work", str(work), "--user", user])
    assert r.exit_code == 1 and r.stderr.startswith("Error: Invalid value for '--user': ")
