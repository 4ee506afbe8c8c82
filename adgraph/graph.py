"""The onsite-offsite graph: one Parquet edge table per day, built point-in-time from the ads log.

    WORK/graph/day=<D>/manifest.json     kind "kge_graph": day, serves_day, cutoff_ts, window, dataset, config,
                                          per-relation counts, relations absent from the source and why
    WORK/graph/day=<D>/edges.parquet     head_type, head_id int64, relation, tail_type, tail_id int64,
                                          count int64, last_ts int64; sorted by (relation, head_id, tail_id)

Version `day=D` follows the workspace's naming: it holds the events of the window's days up to and including
day D, every one with a timestamp strictly before `cutoff_ts = (D + 1) * 86400`, and serves day D + 1. So the
graph a model reads for day d (version d - 1) never holds an event at or after the start of d. A click's
conversion enters at its own `conversion_ts`: a click of day D that converts on day D + 1 is absent from D.

Relations (head type -> tail type) and where they come from:

    user_clicked_ad                     user -> ad          impressions with click = 1, at ts
    user_converted_ad                   user -> ad          impressions with conversion = 1, at conversion_ts
    user_converted_offsite_advertiser   user -> advertiser  the optional `offsite_conversions` table, at ts
    ad_of_advertiser                    ad -> advertiser    ads.advertiser_id, for ads known by the cutoff
    ad_in_category                      ad -> category      ads.category, for ads known by the cutoff

A relation the source cannot supply is absent (recorded in the manifest under `absent` with the reason): an
import without conversions, without offsite data, or whose `advertiser_id` merely repeats `ad_id`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adslog.dataset import Dataset
from adslog.workspace import Workspace, version_day, version_name
from dermcore.artifact import (
    get_latest,
    make_manifest,
    publishing,
    read_manifest,
    set_latest,
    write_json_atomic,
)
from dermcore.errors import ConfigError, DataError

log = logging.getLogger(__name__)

GRAPH_KIND = "kge_graph"
GRAPH_SCHEMA_VERSION = 1
EDGES_FILE = "edges.parquet"
SECONDS_PER_DAY = 86400


class NodeType(StrEnum):
    USER = "user"
    AD = "ad"
    ADVERTISER = "advertiser"
    CATEGORY = "category"


class Relation(StrEnum):
    USER_CLICKED_AD = "user_clicked_ad"
    USER_CONVERTED_AD = "user_converted_ad"
    USER_CONVERTED_OFFSITE_ADVERTISER = "user_converted_offsite_advertiser"
    AD_OF_ADVERTISER = "ad_of_advertiser"
    AD_IN_CATEGORY = "ad_in_category"


#: relation -> (head type, tail type)
RELATION_TYPES: dict[Relation, tuple[NodeType, NodeType]] = {
    Relation.USER_CLICKED_AD: (NodeType.USER, NodeType.AD),
    Relation.USER_CONVERTED_AD: (NodeType.USER, NodeType.AD),
    Relation.USER_CONVERTED_OFFSITE_ADVERTISER: (NodeType.USER, NodeType.ADVERTISER),
    Relation.AD_OF_ADVERTISER: (NodeType.AD, NodeType.ADVERTISER),
    Relation.AD_IN_CATEGORY: (NodeType.AD, NodeType.CATEGORY),
}

EDGE_SCHEMA = pa.schema(
    [
        pa.field("head_type", pa.string()),
        pa.field("head_id", pa.int64()),
        pa.field("relation", pa.string()),
        pa.field("tail_type", pa.string()),
        pa.field("tail_id", pa.int64()),
        pa.field("count", pa.int64()),
        pa.field("last_ts", pa.int64()),
    ]
)


@dataclass(frozen=True)
class GraphConfig:
    """What goes into a day's graph.

    window_days: days of impressions (and offsite conversions) ending at the version's day; None = every day
    since the dataset's first. relations: which relations to build (any the source lacks are simply absent).
    min_count: an interaction edge needs at least this many events in the window (attribute edges have 1).
    """

    window_days: int | None = None
    relations: tuple[Relation, ...] = tuple(Relation)
    min_count: int = 1

    def __post_init__(self) -> None:
        if self.window_days is not None and (
            not isinstance(self.window_days, int)
            or isinstance(self.window_days, bool)
            or self.window_days < 1
        ):
            raise ConfigError(
                f"GraphConfig.window_days must be None or an integer >= 1, got {self.window_days!r}"
            )
        if not self.relations:
            raise ConfigError("GraphConfig.relations must name at least one relation")
        try:
            rels = tuple(Relation(r) for r in self.relations)
        except ValueError:
            raise ConfigError(
                f"GraphConfig.relations: unknown relation in {list(self.relations)} "
                f"(known: {[r.value for r in Relation]})"
            ) from None
        if len(set(rels)) != len(rels):
            raise ConfigError("GraphConfig.relations has duplicates")
        object.__setattr__(self, "relations", rels)
        if not isinstance(self.min_count, int) or self.min_count < 1:
            raise ConfigError(f"GraphConfig.min_count must be an integer >= 1, got {self.min_count!r}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["relations"] = [r.value for r in self.relations]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GraphConfig:
        return cls(
            window_days=d.get("window_days"),
            relations=tuple(Relation(r) for r in d.get("relations", [r.value for r in Relation])),
            min_count=int(d.get("min_count", 1)),
        )


def _edges(rel: Relation, head: np.ndarray, tail: np.ndarray, ts: np.ndarray, min_count: int = 1) -> pa.Table:
    """Aggregate events (head int64[n], tail int64[n], ts int64[n]) into edges with count and last_ts."""
    ht, tt = RELATION_TYPES[rel]
    t = pa.table({"head_id": pa.array(head, pa.int64()), "tail_id": pa.array(tail, pa.int64()), "ts": ts})
    g = t.group_by(["head_id", "tail_id"]).aggregate([("ts", "count"), ("ts", "max")])
    g = g.filter(pc.greater_equal(g.column("ts_count"), min_count))
    n = g.num_rows
    return pa.table(
        {
            "head_type": pa.array([ht.value] * n, pa.string()),
            "head_id": g.column("head_id"),
            "relation": pa.array([rel.value] * n, pa.string()),
            "tail_type": pa.array([tt.value] * n, pa.string()),
            "tail_id": g.column("tail_id"),
            "count": g.column("ts_count").cast(pa.int64()),
            "last_ts": g.column("ts_max").cast(pa.int64()),
        },
        schema=EDGE_SCHEMA,
    )


def window_first_day(ds: Dataset, day: int, cfg: GraphConfig) -> int:
    if cfg.window_days is None:
        return ds.first_day
    return max(ds.first_day, int(day) - cfg.window_days + 1)


def build_edges(ds: Dataset, day: int, cfg: GraphConfig) -> tuple[pa.Table, dict[str, Any]]:
    """The edge table of version `day` (events of the window's days with ts < (day + 1) * 86400).

    Returns (edges, info) where info = {"window_first_day", "cutoff_ts", "counts": {relation: {"edges",
    "events"}}, "absent": {relation: reason}, "nodes": {type: n}}."""
    ds.check_day(day)
    lo = window_first_day(ds, day, cfg)
    lo_ts, cutoff = lo * SECONDS_PER_DAY, (int(day) + 1) * SECONDS_PER_DAY
    want = set(cfg.relations)
    imp_cols = ds.columns["impressions"]
    ad_cols = ds.columns["ads"]
    absent: dict[str, str] = {}
    parts: list[pa.Table] = []
    counts: dict[str, dict[str, int]] = {}

    def add(rel: Relation, head: np.ndarray, tail: np.ndarray, ts: np.ndarray, min_count: int) -> None:
        keep = (ts >= lo_ts) & (ts < cutoff) if rel not in _ATTRIBUTE else ts < cutoff
        e = _edges(rel, head[keep], tail[keep], ts[keep], min_count)
        counts[rel.value] = {"edges": e.num_rows, "events": int(keep.sum())}
        parts.append(e)

    conv_ok = "conversion" in imp_cols and "conversion_ts" in imp_cols
    cols = ["ts", "user_id", "ad_id", "click"] + (["conversion", "conversion_ts"] if conv_ok else [])
    # one day at a time, keeping only clicked rows: a long window never holds every impression in memory
    clicked_parts = [
        (t := ds.impressions(d, cols)).filter(pc.equal(t.column("click"), 1)) for d in range(lo, int(day) + 1)
    ]
    clicked = pa.concat_tables(clicked_parts) if clicked_parts else None
    if Relation.USER_CLICKED_AD in want and clicked is not None:
        add(
            Relation.USER_CLICKED_AD,
            clicked.column("user_id").to_numpy(),
            clicked.column("ad_id").to_numpy(),
            clicked.column("ts").to_numpy(),
            cfg.min_count,
        )
    if Relation.USER_CONVERTED_AD in want:
        if not conv_ok:
            absent[Relation.USER_CONVERTED_AD.value] = (
                "the impressions have no conversion / conversion_ts columns"
            )
        elif clicked is not None:
            conv = clicked.filter(pc.equal(clicked.column("conversion"), 1))
            cts = conv.column("conversion_ts").to_numpy()
            ok = cts >= 0  # -1 = none; a conversion at or after the cutoff is not known yet (filtered in add)
            add(
                Relation.USER_CONVERTED_AD,
                conv.column("user_id").to_numpy()[ok],
                conv.column("ad_id").to_numpy()[ok],
                cts[ok],
                cfg.min_count,
            )
    if Relation.USER_CONVERTED_OFFSITE_ADVERTISER in want:
        if not ds.has_table("offsite_conversions"):
            absent[Relation.USER_CONVERTED_OFFSITE_ADVERTISER.value] = (
                "the dataset has no offsite_conversions table"
            )
        else:
            off = ds.table("offsite_conversions", ["user_id", "advertiser_id", "ts"])
            add(
                Relation.USER_CONVERTED_OFFSITE_ADVERTISER,
                off.column("user_id").to_numpy(),
                off.column("advertiser_id").to_numpy(),
                off.column("ts").to_numpy(),
                cfg.min_count,
            )
    attr = [r for r in (Relation.AD_OF_ADVERTISER, Relation.AD_IN_CATEGORY) if r in want]
    if attr:
        known_ids, known_ts = _known_ads(ds, lo, int(day))
        ads = ds.ads(["ad_id"] + [c for c in ("advertiser_id", "category") if c in ad_cols])
        a_ids = ads.column("ad_id").to_numpy()
        pos = np.searchsorted(known_ids, a_ids).clip(0, max(len(known_ids) - 1, 0))
        is_known = (known_ids[pos] == a_ids) if len(known_ids) else np.zeros(len(a_ids), bool)
        for rel, col in ((Relation.AD_OF_ADVERTISER, "advertiser_id"), (Relation.AD_IN_CATEGORY, "category")):
            if rel not in want:
                continue
            if col not in ad_cols:
                absent[rel.value] = f"the ads table has no {col!r} column"
                continue
            vals = ads.column(col).to_numpy().astype(np.int64)
            if rel is Relation.AD_OF_ADVERTISER and len(vals) and np.array_equal(vals, a_ids):
                absent[rel.value] = (
                    "advertiser_id equals ad_id for every ad (a stand-in, no advertiser in the source)"
                )
                continue
            add(rel, a_ids[is_known], vals[is_known], known_ts[pos[is_known]], 1)
    edges = pa.concat_tables(parts) if parts else EDGE_SCHEMA.empty_table()
    edges = edges.sort_by([("relation", "ascending"), ("head_id", "ascending"), ("tail_id", "ascending")])
    nodes: dict[str, int] = {}
    for nt in NodeType:
        ids = [
            edges.filter(pc.equal(edges.column(f"{side}_type"), nt.value)).column(f"{side}_id").to_numpy()
            for side in ("head", "tail")
        ]
        n = len(np.unique(np.concatenate(ids))) if ids else 0
        if n:
            nodes[nt.value] = n
    for r in cfg.relations:
        if r.value not in counts and r.value not in absent:
            counts[r.value] = {"edges": 0, "events": 0}
    info = {"window_first_day": lo, "cutoff_ts": cutoff, "counts": counts, "absent": absent, "nodes": nodes}
    return edges, info


# attribute edges carry the time the ad became known; the window does not drop an ad's advertiser or category
_ATTRIBUTE = (Relation.AD_OF_ADVERTISER, Relation.AD_IN_CATEGORY)


def _known_ads(ds: Dataset, lo: int, day: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted int64 ad ids known by the end of `day`, int64 ts each became known). With a schedule
    (first_day / last_day) an ad is known from its first live day when its schedule overlaps the window;
    without one, from its first impression in the window."""
    ad_cols = ds.columns["ads"]
    if "first_day" in ad_cols and "last_day" in ad_cols:
        t = ds.ads(["ad_id", "first_day", "last_day"])
        first = t.column("first_day").to_numpy().astype(np.int64)
        last = t.column("last_day").to_numpy().astype(np.int64)
        ids = t.column("ad_id").to_numpy()
        keep = (first <= day) & (last >= lo)
        order = np.argsort(ids[keep])
        return ids[keep][order].astype(np.int64), (first[keep][order] * SECONDS_PER_DAY)
    seen = [ds.impressions(d, ["ad_id", "ts"]) for d in range(lo, day + 1)]
    if not seen:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = pa.concat_tables(seen).group_by("ad_id").aggregate([("ts", "min")])
    ids = t.column("ad_id").to_numpy()
    order = np.argsort(ids)
    return ids[order].astype(np.int64), t.column("ts_min").to_numpy()[order].astype(np.int64)


# -- published versions -------------------------------------------------------------------------------------
def graph_dir(ws: Workspace) -> Path:
    return ws.inside("graph")


def publish_graph(
    ws: Workspace, day: int, cfg: GraphConfig | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Build and publish graph version `day` (events up to the end of day D; serves D + 1). A version that is
    already published is returned as is (a no-op) unless `overwrite`. Returns its manifest."""
    cfg = cfg or GraphConfig()
    parent = graph_dir(ws)
    target = parent / version_name(day)
    if (target / "manifest.json").is_file() and not overwrite:
        m = GraphVersion(target).manifest
        if m.get("config") != cfg.to_json():
            raise DataError(
                target,
                f"published with config {m.get('config')}, not {cfg.to_json()} (pass overwrite to rebuild)",
            )
        log.info("graph %s already published: nothing to do", target)
        return m
    ds = ws.dataset()
    edges, info = build_edges(ds, day, cfg)
    m = make_manifest(
        GRAPH_KIND,
        GRAPH_SCHEMA_VERSION,
        day=int(day),
        serves_day=int(day) + 1,
        dataset={"path": str(ds.root), "artifact_id": ds.manifest.get("artifact_id"), "name": ds.name},
        config=cfg.to_json(),
        n_edges=edges.num_rows,
        **info,
    )
    with publishing(target, overwrite=overwrite) as tmp:
        pq.write_table(edges, tmp / EDGES_FILE, compression="zstd")
        write_json_atomic(tmp / "manifest.json", m)
    latest = get_latest(parent)
    if latest is None or version_day(latest) <= int(day):
        set_latest(parent, target.name)
    log.info("graph day=%d: %d edges %s", day, edges.num_rows, info["counts"])
    return GraphVersion(target).manifest


class GraphVersion:
    """A published graph version, opened read-only: manifest first, then the edge table, checked."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir, GRAPH_KIND, GRAPH_SCHEMA_VERSION)
        self._edges: pa.Table | None = None

    @property
    def day(self) -> int:
        return int(self.manifest["day"])

    @property
    def artifact_id(self) -> str:
        return str(self.manifest["artifact_id"])

    def edges(self) -> pa.Table:
        """The edge table, validated: exact schema, known relations with their node types, ids int64,
        count >= 1, last_ts before the cutoff, as many rows as the manifest says."""
        if self._edges is None:
            f = self.dir / EDGES_FILE
            try:
                t = pq.read_table(f)
            except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
                raise DataError(f, f"unreadable edge table ({str(e).splitlines()[0]})") from None
            self._edges = check_edges(f, t, int(self.manifest["cutoff_ts"]), int(self.manifest["n_edges"]))
        return self._edges


def check_edges(f: Path, t: pa.Table, cutoff_ts: int, n_edges: int | None = None) -> pa.Table:
    if not t.schema.equals(EDGE_SCHEMA):
        raise DataError(f, f"edge table schema {t.schema.types} differs from {EDGE_SCHEMA.types}")
    if n_edges is not None and t.num_rows != n_edges:
        raise DataError(f, f"{t.num_rows} edges but the manifest says {n_edges}")
    if t.num_rows == 0:
        return t
    known = {r.value: (h.value, tt.value) for r, (h, tt) in RELATION_TYPES.items()}
    for rel in pc.unique(t.column("relation")).to_pylist():
        if rel not in known:
            raise DataError(f, f"unknown relation {rel!r}")
        sub = t.filter(pc.equal(t.column("relation"), rel))
        for side, want in zip(("head_type", "tail_type"), known[rel], strict=True):
            got = set(pc.unique(sub.column(side)).to_pylist())
            if got != {want}:
                raise DataError(f, f"relation {rel!r}: {side} {sorted(got)} (expected {want!r})")
    if pc.min(t.column("count")).as_py() < 1:
        raise DataError(f, "an edge has count < 1")
    if pc.max(t.column("last_ts")).as_py() >= cutoff_ts:
        raise DataError(f, f"an edge has last_ts at or after the version's cutoff {cutoff_ts}")
    return t


def open_graph(ws: Workspace, day: int) -> GraphVersion:
    return GraphVersion(graph_dir(ws) / version_name(day))
