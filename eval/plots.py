"""Report figures. Each function draws one PNG from plain data (an eval document, per-day documents, a sweep
result), so every figure comes from a file. matplotlib's object API on the Agg canvas: no pyplot state, no
display needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

DPI = 110
STYLE: dict[str, dict[str, Any]] = {
    "ours": {"color": "tab:blue", "marker": "o"},
    "popularity": {"color": "tab:orange", "marker": "s"},
    "oracle": {"color": "tab:green", "marker": "^"},
    "random": {"color": "tab:gray", "marker": "x", "linestyle": "--"},
}


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def plot_recall_at_k(curve: dict[str, Any], day: int, path: Path) -> Path:
    """recall@K vs K for ours, popularity, the oracle (when present) and random, from `retrieval.recall_curve`."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    ks = curve["k"]
    for name in ("ours", "popularity", "oracle", "random"):
        ys = curve.get(name)
        if ys is None:
            continue
        pts = [(k, y) for k, y in zip(ks, ys, strict=True) if y is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **STYLE[name])
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K (ads retrieved per user, log scale)")
    ax.set_ylabel("recall@K (share of the user's clicked ads found)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(title="retrieval", loc="upper left")
    ax.set_title(f"Retrieval recall@K on day {day}\n(ANN over live ads vs baselines)")
    return _save(fig, path)


def plot_auc_by_day(docs: list[dict[str, Any]], path: Path) -> Path:
    """Per evaluated day: ranker ROC-AUC and gAUC beside the oracle's (left), mean predicted vs observed CTR
    (right). `docs` are eval documents, one per day."""
    fig = Figure(figsize=(10, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    days = [d["day"] for d in docs]

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(d["day"], d.get("ranking", {}).get(key)) for d in docs]
        pts = [p for p in pts if p[1] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for key, label, style in (
        ("roc_auc", "ranker ROC-AUC", STYLE["ours"]),
        ("gauc", "ranker gAUC (per user)", {"color": "tab:purple", "marker": "D"}),
        ("oracle_roc_auc", "oracle ROC-AUC", STYLE["oracle"]),
        ("oracle_gauc", "oracle gAUC", {"color": "tab:olive", "marker": "v"}),
    ):
        x, y = series(key)
        if x:
            ax.plot(x, y, label=label, **style)
    ax.axhline(0.5, label="random (0.5)", **{k: v for k, v in STYLE["random"].items() if k != "marker"})
    ax.set_ylim(0.45, 1.0)
    ax.set_xlabel("evaluated day (days since 1970-01-01)")
    ax.set_ylabel("AUC (CTR head)")
    ax.set_title("Ranking AUC by day")
    ax.legend(loc="best", fontsize="small")
    for key, label, style in (
        ("predicted_ctr", "mean predicted CTR", STYLE["ours"]),
        ("observed_ctr", "observed CTR", {"color": "black", "marker": "."}),
    ):
        x, y = series(key)
        if x:
            ax2.plot(x, [100 * v for v in y], label=label, **style)
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("evaluated day (days since 1970-01-01)")
    ax2.set_ylabel("CTR (%)")
    ax2.set_title("Calibration: predicted vs observed CTR")
    ax2.legend(loc="lower left", fontsize="small")
    for a in (ax, ax2):
        a.grid(True, alpha=0.3)
        a.set_xticks(days, [str(d) for d in days], rotation=45)
    return _save(fig, path)


def plot_embeddings_by_day(docs: list[dict[str, Any]], path: Path, task: str = "ctr") -> Path:
    """Per evaluated day, from `embeddings.<task>`: day-over-day stability (mean cosine of an entity's
    embedding with its previous one, raw daily and pooled) and coverage (share of the day's active users / ads
    with an embedding), for users and ads."""
    fig = Figure(figsize=(10, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    days = [d["day"] for d in docs]
    colors = {"user": "tab:blue", "ad": "tab:red"}
    for e in ("user", "ad"):
        for kind, ls, mfc in (("raw", "-", None), ("pooled", "--", "white")):
            pts = [
                (
                    d["day"],
                    ((d.get("embeddings", {}).get(task, {}).get(e) or {}).get("stability") or {}).get(kind),
                )
                for d in docs
            ]
            pts = [p for p in pts if p[1] is not None]
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    color=colors[e],
                    linestyle=ls,
                    marker="o",
                    mfc=mfc,
                    label=f"{e} ({kind})",
                )
        pts = [(d["day"], (d.get("embeddings", {}).get(task, {}).get(e) or {}).get("coverage")) for d in docs]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax2.plot(*zip(*pts, strict=True), color=colors[e], marker="o", label=f"{e}s")
    ax.set_ylim(top=1.0)
    ax.set_ylabel("stability (mean cosine with the previous day)")
    ax.set_title(f"{task.upper()} embedding stability by day")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("coverage (share of active entities embedded)")
    ax2.set_title(f"{task.upper()} embedding coverage by day")
    for a in (ax, ax2):
        a.set_xlabel("evaluated day (embeddings of the day before)")
        a.grid(True, alpha=0.3)
        a.set_xticks(days, [str(d) for d in days], rotation=45)
        a.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_ann_sweep(sweep: dict[str, Any], path: Path) -> Path:
    """Queries per second vs recall@k of each index at each nprobe / ef (labelled), exact search as reference."""
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in sweep["points"]:
        groups.setdefault(f"{p['backend']} {p['spec']}", []).append(p)
    styles: list[dict[str, Any]] = [{"color": "tab:blue", "marker": "o"}, {"color": "tab:red", "marker": "s"}]
    i = 0
    for name, pts in groups.items():
        if pts[0]["param"] is None:
            ax.scatter(
                [p["recall"] for p in pts],
                [p["qps"] for p in pts],
                color="black",
                marker="*",
                s=120,
                label=f"exact ({name})",
                zorder=3,
            )
            continue
        pts = sorted(pts, key=lambda p: p["value"])
        ax.plot(
            [p["recall"] for p in pts],
            [p["qps"] for p in pts],
            label=f"{name} ({pts[0]['param']} sweep)",
            **styles[i % len(styles)],
        )
        for p in pts:
            ax.annotate(
                f"{p['param']}={p['value']}",
                (p["recall"], p["qps"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        i += 1
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{sweep['k']} against exact search")
    ax.set_ylabel("queries per second (log scale)")
    ax.set_title(
        f"ANN recall vs speed: {sweep['n_ads']} ads, {sweep['n_queries']} user queries, dim {sweep['dim']}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_ablations(rows: list[dict[str, Any]], path: Path, max_panels: int = 8) -> Path:
    """Bar charts of ablation results: one panel per (source, metric), one bar per arm, error bars where an
    interval is given. `rows`: [{"source", "arm", "metric", "value", "lo"?, "hi"?}]."""
    panels: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault((r["source"], r["metric"]), []).append(r)
    keys = list(panels)[:max_panels]
    ncol = min(2, len(keys))
    nrow = (len(keys) + ncol - 1) // ncol
    fig = Figure(figsize=(6.0 * ncol, 3.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        pts = panels[key]
        x = list(range(len(pts)))
        vals = [p["value"] for p in pts]
        err = None
        if any("lo" in p and "hi" in p for p in pts):
            err = [
                [p["value"] - p.get("lo", p["value"]) for p in pts],
                [p.get("hi", p["value"]) - p["value"] for p in pts],
            ]
        ax.bar(x, vals, yerr=err, color="tab:blue", capsize=4)
        ax.set_xticks(x, [str(p["arm"]) for p in pts], rotation=30, ha="right")
        ax.set_xlabel("arm")
        ax.set_ylabel(key[1])
        ax.set_title(f"{key[0]}: {key[1]}")
        ax.grid(True, axis="y", alpha=0.3)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    return _save(fig, path)
