"""Choosing the KGE defaults on a validation split (never the benchmark's test day): Adagrad learning rate x
epochs for TransE, TransR and TransRA, one seed, margin loss, uniform negatives, dim 32.

Data: a separate synthetic log (3k users, 2k ads, 8 days x 40k impressions, seed 0); train on graph version
day 6, validate on the new edges of day 7; filtered MRR (`adgraph.evaluate.link_prediction`), popularity beside.
Usage: python benchmarks/kge_tuning.py   (writes benchmarks/results/kge_tuning.json)
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import write_result

from adgraph.evaluate import held_out_edges, link_prediction, popularity_scorer
from adgraph.graph import open_graph, publish_graph
from adgraph.models import ModelKind
from adgraph.train import KGEConfig, train_scratch
from adslog.synth import SynthConfig, generate
from adslog.workspace import Workspace

GRID = ((0.1, 30), (0.03, 10), (0.03, 30), (0.01, 30), (0.01, 60))


def main() -> None:
    torch.set_num_threads(1)
    synth = SynthConfig(n_users=3000, n_ads=2000, n_advertisers=120, impressions_per_day=40_000, n_days=8)
    day = synth.start_day + 5
    tmp = Path(tempfile.mkdtemp(prefix="kge-tune-"))
    t0 = time.perf_counter()
    out: dict[str, Any] = {"train_day": day, "validation_day": day + 1, "runs": []}
    try:
        generate(synth, tmp / "data")
        ws = Workspace.create(tmp / "work", tmp / "data")
        for d in (day, day + 1):
            publish_graph(ws, d)
        train = open_graph(ws, day).edges()
        val = held_out_edges(train, open_graph(ws, day + 1).edges())
        model = None
        for kind in ModelKind:
            for lr, epochs in GRID:
                cfg = KGEConfig(model=kind, lr=lr, epochs=epochs)
                model, stats = train_scratch(cfg, train, day)
                r = link_prediction(model, train, val)
                out["runs"].append(
                    {"model": kind.value, "lr": lr, "epochs": epochs, "mrr": r["mrr"], "hits_at_10": r["hits_at_10"],
                     "clicked_mrr": r["per_relation"]["user_clicked_ad"]["mrr"], "train_seconds": stats["seconds"]}
                )  # fmt: skip
        assert model is not None
        pop = link_prediction(model, train, val, scorer=popularity_scorer(model, train))
        out["popularity"] = {"mrr": pop["mrr"], "hits_at_10": pop["hits_at_10"]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["seconds"] = time.perf_counter() - t0
    print(write_result("kge_tuning", out))


if __name__ == "__main__":
    main()
