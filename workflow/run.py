"""`derm run`: a user's own dataset end to end, the same path as `derm demo` takes for the synthetic log.

    bootstrap       towers, back-inferred embeddings, index and ranker on the first `train_periods` periods
                    (`workflow.cycle.bootstrap`)
    daily cycles    every later period with impressions but the last: evaluate it with the versions published
                    before it, then train, embed, aggregate, index, fine-tune (`workflow.cycle.run_day`)
    evaluation      the last period with impressions -> WORK/evals/day=D.json, WORK/report.json (exactly the
                    `derm eval --json` document) and WORK/report.md (every evaluated period in one table)

Periods without impressions are skipped (there is nothing to train on or to evaluate); the next evaluation says
so through its `stale_versions` warning when the gap is longer than `warnings.max_version_age`. The resolved
config is written to WORK/run_config.json (and the cycle's to WORK/cycle.json); a rerun resumes, skipping every
published stage, and refuses a different config rather than mixing two in one workspace.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from adslog.dataset import Dataset
from adslog.inspect import InspectConfig, inspect_dataset
from adslog.workspace import Workspace
from dermcore.artifact import read_json, write_json_atomic
from dermcore.errors import DataError, DermError
from dermcore.progress import Progress, no_progress
from eval.evaluate import eval_path, evaluate_day
from workflow.cycle import CYCLE_FILE, Timer, bootstrap, run_day
from workflow.report import write_report_md
from workflow.run_config import RUN_CONFIG_FILE, RunConfig

log = logging.getLogger(__name__)


def _has_rows(ds: Dataset, day: int) -> bool:
    return bool(ds.partition_files(day))


def plan(ds: Dataset, cfg: RunConfig) -> dict[str, Any]:
    """{"train_days", "daily_days", "eval_day", "skipped_empty", "train_periods", "source"} for `ds`."""
    days = ds.days()
    n = cfg.train_periods
    source = "config"
    if n is None:
        s = inspect_dataset(ds, InspectConfig(min_clicks=cfg.min_clicks))["suggested"]
        if s["train_periods"] is None:
            raise DermError(
                f"{ds.root}: no training window to suggest ({s['reason']}); give --train-periods N "
                "(see `derm data inspect`)"
            )
        n, source = int(s["train_periods"]), "derm data inspect"
    train = days[:n]
    if not any(_has_rows(ds, d) for d in train):
        raise DermError(f"{ds.root}: the first {n} periods hold no impressions: nothing to train on")
    later = [d for d in days[n:] if _has_rows(ds, d)]
    if not later:
        raise DermError(
            f"{ds.root}: --train-periods {n} leaves no later period with impressions to evaluate "
            f"(the data has {len(days)} periods; see `derm data inspect`)"
        )
    return {
        "train_periods": n,
        "train_periods_from": source,
        "train_days": train,
        "daily_days": later[:-1],
        "eval_day": later[-1],
        "skipped_empty": [d for d in days[n:] if not _has_rows(ds, d)],
    }


def _check_config(ws: Workspace, cfg: RunConfig) -> None:
    """Write the resolved config, or refuse one that differs from the config this workspace ran with."""
    p = ws.root / RUN_CONFIG_FILE
    want = cfg.to_json()
    want.pop("device")  # where compute runs does not change what is computed
    if p.exists():
        have = read_json(p)
        have.pop("device", None)
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise DataError(
                p,
                f"this workspace ran with another config (differs in {', '.join(diff)}): use a new --work, "
                "or the same config",
            )
        return
    cycle = ws.root / CYCLE_FILE
    if cycle.exists() and read_json(cycle) != cfg.cycle.to_json():
        raise DataError(
            cycle,
            "this workspace was set up by another command with another cycle config: use a new --work for "
            "`derm run`",
        )
    write_json_atomic(ws.inside(RUN_CONFIG_FILE), cfg.to_json())


def run_dataset(
    work: str | Path, data: str | Path | None, cfg: RunConfig | None = None, progress: Progress = no_progress
) -> dict[str, Any]:
    """Run (or resume) `derm run` in `work` over the dataset `data` (default: the one `work` is bound to).
    Returns {"report": the last period's eval document, "periods": one summary per evaluated period, plan,
    "stage_seconds", "total_seconds", "config"}."""
    cfg = cfg or RunConfig()
    t0 = time.perf_counter()
    timer = Timer()
    if data is not None:  # plan before the workspace exists: a refused run leaves nothing behind
        plan(Dataset.open(data), cfg)
    ws = Workspace.open(work, data)
    with ws.lock():
        ds = ws.dataset()
        p = plan(ds, cfg)
        _check_config(ws, cfg)
        log.info(
            "derm run: bootstrap on periods %d..%d (%d, from %s), %d daily cycles, evaluate period %d",
            p["train_days"][0], p["train_days"][-1], p["train_periods"], p["train_periods_from"],
            len(p["daily_days"]), p["eval_day"],
        )  # fmt: skip
        bootstrap(ws, p["train_days"], cfg.cycle, progress, timer)
        for i, d in enumerate(p["daily_days"]):
            run_day(ws, d, cfg.cycle, progress, timer, ks=cfg.ks, warn=cfg.warnings)
            progress("daily", i + 1, len(p["daily_days"]))
            log.info("derm run: period %d done (%d of %d daily cycles)", d, i + 1, len(p["daily_days"]))
        last = p["eval_day"]
        if eval_path(ws, last).exists():
            doc = read_json(eval_path(ws, last))
        else:
            done = timer.stage("eval")
            doc = evaluate_day(
                ws,
                last,
                cfg.ks,
                device=cfg.cycle.device,
                slate_users=cfg.cycle.slate_users,
                warn=cfg.warnings,
            )
            write_json_atomic(eval_path(ws, last), doc)
            done()
        write_json_atomic(ws.inside("report.json"), doc)
        periods = [_period_row(read_json(eval_path(ws, d))) for d in [*p["daily_days"], last]]
        summary = {
            "report": doc,
            "periods": periods,
            **p,
            "data": str(ds.root),
            "dataset_period": ds.period,
            "stage_seconds": timer.seconds,
            "total_seconds": round(time.perf_counter() - t0, 3),
            "config": cfg.to_json(),
        }
        write_report_md(ws.inside("report.md"), summary)
        _append_periods(ws.inside("report.md"), periods)
    return summary


def _period_row(doc: dict[str, Any]) -> dict[str, Any]:
    r, g = doc.get("retrieval", {}), doc.get("ranking", {})
    return {
        "day": doc["day"],
        "n_users": r.get("n_users"),
        "n_impressions": r.get("n_impressions"),
        "n_clicks": r.get("n_clicks"),
        "recall_at_k": r.get("recall_at_k", {}),
        "popularity_recall_at_k": r.get("popularity_recall_at_k", {}),
        "roc_auc": g.get("roc_auc"),
        "warnings": list(dict.fromkeys(w["code"] for w in doc.get("warnings", []))),
    }


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def period_table(periods: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one per evaluated period (recall@K of ours vs popularity, ROC-AUC, counts, warnings)."""
    ks = sorted(periods[-1]["recall_at_k"], key=int) if periods else []
    head = "| period | users | impressions | clicks | " + " | ".join(f"recall@{k} (popularity)" for k in ks)
    lines = [head + " | ROC-AUC | warnings |", "|---" * (5 + len(ks)) + "|---|"]
    for p in periods:
        rec = " | ".join(
            f"{_f(p['recall_at_k'].get(k))} ({_f(p['popularity_recall_at_k'].get(k))})" for k in ks
        )
        lines.append(
            f"| {p['day']} | {_f(p['n_users'])} | {_f(p['n_impressions'])} | {_f(p['n_clicks'])} | {rec} | "
            f"{_f(p['roc_auc'])} | {', '.join(p['warnings']) or '-'} |"
        )
    return lines


def _append_periods(path: Path, periods: list[dict[str, Any]]) -> None:
    text = path.read_text()
    text += "\n## Every evaluated period\n\n" + "\n".join(period_table(periods)) + "\n"
    path.write_text(text)
