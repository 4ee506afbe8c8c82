"""Warnings on an evaluation document: when a figure means little, say so beside it (issue 17).

Each warning is {"code", "message", ...details}; `evaluate_day` puts them in the document's `warnings` list and
the human-readable outputs print them. Codes:

- `stale_versions`: the versions that served the evaluated period are older than it by more than
  `max_version_age` periods (1 is normal: versions of period d - 1 serve period d). Details: `age`, `version_days`.
- `few_positives`: a figure rests on fewer than `min_positives` positives: recall@K / nDCG / hit rate on the
  users who clicked (`n_users`), ROC-AUC / PR-AUC / gAUC on the clicks (and the non-clicks) of the period.
  Details: `figure`, `n`, `value` and `interval`, a distribution-free 95 % interval (Hoeffding: value +-
  sqrt(ln(2 / 0.05) / (2 m)), m = users for a per-user mean in [0, 1], m = min(clicks, non-clicks) for ROC-AUC,
  a two-sample U-statistic; clipped to [0, 1]). Conservative by design: it needs no model of the data, so it
  holds for 1 user or 4 impressions, where a bootstrap interval collapses to a point.
- `k_exceeds_live_items`: K >= the number of live items, so recall@K is the share of clicked items that are
  live (trivially 1.0 when every item is live), not a measure of ranking. Details: `k`, `n_live_ads`.
- `daily_gap` (added by `workflow.cycle.run_day`): the newest versions before the period are more than one
  period old and the periods between hold impressions that never went through the daily cycle. Details:
  `from_day`, `to_day`, `n_periods`, `n_impressions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dermcore.errors import ConfigError

CONFIDENCE = 0.95


@dataclass(frozen=True)
class WarningConfig:
    max_version_age: int = 2  # periods; versions of period d - 1 serving period d are 1 period old
    min_positives: int = 30  # positives (clicked users, clicks) a figure needs before it is trusted

    def __post_init__(self) -> None:
        if self.max_version_age < 1:
            raise ConfigError(f"max_version_age must be >= 1, got {self.max_version_age}")
        if self.min_positives < 1:
            raise ConfigError(f"min_positives must be >= 1, got {self.min_positives}")


def hoeffding_interval(value: float, m: int, confidence: float = CONFIDENCE) -> list[float]:
    """[lo, hi]: a distribution-free `confidence` interval of a mean (or two-sample U-statistic) in [0, 1] over
    m independent units; [0, 1] when m is 0."""
    if m <= 0:
        return [0.0, 1.0]
    half = math.sqrt(math.log(2.0 / (1.0 - confidence)) / (2.0 * m))
    return [round(max(0.0, value - half), 6), round(min(1.0, value + half), 6)]


def eval_warnings(doc: dict[str, Any], cfg: WarningConfig | None = None) -> list[dict[str, Any]]:
    """The warnings of an evaluation document (see the module docstring), in a fixed order."""
    cfg = cfg or WarningConfig()
    out: list[dict[str, Any]] = []
    day = int(doc["day"])
    vdays = {k: v for k, v in (doc.get("version_days") or {}).items() if v is not None}
    if vdays:
        age = day - min(vdays.values())
        if age > cfg.max_version_age:
            out.append(
                {
                    "code": "stale_versions",
                    "message": f"period {day} was scored with versions {age} periods old "
                    f"({', '.join(f'{k} {v}' for k, v in vdays.items())}; more than {cfg.max_version_age}): "
                    "the models never saw the periods between",
                    "age": age,
                    "version_days": vdays,
                }
            )
    r = doc.get("retrieval") or {}
    n_users = int(r.get("n_users", 0))
    if r and n_users < cfg.min_positives:
        for k, v in (r.get("recall_at_k") or {}).items():
            iv = hoeffding_interval(float(v or 0.0), n_users)
            out.append(
                {
                    "code": "few_positives",
                    "figure": f"retrieval.recall_at_k.{k}",
                    "n": n_users,
                    "value": v,
                    "interval": iv,
                    "message": f"recall@{k} = {_f(v)} rests on {n_users} users who clicked (under "
                    f"{cfg.min_positives}); 95 % interval [{iv[0]:.3f}, {iv[1]:.3f}]",
                }
            )
    g = doc.get("ranking") or {}
    if g:
        pos = int(g.get("n_clicks", 0))
        neg = int(g.get("n_impressions", 0)) - pos
        m = min(pos, neg)
        if m < cfg.min_positives:
            v = g.get("roc_auc")
            iv = hoeffding_interval(float(v), m) if v is not None else [0.0, 1.0]
            what = "undefined (one class only)" if v is None else f"{v:.4f}"
            out.append(
                {
                    "code": "few_positives",
                    "figure": "ranking.roc_auc",
                    "n": m,
                    "value": v,
                    "interval": iv,
                    "message": f"ranking ROC-AUC = {what} rests on {pos} clicks and {neg} non-clicks (under "
                    f"{cfg.min_positives} of one); 95 % interval [{iv[0]:.3f}, {iv[1]:.3f}]",
                }
            )
    n_live = r.get("n_live_ads")
    if n_live is not None:
        for k in sorted((r.get("recall_at_k") or {}), key=int):
            if int(k) >= int(n_live):
                out.append(
                    {
                        "code": "k_exceeds_live_items",
                        "k": int(k),
                        "n_live_ads": int(n_live),
                        "message": f"recall@{k} with only {n_live} live items: K >= live items, so it measures "
                        "which clicked items were live, not ranking",
                    }
                )
    return out


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def warning_lines(doc: dict[str, Any]) -> list[str]:
    """Human-readable lines: what the figures rest on, then one line per warning."""
    r, g = doc.get("retrieval") or {}, doc.get("ranking") or {}
    lines = []
    if r:
        lines.append(
            f"retrieval rests on {r.get('n_users', '-')} users who clicked ({r.get('n_clicks', '-')} clicks of "
            f"{r.get('n_impressions', '-')} impressions), {r.get('n_live_ads', '-')} live items; popularity = "
            f"clicks of the {r.get('popularity_window_periods', 7)} periods before"
        )
    if g:
        lines.append(
            f"ranking rests on {g.get('n_impressions', '-')} impressions, {g.get('n_clicks', '-')} clicks, "
            f"{g.get('n_users', '-')} users"
        )
    ws = doc.get("warnings") or []
    lines += [f"WARNING {w['code']}: {w['message']}" for w in ws] if ws else ["warnings: none"]
    return lines
