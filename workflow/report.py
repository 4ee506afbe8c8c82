"""Human-readable summaries of evaluation documents (report.md and the CLI's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.warnings import warning_lines


def _f(x: Any, nd: int = 4) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def summary_table(doc: dict[str, Any]) -> list[str]:
    """Markdown table rows: recall@K of ours, popularity and the oracle; ranking AUCs."""
    r = doc.get("retrieval", {})
    ks = sorted(r.get("recall_at_k", {}), key=int)
    lines = ["| metric | ours | popularity | oracle |", "|---|---|---|---|"]
    for k in ks:
        lines.append(
            f"| recall@{k} | {_f(r['recall_at_k'].get(k))} | {_f(r.get('popularity_recall_at_k', {}).get(k))} "
            f"| {_f(r.get('oracle_recall_at_k', {}).get(k))} |"
        )
    for k in ks:
        if "relevance_recall_at_k" in r:
            lines.append(f"| overlap with oracle top {k} | {_f(r['relevance_recall_at_k'].get(k))} | - | 1 |")
    g = doc.get("ranking", {})
    lines.append(f"| ranker ROC-AUC (CTR) | {_f(g.get('roc_auc'))} | - | {_f(g.get('oracle_roc_auc'))} |")
    lines.append(f"| ranker PR-AUC (CTR) | {_f(g.get('pr_auc'))} | - | - |")
    sl: dict[str, Any] = doc.get("slate") or {}
    for k in ("k10", "k50") if sl else ():
        v = sl[k]
        lines.append(
            f"| true clicks per user, top {k[1:]}: two-stage / retrieval / served | {_f(v['two_stage'])} / "
            f"{_f(v['retrieval'])} / {_f(v['served'])} | - | {_f(v['oracle'])} |"
        )
    return lines


def write_report_md(path: Path, summary: dict[str, Any]) -> None:
    doc = summary["report"]
    r = doc["retrieval"]
    lines = [
        f"# derm report: day {doc['day']}",
        "",
        f"Evaluated day {doc['day']} with the versions published before it (embeddings of day "
        f"{doc['embedding_day']}). {r['n_users']} users clicked that day ({r['n_cold']} answered by the cold-start "
        f"path); {r.get('n_live_ads', '-')} ads were live.",
        "",
        *summary_table(doc),
        "",
        *[f"- {line}" for line in warning_lines(doc)],
        "",
        "## Versions",
        "",
        *[f"- {k}: `{v}`" for k, v in doc.get("versions", {}).items()],
        "",
        "## Stage seconds",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in summary.get("stage_seconds", {}).items()],
        f"| total | {summary.get('total_seconds', 0):.1f} |",
        "",
    ]
    emb = doc.get("embeddings", {})
    if emb:
        lines += [
            "## Embeddings",
            "",
            "| model | entity | coverage | stability (raw) | stability (pooled) |",
            "|---|---|---|---|---|",
        ]
        for task, ents in emb.items():
            for e, v in ents.items():
                st = v.get("stability") or {}
                lines.append(
                    f"| {task} | {e} | {_f(v.get('coverage'))} | {_f(st.get('raw'))} | {_f(st.get('pooled'))} |"
                )
        lines.append("")

    Path(path).write_text("\n".join(lines))
