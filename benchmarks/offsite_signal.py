"""Issue 14 item 5: does the synthetic log's offsite data carry conversion information that onsite clicks do
not? (`adgraph.offsite.offsite_signal`, oracle-weighted ROC-AUC; see its docstring for every figure.)

Data: the generator's defaults (10k users, 6k ads, 14 days x 100k impressions), seeds 0, 1, 2; history = days
1-10, evaluation = the clicks of days 11-14. Arms: `default` (offsite conversions tilted by the user x
advertiser conversion affinity, `offsite_conv_strength` 1.5), `no_tilt` (the same view-through volume with
strength 0: what exposure alone puts in the offsite history) and `before_issue14` (the generator's earlier
offsite model is gone; the `no_tilt` arm at the old volume 0.003 stands in for "little offsite data, no
conversion information").
Usage: python benchmarks/offsite_signal.py [--quick]   (writes benchmarks/results/offsite_signal.json)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from common import write_result

from adgraph.offsite import offsite_signal
from adslog.dataset import Dataset
from adslog.synth import SynthConfig, generate

SEEDS = (0, 1, 2)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def ms(get: Any) -> dict[str, float]:
        vals = [float(get(r)) for r in runs]
        return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}

    keys = runs[0]["oracle_roc_auc"].keys()
    return {
        "oracle_roc_auc": {k: ms(lambda r, k=k: r["oracle_roc_auc"][k]) for k in keys},
        "offsite_within_click_strata_oracle_roc_auc": ms(
            lambda r: r["within_click_strata"]["offsite_oracle_roc_auc"]
        ),
        "share_with_offsite_history": ms(lambda r: r["share_with_offsite_history"]),
        "p_conv_with_offsite_history": ms(lambda r: r["with_vs_without_offsite"]["p_conv"]["with"]),
        "p_conv_without_offsite_history": ms(lambda r: r["with_vs_without_offsite"]["p_conv"]["without"]),
        "conversion_specific_term_gap": ms(
            lambda r: (
                r["with_vs_without_offsite"]["conversion_specific_logit_term"]["with"]
                - r["with_vs_without_offsite"]["conversion_specific_logit_term"]["without"]
            )
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a small log (2k users, 30k impressions a day)")
    args = ap.parse_args()
    base = SynthConfig()
    if args.quick:
        base = replace(base, n_users=2000, n_ads=1500, n_advertisers=100, impressions_per_day=30_000)
    arms = {
        "default": base,
        "no_tilt": replace(base, offsite_conv_strength=0.0),
        "before_issue14": replace(base, offsite_conv_strength=0.0, offsite_per_impression=0.003),
    }
    first_eval = base.start_day + base.n_days - 4
    out: dict[str, Any] = {"eval_days": [first_eval, base.last_day], "seeds": list(SEEDS), "arms": {}}
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="offsite-"))
    try:
        for arm, cfg in arms.items():
            runs = []
            for seed in SEEDS:
                path = tmp / f"{arm}-{seed}"
                generate(replace(cfg, seed=seed), path)
                runs.append(offsite_signal(Dataset.open(path), first_eval))
                shutil.rmtree(path)
            out["arms"][arm] = {"config": asdict(cfg), "summary": _summary(runs), "runs": runs}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["seconds"] = time.perf_counter() - t0
    out["quick"] = args.quick
    print(write_result("offsite_signal", out))


if __name__ == "__main__":
    main()
