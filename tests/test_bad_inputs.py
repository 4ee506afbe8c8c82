"""The generated bad-input corpus (tests/corpus.py): every broken input ends in exactly one `Error:` line
and exit code 1; every valid control imports or answers with exit code 0."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from cli import main
from tests.corpus import import_cases, query_cases

runner = CliRunner()


def _check(name: str, valid: bool, args: list[str]) -> None:
    r = runner.invoke(main, args)
    exc = r.exception if not isinstance(r.exception, SystemExit) else None
    assert exc is None, f"{name}: {exc!r}"
    if valid:
        assert r.exit_code == 0, f"{name}: {r.stderr}"
    else:
        assert r.exit_code == 1, f"{name}: exit {r.exit_code}, stdout {r.stdout[:200]!r}"
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("Error: "), name


def test_import_corpus(tmp_path: Path) -> None:
    cases = import_cases(tmp_path)
    assert len(cases) >= 52 and sum(not v for _, v, _ in cases) >= 52
    for name, valid, args in cases:
        _check(name, valid, args)
    # a refused import writes nothing: its output directory does not exist (but the one that already did)
    outs = [
        Path(args[3]) for _, valid, args in cases if not valid and args[:3] == ["data", "import", "generic"]
    ]
    assert [p.name for p in outs if p.exists()] == ["out-exists"]


def test_command_option_corpus(tmp_path: Path, demo_ws: tuple[Path, dict]) -> None:
    work = tmp_path / "work"
    shutil.copytree(demo_ws[0], work)
    store = work / "embeddings" / "ctr"
    latest = sorted(p for p in store.iterdir() if p.name.startswith("day="))[-1]
    user = int(np.load(latest / "user_ids.npy")[0])
    for name, valid, args in query_cases(work, user):
        _check(name, valid, args)
