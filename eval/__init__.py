"""eval: offline evaluation of the whole system.

Modules (imported on use: `evaluate` and `report` pull in torch and the index backends):
    metrics     recall / NDCG / hit rate @K, random baselines, ROC-AUC, PR-AUC, gAUC, log loss, calibration,
                ANN recall against exact search, per-surface breakdowns
    bootstrap   paired-bootstrap confidence intervals for "A beats B"
    protocols   the Gowalla full-ranking protocol
    evaluate    `derm eval`: the time-split evaluation of one day
    ann_sweep   ANN recall vs QPS over real ad vectors
    plots       report figures (matplotlib, Agg)
    report      `derm eval --report DIR`: report.md and its figures
"""

__all__ = ["ann_sweep", "bootstrap", "evaluate", "metrics", "plots", "protocols", "report"]
