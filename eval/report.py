"""`derm eval --report DIR`: a Markdown report with figures, from one workspace alone.

DIR/report.md             every table (retrieval and ranking metrics beside popularity, random and the
                          oracle, per surface, calibration, ANN sweep) and links to the figures below
DIR/recall_at_k.png       recall@K vs K for ours, popularity, oracle, random (the day's eval document)
DIR/auc_by_day.png        ranking ROC-AUC / gAUC and predicted vs observed CTR over WORK/evals/day=*.json
DIR/embeddings_by_day.png embedding stability and coverage over the same days
DIR/ann_recall_qps.png    recall@k vs QPS of faiss IVF and hnswlib at a few nprobe / ef, built in memory
                          from the ad vectors of the store version the evaluation used
DIR/ablations.png         only when benchmarks/results/*ablation*.json exist: one bar per arm and metric
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from adslog.workspace import Workspace
from dermcore.artifact import read_json
from dermcore.progress import Progress, no_progress
from embstore.store import embeddings_dir, open_version
from eval.ann_sweep import AnnSweepConfig, ann_sweep
from eval.evaluate import evals_dir, evaluate_day
from eval.plots import (
    plot_ablations,
    plot_ann_sweep,
    plot_auc_by_day,
    plot_embeddings_by_day,
    plot_recall_at_k,
)
from eval.warnings import warning_lines

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
SKIP_KEYS = {"machine", "git_sha", "command", "config", "name", "arm", "description"}


def _f(x: Any, nd: int = 4) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# --- ablation results (format not fixed yet: read whatever arms / metrics a file holds) ---------------------


def _metric_rows(metrics: dict[str, Any]) -> list[tuple[str, float, float | None, float | None]]:
    out: list[tuple[str, float, float | None, float | None]] = []
    for key, v in metrics.items():
        if key in SKIP_KEYS:
            continue
        if _num(v):
            out.append((key, float(v), None, None))
        elif isinstance(v, dict):
            center = next((v[c] for c in ("value", "mean", "diff") if _num(v.get(c))), None)
            if center is not None:
                lo, hi = v.get("lo"), v.get("hi")
                out.append((key, float(center), lo if _num(lo) else None, hi if _num(hi) else None))
            else:
                out += [(f"{key}@{sub}", float(x), None, None) for sub, x in v.items() if _num(x)]
    return out


def ablation_rows(obj: Any, source: str) -> list[dict[str, Any]]:
    """Rows {"source", "arm", "metric", "value", "lo"?, "hi"?} from one ablation results document.

    Accepted shapes: {"arms": {name: {metric: number | {"value"|"mean"|"diff", "lo", "hi"} | {K: number}}}},
    {"arms": [{"name"|"arm": name, ...metrics}]}, the same under "results", or top-level {name: {metrics}}.
    Anything else yields no rows (the report then leaves the figure out)."""
    if not isinstance(obj, dict):
        return []
    arms: Any = obj.get("arms", obj.get("results"))
    if arms is None:
        arms = {k: v for k, v in obj.items() if k not in SKIP_KEYS and isinstance(v, dict)}
    if isinstance(arms, list):
        arms = {
            str(a.get("name", a.get("arm", i))): a.get("metrics", a)
            for i, a in enumerate(arms)
            if isinstance(a, dict)
        }
    if not isinstance(arms, dict):
        return []
    rows = []
    for arm, metrics in arms.items():
        if not isinstance(metrics, dict):
            continue
        for metric, value, lo, hi in _metric_rows(metrics):
            row: dict[str, Any] = {"source": source, "arm": str(arm), "metric": metric, "value": value}
            if lo is not None and hi is not None:
                row |= {"lo": float(lo), "hi": float(hi)}
            rows.append(row)
    return rows


def read_ablations(results_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(results_dir).glob("*ablation*.json")):
        try:
            rows += ablation_rows(json.loads(path.read_text()), path.stem)
        except (OSError, ValueError) as e:
            log.warning("%s: skipped (%s)", path, e)
    return rows


# --- inputs ------------------------------------------------------------------------------------------------


def eval_history(ws: Workspace, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-day eval documents in WORK/evals (what `derm daily` evaluated), with `doc` in place of its day."""
    docs = {}
    if evals_dir(ws).exists():
        for p in evals_dir(ws).glob("day=*.json"):
            d = read_json(p)
            if isinstance(d, dict) and "day" in d:
                docs[int(d["day"])] = d
    docs[int(doc["day"])] = doc
    return [docs[d] for d in sorted(docs)]


def _recall_curve(r: dict[str, Any]) -> dict[str, Any]:
    """`retrieval.recall_curve`, or one rebuilt from the K-keyed maps of an older document."""
    if "recall_curve" in r:
        return dict(r["recall_curve"])
    ks = sorted(r.get("recall_at_k", {}), key=int)
    curve: dict[str, Any] = {"k": [int(k) for k in ks]}
    for name, key in (
        ("ours", "recall_at_k"),
        ("popularity", "popularity_recall_at_k"),
        ("oracle", "oracle_recall_at_k"),
        ("random", "random_recall_at_k"),
    ):
        if key in r:
            curve[name] = [r[key].get(k) for k in ks]
    return curve


def _sweep(
    ws: Workspace, doc: dict[str, Any], cfg: AnnSweepConfig, progress: Progress
) -> dict[str, Any] | None:
    eday = doc.get("embedding_day")
    if eday is None:
        return None
    v = open_version(embeddings_dir(ws, "ctr"), eday)
    ad_ids, ad_vecs, users = v.ids("ad"), v.vectors("ad"), v.vectors("user")
    if len(ad_ids) < 2 or len(users) == 0:
        return None
    return ann_sweep(ad_ids, ad_vecs, users, cfg, progress) | {"embedding_day": eday}


# --- report.md -----------------------------------------------------------------------------------------------


def _retrieval_lines(r: dict[str, Any]) -> list[str]:
    ks = sorted(r.get("recall_at_k", {}), key=int)
    lines = ["| metric | ours | popularity | oracle | random |", "|---|---|---|---|---|"]
    for metric, label in (("recall_at_k", "recall"), ("ndcg_at_k", "NDCG"), ("hit_rate_at_k", "hit rate")):
        for k in ks:
            cells = [r.get(f"{p}{metric}", {}).get(k) for p in ("", "popularity_", "oracle_", "random_")]
            lines.append(f"| {label}@{k} | " + " | ".join(_f(c) for c in cells) + " |")
    for k in ks:
        if "relevance_recall_at_k" in r:
            lines.append(
                f"| overlap with the oracle's top {k} | {_f(r['relevance_recall_at_k'].get(k))} | - | 1 | - |"
            )
    vs = r.get("vs_popularity", {})
    if vs:
        lines += [
            "",
            "Ours - popularity, recall@K, paired bootstrap over users (95 % interval, 1000 replicates):",
            "",
        ]
        for k, b in vs.items():
            lines.append(
                f"- K={k}: {_f(b['diff'])} [{_f(b['lo'])}, {_f(b['hi'])}], p = {_f(b.get('p_value'), 3)}"
            )
    surf = r.get("by_surface", {})
    if surf:
        lines += ["", "| surface | users | " + " | ".join(f"recall@{k} ours / popularity" for k in ks) + " |"]
        lines.append("|---|---|" + "---|" * len(ks))
        for s, v in surf.items():
            cells = [f"{_f(v['recall_at_k'].get(k))} / {_f(v['popularity_recall_at_k'].get(k))}" for k in ks]
            lines.append(f"| {s} | {v['n_users']} | " + " | ".join(cells) + " |")
    return lines


def _ranking_lines(g: dict[str, Any]) -> list[str]:
    if not g:
        return ["No ranker was published before this day."]
    lines = [
        f"{g['n_impressions']} impressions scored by the CTR head. gAUC: impression-weighted mean of per-user "
        "ROC-AUC over users with both a click and a non-click "
        f"({(g.get('gauc_detail') or {}).get('n_groups', '-')} users).",
        "",
        "| metric | ours | oracle | baseline |",
        "|---|---|---|---|",
        f"| ROC-AUC | {_f(g.get('roc_auc'))} | {_f(g.get('oracle_roc_auc'))} | 0.5 (random) |",
        f"| gAUC | {_f(g.get('gauc'))} | {_f(g.get('oracle_gauc'))} | 0.5 (random) |",
        f"| PR-AUC | {_f(g.get('pr_auc'))} | - | {_f(g.get('observed_ctr'))} (random = CTR) |",
        f"| log loss | {_f(g.get('log_loss'))} | {_f(g.get('oracle_log_loss'))} | "
        f"{_f(g.get('constant_log_loss'))} (constant observed CTR) |",
        f"| mean predicted / observed CTR | {_f(g.get('predicted_ctr'))} / {_f(g.get('observed_ctr'))} | - | - |",
    ]
    cal = g.get("calibration")
    if cal and cal.get("buckets"):
        lines += [
            "",
            f"Calibration by predicted-CTR decile (ECE {_f(cal.get('ece'), 5)}):",
            "",
            "| predicted range | impressions | mean predicted | observed |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {_f(b['lo'], 5)} - {_f(b['hi'], 5)} | {b['n']} | {_f(b['predicted'], 5)} | {_f(b['observed'], 5)} |"
            for b in cal["buckets"]
        ]
    surf = g.get("by_surface", {})
    if surf:
        lines += [
            "",
            "| surface | impressions | ROC-AUC | gAUC | PR-AUC | log loss | pred / obs CTR |",
            "|---|---|---|---|---|---|---|",
        ]
        for s, v in surf.items():
            lines.append(
                f"| {s} | {v['n_impressions']} | {_f(v.get('roc_auc'))} (oracle {_f(v.get('oracle_roc_auc'))}) | "
                f"{_f(v.get('gauc'))} | {_f(v.get('pr_auc'))} | {_f(v.get('log_loss'))} | "
                f"{_f(v.get('predicted_ctr'))} / {_f(v.get('observed_ctr'))} |"
            )
    return lines


def _history_lines(docs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| day | ROC-AUC | oracle ROC-AUC | gAUC | recall@K (ours) | user stability (pooled) | user coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in docs:
        g, r = d.get("ranking", {}), d.get("retrieval", {})
        u = d.get("embeddings", {}).get("ctr", {}).get("user") or {}
        rec = ", ".join(
            f"@{k} {_f(v)}" for k, v in sorted(r.get("recall_at_k", {}).items(), key=lambda kv: int(kv[0]))
        )
        lines.append(
            f"| {d['day']} | {_f(g.get('roc_auc'))} | {_f(g.get('oracle_roc_auc'))} | {_f(g.get('gauc'))} | {rec} | "
            f"{_f((u.get('stability') or {}).get('pooled'))} | {_f(u.get('coverage'))} |"
        )
    return lines


def _sweep_lines(sweep: dict[str, Any] | None) -> list[str]:
    if sweep is None:
        return ["No embedding store version before this day: no ANN sweep."]
    lines = [
        f"Built in memory from the {sweep['n_ads']} ad vectors of store version day={sweep['embedding_day']}; "
        f"{sweep['n_queries']} user embeddings as queries; recall@{sweep['k']} against exact search (ties tolerated).",
        "",
        "| index | query parameter | recall | QPS | build s |",
        "|---|---|---|---|---|",
    ]
    for p in sweep["points"]:
        param = "-" if p["param"] is None else f"{p['param']}={p['value']}"
        lines.append(
            f"| {p['backend']} {p['spec']} | {param} | {_f(p['recall'])} | {p['qps']:,.0f} | {p['build_s']:.2f} |"
        )
    lines += [
        "",
        "IVF rows that come back with fewer than k ads (the probed lists hold too few) are completed by exact "
        "search inside the backend, so at the smallest nprobe recall can be higher and QPS lower than at the next.",
    ]
    return lines


def write_report(
    ws: Workspace,
    day: int | None,
    out_dir: str | Path,
    progress: Progress = no_progress,
    doc: dict[str, Any] | None = None,
    device: str = "cpu",
    results_dir: str | Path | None = None,
    sweep_cfg: AnnSweepConfig | None = None,
) -> dict[str, Any]:
    """Write DIR/report.md and its figures for `day` (see the module docstring).

    `doc` is the day's eval document when the caller already has it (else it is computed on `device`);
    `results_dir` is where `*ablation*.json` are looked for (default benchmarks/results of this checkout).
    Returns {"dir", "files" (names written, report.md first), "ann_sweep", "ablation_rows"}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if doc is None:
        doc = evaluate_day(ws, day, progress=progress, device=device)
    day = int(doc["day"])
    docs = eval_history(ws, doc)
    files = [
        plot_recall_at_k(_recall_curve(doc["retrieval"]), day, out / "recall_at_k.png"),
        plot_auc_by_day(docs, out / "auc_by_day.png"),
        plot_embeddings_by_day(docs, out / "embeddings_by_day.png"),
    ]
    sweep = _sweep(ws, doc, sweep_cfg or AnnSweepConfig(), progress)
    if sweep is not None:
        files.append(plot_ann_sweep(sweep, out / "ann_recall_qps.png"))
    rows = read_ablations(Path(results_dir) if results_dir is not None else RESULTS_DIR)
    if rows:
        files.append(plot_ablations(rows, out / "ablations.png"))
    names = {p.name for p in files}

    def fig(name: str, alt: str) -> list[str]:
        return [f"![{alt}]({name})", ""] if name in names else []

    r = doc["retrieval"]
    lines = [
        f"# derm evaluation report: day {day}",
        "",
        f"Day {day} evaluated with the versions published before it (embeddings of day {doc.get('embedding_day')}): "
        f"{r['n_users']} users clicked ({r['n_cold']} answered by the cold-start path), {r.get('n_live_ads', '-')} "
        "ads were live. Random = the exact expectation for a uniformly random top K of the live ads.",
        "",
        *[f"- {line}" for line in warning_lines(doc)],
        "",
        "## Retrieval",
        "",
        *_retrieval_lines(r),
        "",
        *fig("recall_at_k.png", "recall@K of ours, popularity, oracle and random"),
        "## Ranking",
        "",
        *_ranking_lines(doc.get("ranking", {})),
        "",
        "## By day",
        "",
        f"Every day in {evals_dir(ws)} (the days `derm daily` evaluated) and this one.",
        "",
        *_history_lines(docs),
        "",
        *fig("auc_by_day.png", "ranking AUC and calibration by day"),
        *fig("embeddings_by_day.png", "embedding stability and coverage by day"),
        "## ANN recall vs speed",
        "",
        *_sweep_lines(sweep),
        "",
        *fig("ann_recall_qps.png", "ANN recall vs queries per second"),
    ]
    if rows:
        lines += [
            "## Ablations",
            "",
            f"From {sorted({x['source'] for x in rows})}.",
            "",
            *fig("ablations.png", "ablations"),
        ]
    lines += ["## Versions", "", *[f"- {k}: `{v}`" for k, v in doc.get("versions", {}).items()], ""]
    (out / "report.md").write_text("\n".join(lines))
    return {
        "dir": str(out.resolve()),
        "files": ["report.md", *(p.name for p in files)],
        "ann_sweep": sweep,
        "ablation_rows": len(rows),
    }
