"""KGE inputs of the ranker (issue 14, item 4): what `RankerConfig.kge_family` adds to a batch, point-in-time.

For impressions of day d, everything comes from the KGE store family version before d (`Workspace.version_before`
on `WORK/embeddings/kge-<model>/`, the vectors `adgraph.family.publish_kge_family` published) and from the graph
version of the same day (`WORK/graph/day=<D>`, events before the end of D < d), never from day d itself:

    kge_<entity>          float32 (n, dim)  frozen KGE vector of the row's user / ad / ad's advertiser (0: unknown)
    kge_<entity>_found    float32 (n,)      1 where the store version holds the entity
    kge_<entity>_id       int64 (n,)        the entity's id (the finetuned ID tables look it up themselves)
    kge_nb_ad_id          int64 (n, L)      the user's graph neighbour ads (clicked or converted onsite), newest
                                            first, -1 padded
    kge_nb_advertiser_id  int64 (n, L)      the user's offsite-converted advertisers, newest first, -1 padded
    kge_score_<relation>  float32 (n,)      f_r(user, candidate) of the KGE model version the store version was
                                            published from (`adgraph.models.KGEModel.relation_scores`: the
                                            model's own vectors, relation vector and projection; tail = the
                                            ad, or its advertiser for user_converted_offsite_advertiser)
    kge_score_<relation>_found  float32 (n,)  1 where the model holds the user, the tail and the relation

Why relation scores beside the vectors: the store serves unit-norm entity vectors only (`adgraph.family`), and
a TransR / TransRA relation is a projection plus a translation; a ranker could learn that geometry from the
vectors only with far more rows than the CVR head gets (clicks). The score is the KGE model's own answer to
"does this user convert with this advertiser", one number a linear model can weigh (`RankerConfig.kge_scores`).
The KGE model version must be the one behind the store version (same day, artifact id and lineage); another is
a VersionMismatchError.

`KGELookup.used` / `lineages` name the store versions read; a ranker records them (`kge_versions`,
`kge_lineages`) and a later lookup for it refuses a store version of another lineage (VersionMismatchError),
as `ranking.train.DermLookup` does for the DERM families.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adgraph.graph import GraphVersion, Relation, graph_dir
from adgraph.models import KGEModel, ModelKind
from adgraph.snapshot import KGEVersion, kge_dir
from adslog.dataset import Dataset
from adslog.sequences import AdvertiserMap
from adslog.workspace import Workspace, version_name
from dermcore.errors import DataError, VersionMismatchError
from dermfeatures.batches import ImpressionArrays
from embstore.store import StoreVersion, embeddings_dir, open_version

KGE_INPUTS = ("user", "ad", "advertiser")
_AD_RELATIONS = (Relation.USER_CLICKED_AD.value, Relation.USER_CONVERTED_AD.value)
_ADV_RELATIONS = (Relation.USER_CONVERTED_OFFSITE_ADVERTISER.value,)


class Neighbours:
    """The graph neighbours of users in one graph version: per user, tails of the given relations, newest
    (largest last_ts) first, one entry per distinct tail."""

    def __init__(self, graph: GraphVersion, relations: tuple[str, ...]) -> None:
        e = graph.edges()
        e = e.filter(pc.is_in(e.column("relation"), value_set=pa.array(relations)))
        head = e.column("head_id").to_numpy().astype(np.int64)
        tail = e.column("tail_id").to_numpy().astype(np.int64)
        ts = e.column("last_ts").to_numpy().astype(np.int64)
        # one entry per (user, tail): the newest of its relations
        order = np.lexsort((-ts, tail, head))
        head, tail, ts = head[order], tail[order], ts[order]
        first = np.r_[True, (head[1:] != head[:-1]) | (tail[1:] != tail[:-1])][: len(head)]
        head, tail, ts = head[first], tail[first], ts[first]
        order = np.lexsort((-ts, head))
        self.head, self.tail = head[order], tail[order]

    def matrix(self, users: np.ndarray, length: int) -> np.ndarray:
        """int64 (n, length): each user's newest `length` neighbours, -1 padded."""
        users = np.asarray(users, np.int64)
        lo = np.searchsorted(self.head, users, side="left")
        cnt = np.minimum(np.searchsorted(self.head, users, side="right") - lo, length)
        out = np.full((len(users), length), -1, np.int64)
        j = np.arange(length)
        take = j[None, :] < cnt[:, None]
        out[take] = self.tail[(lo[:, None] + j[None, :])[take]]
        return out


class KGELookup:
    """KGE features of impressions, point-in-time (module docstring). `ranker`: the manifest of the ranker the
    features are for; its recorded `kge_lineages` are enforced."""

    def __init__(
        self,
        ws: Workspace,
        ds: Dataset,
        family: str,
        inputs: tuple[str, ...],
        neighbours: int = 0,
        ranker: dict[str, Any] | None = None,
        scores: tuple[str, ...] = (),
    ) -> None:
        self.ws, self.family, self.inputs, self.n_neighbours = ws, family, inputs, neighbours
        self.scores = tuple(Relation(r) for r in scores)
        self._models: dict[int, KGEModel] = {}
        self.dir = embeddings_dir(ws, family)
        self.adv_of = AdvertiserMap.from_dataset(ds)
        self.used: set[str] = set()
        self.lineages: set[str] = set()
        self._expect = set((ranker or {}).get("kge_lineages") or [])
        self._ranker = ranker
        self._versions: dict[int, StoreVersion | None] = {}
        self._graphs: dict[int, tuple[Neighbours, Neighbours]] = {}

    def version(self, day: int) -> StoreVersion | None:
        """The family's store version serving `day` (the newest before it), lineage-checked; None: none yet."""
        if day not in self._versions:
            d = self.ws.version_before(self.dir, day)
            v = None if d is None else open_version(self.dir, d)
            if v is not None and self._expect and v.lineage not in self._expect:
                raise VersionMismatchError(
                    f"{v.dir}: KGE lineage {v.lineage[:8]}, but the ranker of day "
                    f"{(self._ranker or {}).get('day')} was trained on KGE lineage "
                    f"{', '.join(sorted(x[:8] for x in self._expect))}: retrain the ranker from scratch "
                    "(`derm ranker train`) or roll back (`derm rollback`)"
                )
            if v is not None:
                self.lineages.add(v.lineage)
            self._versions[day] = v
        return self._versions[day]

    def _graph(self, day: int) -> tuple[Neighbours, Neighbours]:
        if day not in self._graphs:
            gdir = graph_dir(self.ws) / version_name(day)
            if not (gdir / "manifest.json").is_file():
                raise DataError(gdir, f"graph version {day} not published: the KGE attention reads it")
            g = GraphVersion(gdir)
            self._graphs[day] = (Neighbours(g, _AD_RELATIONS), Neighbours(g, _ADV_RELATIONS))
        return self._graphs[day]

    def model(self, v: StoreVersion) -> KGEModel:
        """The KGE model version store version `v` was published from (same day, artifact id, lineage)."""
        if v.day not in self._models:
            kind = ModelKind(self.family.removeprefix("kge-"))
            kdir = kge_dir(self.ws, kind) / version_name(v.day)
            if not (kdir / "manifest.json").is_file():
                raise DataError(
                    kdir, f"KGE model version {v.day} not published: the KGE relation scores read it"
                )
            kv = KGEVersion(kdir)
            if kv.manifest["artifact_id"] != v.manifest.get("model_artifact") or kv.lineage != v.lineage:
                raise VersionMismatchError(
                    f"{kdir}: KGE model {kv.version} (lineage {kv.lineage[:8]}) is not the one store version "
                    f"{v.dir} was published from ({v.manifest.get('model_version')}, lineage {v.lineage[:8]})"
                )
            self._models[v.day] = kv.model
        return self._models[v.day]

    def score_features(self, a: ImpressionArrays) -> dict[str, np.ndarray]:
        """`kge_score_<relation>` and `kge_score_<relation>_found` (module docstring) for impressions `a`."""
        n = len(a)
        out: dict[str, np.ndarray] = {}
        for r in self.scores:
            out[f"kge_score_{r.value}"] = np.zeros(n, np.float32)
            out[f"kge_score_{r.value}_found"] = np.zeros(n, np.float32)
        if not self.scores:
            return out
        advertiser = self.adv_of(a.ad_id)
        for day in np.unique(a.day):
            v = self.version(int(day))
            if v is None:
                continue
            self.used.add(v.version)
            m = self.model(v)
            rows = np.flatnonzero(a.day == day)
            for r in self.scores:
                tail = advertiser if r is Relation.USER_CONVERTED_OFFSITE_ADVERTISER else a.ad_id
                s, f = m.relation_scores(r, a.user_id[rows], tail[rows])
                out[f"kge_score_{r.value}"][rows] = s
                out[f"kge_score_{r.value}_found"][rows] = f
        return out

    def features(self, a: ImpressionArrays, dim: int) -> dict[str, np.ndarray]:
        """The arrays of the module docstring for impressions `a`."""
        n, L = len(a), self.n_neighbours
        ids = {"user": a.user_id, "ad": a.ad_id, "advertiser": self.adv_of(a.ad_id)}
        out: dict[str, np.ndarray] = self.score_features(a)
        for e in self.inputs:
            out[f"kge_{e}"] = np.zeros((n, dim), np.float32)
            out[f"kge_{e}_found"] = np.zeros(n, np.float32)
            out[f"kge_{e}_id"] = ids[e].astype(np.int64)
        if L:
            out["kge_nb_ad_id"] = np.full((n, L), -1, np.int64)
            out["kge_nb_advertiser_id"] = np.full((n, L), -1, np.int64)
        for day in np.unique(a.day):
            v = self.version(int(day))
            if v is None:
                continue
            if int(v.manifest["dim"]) != dim:
                raise DataError(v.dir, f"KGE store dim {v.manifest['dim']} but the ranker reads dim {dim}")
            self.used.add(v.version)
            rows = np.flatnonzero(a.day == day)
            for e in self.inputs:
                if e not in (v.manifest.get("entities") or []):
                    continue
                vv, ff = v.lookup(e, ids[e][rows])
                out[f"kge_{e}"][rows], out[f"kge_{e}_found"][rows] = vv, ff
            if L:
                ad_nb, adv_nb = self._graph(v.day)
                out["kge_nb_ad_id"][rows] = ad_nb.matrix(a.user_id[rows], L)
                out["kge_nb_advertiser_id"][rows] = adv_nb.matrix(a.user_id[rows], L)
        return out


def kge_dim(ws: Workspace, family: str | None) -> int:
    """The dim of the family's newest store version (32, the KGE default, when none is published)."""
    if family is None:
        return 0
    d = ws.latest_day(embeddings_dir(ws, family))
    return 32 if d is None else int(open_version(embeddings_dir(ws, family), d).manifest["dim"])
