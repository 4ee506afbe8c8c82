"""KGE entity vectors as an embedding store family (issue 14, item 3): `WORK/embeddings/kge-<model>/day=<D>/`.

Store version D holds the vectors of KGE version D (`adgraph.snapshot`, trained on graph version D: events up to
the end of day D), so, like every store family, it serves day D + 1 and a reader of day d takes the newest
version before d (`Workspace.version_before`). It goes through the one store path (`embstore.store.publish_day`):
aggregation into the pool, TTL, the finite / unit-norm and coverage gates, immutable versions, LATEST, rollback.
Entities: users, ads and advertisers (each node type the KGE model holds; categories are not served).

Norm rule: the store serves unit-norm vectors only, and KGE vectors are published normalised (direction kept,
norm dropped). The KGE updates clamp entity norms to at most 1 (`adgraph.models.clamp_norm`), but the norms are
spread below that bound: on kge_ranker.json's synthetic graph (TransRA, day 20010) users' norms have median
0.63 (1 % quantile 0.23) and only 13 % of users, 7 % of ads and no advertiser sit at the clamp; the manifest's
`kge_norms` records min / mean / max per entity. Why normalise anyway: every store invariant the other
families rely on (the unit-norm gate that catches a broken export, aggregation and float16 storage that
re-normalise, the index) holds unchanged, and the ranker's consumers want one scale (the attention block's dot
products, the fine-tuned tables, which may re-learn a norm). What dropping the norm costs downstream was not
measured; the alternative is a per-family rule (norms in (0, 1]) through the gate, aggregation and float16 paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adgraph.graph import GraphConfig, NodeType
from adgraph.models import ModelKind
from adgraph.snapshot import KGEVersion, kge_dir
from adgraph.train import KGEConfig
from adslog.dataset import Dataset
from adslog.sequences import AdvertiserMap
from adslog.workspace import Workspace, version_name
from dermcore.errors import ConfigError, DataError
from embstore.aggregate import AggregationConfig, Heuristic
from embstore.store import StoreGates, StoreVersion, embeddings_dir, open_version, publish_day

log = logging.getLogger(__name__)

KGE_ENTITIES = ("user", "ad", "advertiser")
FAMILY_PREFIX = "kge-"


def kge_family(model: ModelKind | str) -> str:
    """The store family (task directory name) of a KGE model: `kge-transra`, `kge-transr`, `kge-transe`."""
    return FAMILY_PREFIX + ModelKind(model).value


def is_kge_family(task: str) -> bool:
    return task.startswith(FAMILY_PREFIX) and task[len(FAMILY_PREFIX) :] in {m.value for m in ModelKind}


@dataclass(frozen=True)
class KGECycleConfig:
    """The daily cycle's KGE stage (`CycleConfig.kge`): with `enabled`, each day d builds graph version d
    (point-in-time), trains KGE version d (from scratch the first time, then one increment a day) and publishes
    store version d of family `kge-<model>`. `aggregation`: how the family's pool combines daily vectors
    (default acc: the increments stay in one space, so the newest vector is the best one)."""

    enabled: bool = False
    model: KGEConfig = field(default_factory=KGEConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    aggregation: AggregationConfig = field(default_factory=lambda: AggregationConfig(Heuristic.ACC))

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"kge.enabled must be true or false, got {self.enabled!r}")

    @property
    def family(self) -> str:
        return kge_family(self.model.model)

    def to_json(self) -> dict[str, Any]:
        a = self.aggregation
        return {
            "enabled": self.enabled,
            "model": self.model.to_json(),
            "graph": self.graph.to_json(),
            "aggregation": {"heuristic": a.heuristic.value, "weight": a.weight, "ttl_days": a.ttl_days},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KGECycleConfig:
        a = d.get("aggregation") or {}
        return cls(
            enabled=d.get("enabled", False),
            model=KGEConfig.from_json(d["model"]) if "model" in d else KGEConfig(),
            graph=GraphConfig.from_json(d["graph"]) if "graph" in d else GraphConfig(),
            aggregation=AggregationConfig(
                Heuristic(a.get("heuristic", "acc")), float(a.get("weight", 0.8)), int(a.get("ttl_days", 90))
            ),
        )


def _active(ds: Dataset, day: int) -> dict[str, np.ndarray]:
    """Entities active on `day` (for the store's coverage figure and gate): its users, ads and their advertisers."""
    if not (ds.first_day <= day <= ds.last_day):
        return {e: np.zeros(0, np.int64) for e in KGE_ENTITIES}
    imp = ds.impressions(day, ["user_id", "ad_id"])
    ads = np.unique(imp.column("ad_id").to_numpy())
    adv = AdvertiserMap.from_dataset(ds)(ads)
    return {
        "user": np.unique(imp.column("user_id").to_numpy()),
        "ad": ads,
        "advertiser": np.unique(adv[adv >= 0]),
    }


def publish_kge_family(
    ws: Workspace,
    day: int,
    model: ModelKind | str = ModelKind.TRANSRA,
    aggregation: AggregationConfig | None = None,
    gates: StoreGates | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Publish store version `day` of family `kge-<model>` from KGE version `day` (which must be published:
    `derm kge train --day D`); a published version is a no-op unless `overwrite`. The KGE version is opened
    and validated first (checksums, shapes, finiteness, the anchor's identity): a corrupt one is a DataError and
    nothing is published. Returns the store manifest."""
    family = kge_family(model)
    sdir = embeddings_dir(ws, family)
    if (sdir / version_name(day) / "manifest.json").is_file() and not overwrite:
        return open_version(sdir, day).manifest
    kdir = kge_dir(ws, model) / version_name(day)
    if not (kdir / "manifest.json").is_file():
        raise DataError(kdir, f"kge version not published (run `derm kge train --day {day}` first)")
    kv = KGEVersion(kdir)
    daily: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    norms: dict[str, dict[str, float]] = {}
    for e in KGE_ENTITIES:
        t = NodeType(e)
        if t not in kv.model.index.types:
            continue
        ids = kv.model.index.ids[t]
        vecs, _ = kv.lookup(t, ids)
        n = np.linalg.norm(vecs, axis=1)
        if len(n):
            norms[e] = {"min": float(n.min()), "mean": float(n.mean()), "max": float(n.max())}
        daily[e] = (ids, (vecs / np.maximum(n, 1e-12)[:, None]).astype(np.float32))
    if "user" not in daily or "ad" not in daily:
        raise DataError(kdir, "kge version holds no users or no ads: nothing a ranker could read")
    agg = aggregation or AggregationConfig(Heuristic.ACC)
    prev_day = ws.version_before(sdir, day)
    previous: StoreVersion | None = open_version(sdir, prev_day) if prev_day is not None else None
    model_manifest = {
        "dim": kv.manifest["dim"],
        "lineage": kv.lineage,
        "model_version": kv.version,
        "artifact_id": kv.manifest["artifact_id"],
    }
    active = _active(ws.dataset(), day)
    m = publish_day(
        sdir,
        family,
        day,
        model_manifest,
        daily,
        previous,
        {e: agg for e in daily},
        {e: active[e] for e in daily},
        overwrite=overwrite,
        gates=gates,
        extra={
            "kge_model": kv.manifest["model"],
            "kge_norms": norms,
            "normalisation": "unit (kge norms <= 1)",
        },
    )
    log.info("kge family %s version %d published from %s", family, day, kv.version)
    return m
