"""KGE model versions: `WORK/kge/<model>/day=<D>/`, one per day, published atomically.

    manifest.json        kind "kge_model": model, day, dim, relation_dim, relations, anchor, entity types
                          (offset, count), lineage, parent, graph artifact and day, config, training stats
    weights.pt           plain state_dict: entity [N, d] and its row-wise Adagrad state, relation [R, k],
                          projection [R, k, d] (empty for TransE) and their Adagrad state
    ids_<type>.npy       int64 ids of each node type, in row order

Version D is trained on graph version D (events up to the end of D) and serves day D + 1. A from-scratch run
starts a lineage; an increment keeps its parent's and names the parent's artifact id. Opening a version checks
the payload checksums (`read_manifest`), then shapes, dtypes, finiteness and, for TransRA, that the anchor's
projection is exactly the identity; an increment refuses a parent of another model, dim or anchor.
"""

from __future__ import annotations

import logging
import pickle
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adgraph.graph import GraphVersion, NodeType, Relation, graph_dir
from adgraph.models import STATE_KEYS, EntityIndex, KGEModel, ModelKind
from adgraph.train import KGEConfig, since_ts_of, train_increment, train_scratch
from adslog.workspace import Workspace, version_day, version_name
from dermcore.artifact import (
    get_latest,
    make_manifest,
    publishing,
    read_manifest,
    set_latest,
    write_json_atomic,
)
from dermcore.errors import DataError, DermError, VersionMismatchError
from dermcore.progress import Progress, no_progress

log = logging.getLogger(__name__)

KGE_KIND = "kge_model"
KGE_SCHEMA_VERSION = 1
WEIGHTS = "weights.pt"
#: the KGE models' folder of a workspace: WORK/kge/<model>/day=<D>/
KGE = "kge"


def kge_dir(ws: Workspace, model: ModelKind | str) -> Path:
    return ws.inside(KGE, ModelKind(model).value)


class KGEVersion:
    """A published KGE model version, opened read-only and validated."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir, KGE_KIND, KGE_SCHEMA_VERSION)
        self.model = self._load()

    @property
    def day(self) -> int:
        return int(self.manifest["day"])

    @property
    def lineage(self) -> str:
        return str(self.manifest["lineage"])

    @property
    def version(self) -> str:
        return f"{self.manifest['model']}:{version_name(self.day)}:{self.manifest['artifact_id'][:8]}"

    def _load(self) -> KGEModel:
        m, mpath = self.manifest, self.dir / "manifest.json"
        try:
            kind = ModelKind(m["model"])
            relations = tuple(Relation(r) for r in m["relations"])
            anchor = Relation(m["anchor"]) if m.get("anchor") is not None else None
            dim, k = int(m["dim"]), int(m["relation_dim"])
            types = [(NodeType(e["type"]), int(e["n"])) for e in m["entities"]]
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(mpath, f"malformed kge manifest ({type(e).__name__}: {e})") from None
        ids: dict[NodeType, np.ndarray] = {}
        for t, n in types:
            f = self.dir / f"ids_{t.value}.npy"
            try:
                arr = np.load(f, allow_pickle=False)
            except (FileNotFoundError, ValueError, OSError) as e:
                raise DataError(f, f"unreadable id array ({e})") from None
            if arr.dtype != np.int64 or arr.ndim != 1 or len(arr) != n:
                raise DataError(f, f"expected int64[{n}] ids, found {arr.dtype}{list(arr.shape)}")
            if len(np.unique(arr)) != n:
                raise DataError(f, "duplicate ids")
            ids[t] = arr
        f = self.dir / WEIGHTS
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True)
        except (
            FileNotFoundError,
            RuntimeError,
            OSError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
            EOFError,
        ) as e:
            raise DataError(
                f, f"unreadable weights ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        index = EntityIndex(ids)
        R = len(relations)
        shapes = {
            "entity": (index.n, dim),
            "entity_state": (index.n,),
            "relation": (R, k),
            "relation_state": (R, k),
            "projection": (0 if kind is ModelKind.TRANSE else R, k, dim),
            "projection_state": (0 if kind is ModelKind.TRANSE else R, k, dim),
        }
        if not isinstance(sd, dict) or set(sd) != set(STATE_KEYS):
            raise DataError(f, f"expected tensors {list(STATE_KEYS)}")
        for name, shape in shapes.items():
            v = sd[name]
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape or v.dtype != torch.float32:
                got = (getattr(v, "dtype", type(v)), tuple(getattr(v, "shape", ())))
                raise DataError(f, f"{name}: expected float32{list(shape)}, found {got}")
            if not torch.isfinite(v).all():
                raise DataError(f, f"{name} holds NaN or inf")
        try:
            model = KGEModel(kind, relations, index, dim, k, anchor, torch.Generator().manual_seed(0))
        except DermError as e:
            raise DataError(mpath, str(e)) from None
        model.load_state_dict(sd)
        if anchor is not None:
            a = relations.index(anchor)
            if not torch.equal(model.projection[a], torch.eye(k, dim)):
                raise DataError(f, f"the anchor relation {anchor.value}'s projection is not the identity")
        return model

    def check_compatible(self, cfg: KGEConfig) -> None:
        """Refuse to continue this version with a config of another model, dim, relation_dim or anchor."""
        m = self.manifest
        want: dict[str, str | int | None] = {"model": cfg.model.value, "dim": cfg.dim, "relation_dim": cfg.k}
        want["anchor"] = cfg.anchor.value if cfg.model is ModelKind.TRANSRA else None
        for key, v in want.items():
            if m.get(key) != v:
                raise VersionMismatchError(
                    f"{self.dir}: {key} {m.get(key)!r} differs from the config's {v!r}; an increment must continue "
                    "the same model (train from scratch with --scratch to start a new lineage)"
                )

    def check_graph(self, graph: GraphVersion) -> None:
        """Refuse a graph version other than the one this version was trained on."""
        if self.manifest.get("graph_artifact") != graph.artifact_id:
            raise VersionMismatchError(
                f"{self.dir}: trained on graph artifact {str(self.manifest.get('graph_artifact'))[:8]}, not "
                f"{graph.dir} (artifact {graph.artifact_id[:8]})"
            )

    def lookup(self, node_type: NodeType | str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(float32[n, dim] entity vectors, found bool[n]) of int64 ids; unknown ids give zero rows."""
        return self.model.entity_vectors(NodeType(node_type), np.asarray(ids, np.int64))


def open_kge(ws: Workspace, model: ModelKind | str, day: int) -> KGEVersion:
    return KGEVersion(kge_dir(ws, model) / version_name(day))


def publish_kge(
    target: Path, model: KGEModel, cfg: KGEConfig, day: int, graph: GraphVersion, lineage: str,
    parent: KGEVersion | None, stats: dict[str, Any], overwrite: bool = False,
) -> dict[str, Any]:  # fmt: skip
    m = make_manifest(
        KGE_KIND,
        KGE_SCHEMA_VERSION,
        model=model.kind.value,
        day=int(day),
        serves_day=int(day) + 1,
        dim=model.dim,
        relation_dim=model.relation_dim,
        relations=[r.value for r in model.relations],
        anchor=model.anchor.value if model.anchor is not None else None,
        entities=[
            {"type": t.value, "offset": model.index.offsets[t], "n": model.index.count(t)}
            for t in model.index.types
        ],
        lineage=lineage,
        parent=parent.manifest["artifact_id"] if parent is not None else None,
        parent_day=parent.day if parent is not None else None,
        graph_artifact=graph.artifact_id,
        graph_day=graph.day,
        config=cfg.to_json(),
        train=stats,
    )
    with publishing(target, overwrite=overwrite) as tmp:
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        for t in model.index.types:
            np.save(tmp / f"ids_{t.value}.npy", model.index.ids[t], allow_pickle=False)
        write_json_atomic(tmp / "manifest.json", m)
    latest = get_latest(target.parent)
    if latest is None or version_day(latest) <= int(day):
        set_latest(target.parent, target.name)
    return m


def train_kge(
    ws: Workspace,
    day: int,
    cfg: KGEConfig | None = None,
    scratch: bool = False,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Train and publish KGE version `day` of `cfg.model` on graph version `day` (which must be published:
    `derm graph build --day D`). The newest version before `day` is the parent of an increment; without one,
    or with `scratch`, training starts from scratch (a new lineage). A published version is a no-op unless
    `overwrite`. Returns the manifest."""
    cfg = cfg or KGEConfig()
    target = kge_dir(ws, cfg.model) / version_name(day)
    if (target / "manifest.json").is_file() and not overwrite:
        m = KGEVersion(target).manifest
        if m.get("config") != cfg.to_json():
            raise DataError(
                target,
                f"published with config {m.get('config')}, not {cfg.to_json()} (pass overwrite to retrain)",
            )
        log.info("kge %s already published: nothing to do", target)
        return m
    gdir = graph_dir(ws) / version_name(day)
    if not (gdir / "manifest.json").is_file():
        raise DataError(gdir, f"graph version not published (run `derm graph build --day {day}` first)")
    graph = GraphVersion(gdir)
    edges = graph.edges()
    parent_day = None if scratch else ws.version_before(kge_dir(ws, cfg.model), day)
    if parent_day is None:
        model, stats = train_scratch(cfg, edges, day, progress)
        return publish_kge(target, model, cfg, day, graph, uuid.uuid4().hex, None, stats, overwrite)
    parent = KGEVersion(kge_dir(ws, cfg.model) / version_name(parent_day))
    parent.check_compatible(cfg)
    model = parent.model
    stats = train_increment(model, cfg, edges, day, since_ts_of(parent_day), progress)
    return publish_kge(target, model, cfg, day, graph, parent.lineage, parent, stats, overwrite)
