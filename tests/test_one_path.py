"""Issue 18's "one way through the code": the CLI is thin (each command parses, calls one workflow function,
prints), writes no config itself, and the manual commands and the daily cycle meet the same gates."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from adslog.workspace import Workspace, version_name
from cli import main
from dermcore.artifact import get_latest
from embstore.store import embeddings_dir
from index.versions import index_dir
from ranking.train import ranker_dir

CLI = Path(__file__).resolve().parent.parent / "cli.py"
MAX_BODY = 25
runner = CliRunner()


def _commands() -> list[ast.FunctionDef]:
    def is_command(d: ast.expr) -> bool:
        return isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"

    tree = ast.parse(CLI.read_text())
    return [n for n in tree.body if isinstance(n, ast.FunctionDef) and any(map(is_command, n.decorator_list))]


def _body_lines(fn: ast.FunctionDef) -> int:
    body = fn.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring is the command's help text, not logic
    end = body[-1].end_lineno
    assert end is not None
    return end - body[0].lineno + 1


def test_every_command_body_is_short() -> None:
    cmds = _commands()
    assert len(cmds) >= 20  # the parser found the commands (a decorator change would make this vacuous)
    long = {fn.name: _body_lines(fn) for fn in cmds if _body_lines(fn) > MAX_BODY}
    assert not long, f"command bodies over {MAX_BODY} lines (move the logic into workflow/): {long}"


def test_body_counter_counts() -> None:
    fn = ast.parse('@x.command()\ndef f():\n    """doc"""\n    a = 1\n\n    b = 2\n').body[0]
    assert isinstance(fn, ast.FunctionDef) and _body_lines(fn) == 3


def test_cli_writes_no_config() -> None:
    """Configuration changes only through `workflow.cycle.set_cycle_config` (`derm config set`) and the
    library's own writers: cli.py neither writes files nor saves configs."""
    src = CLI.read_text()
    for name in ("save_cycle_config", "write_json_atomic", ".write_text(", ".write_bytes(", "os.replace"):
        assert name not in src, name
    calls = [
        n.func.id
        for n in ast.walk(ast.parse(src))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    ]
    assert "open" not in calls


def _tree(root: Path, sub: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / sub).rglob("*")) if p.is_file()}


def test_a_bad_index_is_refused_by_the_manual_build_and_the_daily_cycle(
    ws_copy: tuple[Workspace, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same gate (`min_index_recall`) on `derm index build` and `derm daily`: one error line, exit 1,
    nothing published, the served index unchanged."""
    import index.artifact

    ws, s = ws_copy
    day, yesterday = s["eval_day"], s["daily_days"][-1]
    monkeypatch.setattr(index.artifact, "recall_against_exact", lambda *a, **k: 0.5)
    before = _tree(ws.root, "index")
    errors = []
    for args in (
        ["index", "build", "--day", str(yesterday), "--overwrite"],
        ["daily", "--day", str(day)],
    ):
        r = runner.invoke(main, [*args, "--work", str(ws.root)])
        assert r.exit_code == 1, (args, r.output)
        assert r.stdout == ""
        errors.append(r.stderr.strip())
        assert _tree(ws.root, "index") == before  # nothing published, no temporary directory left
    for e in errors:
        assert e.startswith("Error: ") and e.count("\n") == 0
        assert "self-check recall@100 0.5000 is under the threshold 0.9; not published" in e
    assert get_latest(index_dir(ws)) == version_name(yesterday)
    # the daily cycle got as far as the index: the store moved on, the index did not
    assert get_latest(embeddings_dir(ws, "ctr")) == version_name(day)


def test_a_ranker_of_another_lineage_is_refused_by_the_daily_cycle(ws_copy: tuple[Workspace, dict]) -> None:
    """`tests/test_lineage.py` shows query and eval refusing a ranker whose embedding lineage no longer
    matches; the daily cycle evaluates through the same check before it trains or writes anything."""
    ws, s = ws_copy
    day = s["eval_day"]
    rdir = ranker_dir(ws) / version_name(ws.version_before(ranker_dir(ws), day))  # type: ignore[arg-type]
    m: dict[str, Any] = json.loads((rdir / "manifest.json").read_text())
    m["embedding_lineages"] = {"ctr": ["f" * 32]}
    (rdir / "manifest.json").write_text(json.dumps(m))
    before = {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file() and p.name != ".lock"}
    r = runner.invoke(main, ["daily", "--work", str(ws.root), "--day", str(day)])
    assert r.exit_code == 1, r.output
    assert "but the ranker" in r.stderr and "was trained on lineage ffffffff" in r.stderr
    assert "retrain the ranker from scratch" in r.stderr and r.stderr.count("\n") == 1
    after = {p: p.read_bytes() for p in ws.root.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
