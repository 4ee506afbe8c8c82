"""Version sets and hot swap: what the service serves, and how a newer day replaces it without a lost request.

A version set is one embedding store version, the index built from it and one ranker, loaded into a
`adserving.two_stage.TwoStage` (the same object `derm query` builds) and checked before it serves:

- the rule that picks it is `Workspace.serving_version` over store, index and ranker (the newest day published
  in all three and at or before each LATEST), so a daily cycle that has published the new store and index but
  not yet the ranker is not picked up half-way; when no day is common to all three (a ranker trained once), the
  rule of `derm query` (`adserving.versions.serving_day`: store and index) picks it;
- loading checks what `TwoStage` checks (manifests and payload checksums, the index built from that store
  version and lineage, an online store serving exactly that version), then here: dims of store, index and
  ranker agree, the index's recall@10 against exact search over its own ad vectors reaches `min_recall`, and a
  warm-up query runs end to end (the ranker's lineage check reads its DERM inputs then) with finite scores.

`VersionManager` holds the serving set in one attribute. A watcher thread polls the cheap key of the set the
rule picks (pointers and manifest ids, plus the online store's live pointer) every `watch_interval_s`; when
it differs from the serving one, it loads and checks the new set on the watcher thread (off the request
path) and then assigns the attribute: one reference swap. A request reads the attribute once and runs to the
end on that set, so in-flight requests finish on the version they started with and every response names its
versions. A set that fails is not swapped in: the old one keeps serving, the failure is reported by /readyz
and /metrics, and the same set is retried only after `retry_failed_s` (or a forced reload). Rollback moves
the LATEST pointers back, which changes the key: it is picked up the same way.

The key takes the day and all three versions from one reading of the rule, and the key is read again after the
load: a poll that reads while a cycle or a rollback moves the pointers (the day from before the move, versions
from after it) drops what it loaded (`VersionsMoved`) instead of serving one day with another day's versions.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adserving.two_stage import ServeConfig, TwoStage, UnknownUser
from adserving.versions import serving_day
from adslog.workspace import Workspace, version_name
from dermcore.artifact import read_json
from dermcore.errors import DataError, DermError, QualityGateError
from dermserve.config import ServiceConfig
from embstore.online import OnlineStore, slot_artifact
from embstore.store import embeddings_dir
from index.exact import recall_against_exact
from index.versions import index_dir
from ranking.train import ranker_dir

log = logging.getLogger(__name__)

SELF_CHECK_K = 10


class VersionsMoved(DermError):
    """The workspace's pointers moved while a set was loading (a cycle publishing): not a failure."""


class WaitingForOnlineStore(DermError):
    """The workspace serves a store version the online store has not made live yet: in a daily cycle the
    online publish is the last step, so this is a set still arriving, reported as pending, not a failure."""


@dataclass(frozen=True)
class SetKey:
    """What identifies a version set, read without loading it: the query day, the artifact ids of the
    store, index and ranker versions the rule picks, and the online store's live slot (or None)."""

    day: int
    store: str
    index: str
    ranker: str
    online: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "store": self.store[:8],
            "index": self.index[:8],
            "ranker": self.ranker[:8],
            "online": None if self.online is None else self.online[:8],
        }


def _artifact_id(ws: Workspace, parent: Any, day: int | None, what: str) -> str:
    if day is None:
        raise DataError(parent, f"no {what} version is published before the serving day")
    m = read_json(parent / version_name(day) / "manifest.json")
    if not isinstance(m, dict) or not isinstance(m.get("artifact_id"), str):
        raise DataError(parent / version_name(day) / "manifest.json", "manifest lacks artifact_id")
    return str(m["artifact_id"])


def candidate_key(ws: Workspace, online: OnlineStore | None = None) -> SetKey:
    """The key of the version set the serving rule picks now (see the module docstring). Reads pointers and
    manifests only (no payload hashing): cheap enough to poll every few seconds."""
    sdir, idir, rdir = embeddings_dir(ws, "ctr"), index_dir(ws), ranker_dir(ws)
    common = ws.serving_version([sdir, idir, rdir], 2**31 - 1, warn=False)
    both: int | None
    ranker: int | None
    if common is not None:  # one reading of the pointers decides the day of all three (module docstring)
        day, both, ranker = common + 1, common, common
    else:
        day = serving_day(ws)
        both = ws.serving_version([sdir, idir], day, warn=False)
        ranker = ws.version_before(rdir, day)
    return SetKey(
        day=day,
        store=_artifact_id(ws, sdir, both, "embedding store"),
        index=_artifact_id(ws, idir, both, "index"),
        ranker=_artifact_id(ws, rdir, ranker, "ranker"),
        online=None if online is None else online.live_slot("ctr"),
    )


def _key_or_none(ws: Workspace, online: OnlineStore | None) -> SetKey | None:
    try:
        return candidate_key(ws, online)
    except (DermError, OSError):
        return None


@dataclass
class VersionSet:
    """A loaded and checked version set. `ts` answers queries; `versions` is what every response names."""

    key: SetKey
    ts: TwoStage
    check: dict[str, Any]
    loaded_unix: float = field(default_factory=time.time)

    @property
    def day(self) -> int:
        return self.ts.day

    @property
    def versions(self) -> dict[str, str]:
        return self.ts.versions

    def describe(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "versions": self.versions,
            "key": self.key.to_json(),
            "check": self.check,
            "loaded_unix": self.loaded_unix,
        }


def load_set(ws: Workspace, cfg: ServiceConfig, key: SetKey, online: OnlineStore | None) -> VersionSet:
    """Load the version set `key` and check it (see the module docstring); raises DermError on any failure."""
    t0 = time.perf_counter()
    store = None
    if online is not None:
        if key.online is None or slot_artifact(key.online) != key.store:
            raise WaitingForOnlineStore(
                f"{online.config.display}: the online store's live version is "
                f"{(key.online or 'none')[:8]}, but the index of day {key.day - 1} was built from store "
                f"version {key.store[:8]} (publish it: `derm publish --day {key.day - 1}`)"
            )
        store = online.open("ctr", key.online)
    ts = TwoStage(ws, ServeConfig(unknown_user=cfg.unknown_user), day=key.day, device=cfg.device, store=store)
    got = (
        ts.retriever.store.manifest["artifact_id"] if ts.retriever.store is not None else None,
        ts.retriever.index_manifest.get("artifact_id"),
        ts.ranker.manifest["artifact_id"],
    )
    # the workspace moved between the key and the load, or the key was read while a cycle or a rollback was
    # moving the pointers (a day from before the move beside versions from after it): never swapped in
    if got != (key.store, key.index, key.ranker) or _key_or_none(ws, online) != key:
        raise VersionsMoved(f"{ws.root}: versions changed while loading; the next poll reads them again")
    check = check_set(ts, cfg)
    check["load_seconds"] = round(time.perf_counter() - t0, 3)
    return VersionSet(key, ts, check)


def check_set(ts: TwoStage, cfg: ServiceConfig) -> dict[str, Any]:
    """Dims, index recall against exact search, a warm-up query; returns what was measured."""
    r = ts.retriever
    if r.index is None or r.store is None:
        raise DermError(f"{ts.ws.root}: no index or store version serves day {ts.day}")
    dim = int(r.store.manifest["dim"])
    if r.index.config.dim != dim:
        raise DataError(index_dir(ts.ws), f"index dim {r.index.config.dim} but store dim {dim}")
    if ts.ranker.config.derm_inputs and int(ts.ranker.manifest["derm_dim"]) != dim:
        raise DataError(
            ranker_dir(ts.ws), f"ranker reads dim {ts.ranker.manifest['derm_dim']}, store dim {dim}"
        )
    ad_ids = r.index.ids()
    vecs, found = r.store.lookup("ad", ad_ids)
    if not found.all():
        raise DataError(r.store.dir, f"{int((~found).sum())} indexed ads have no vector in the store version")
    rng = np.random.default_rng(0)
    q = vecs[rng.choice(len(vecs), size=min(cfg.self_check_queries, len(vecs)), replace=False)]
    recall = recall_against_exact(r.index, q, min(SELF_CHECK_K, len(ad_ids)), ad_ids=ad_ids, ad_vecs=vecs)
    if recall < cfg.min_recall:
        raise QualityGateError(
            f"{index_dir(ts.ws)}: recall@{SELF_CHECK_K} {recall:.4f} against exact search is under "
            f"{cfg.min_recall}; not swapped in"
        )
    users = ts.ds.users(["user_id"]).column("user_id").to_numpy()[:4].astype(np.int64)
    docs = ts.query_many(users, ServeConfig(k=5, candidates=20, unknown_user=UnknownUser.POPULAR))
    for d in docs:
        if isinstance(d, DermError) or not d["results"]:
            raise DermError(f"{ts.ws.root}: the warm-up query returned nothing ({d})")
        if not all(np.isfinite(x["p_ctr"]) and np.isfinite(x["ecpm"]) for x in d["results"]):
            raise QualityGateError(f"{ranker_dir(ts.ws)}: the ranker returns non-finite scores")
    return {"recall_at_10": round(float(recall), 4), "self_check_queries": int(len(q)), "dim": dim}


class VersionManager:
    """The serving version set, the watcher that replaces it, and the swap counters /metrics reports."""

    def __init__(self, cfg: ServiceConfig, online: OnlineStore | None = None) -> None:
        self.cfg = cfg
        self.ws = Workspace.open(cfg.work)
        self.online = online
        self._current: VersionSet | None = None
        self._load_lock = threading.Lock()  # one load at a time (watcher, admin reload)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: dict[SetKey, float] = {}
        self.swaps = 0
        self.swap_failures = 0
        self.last_failure: dict[str, Any] | None = None
        #: a newer set that waits for the online store to publish its store version (None: nothing waits)
        self.pending: dict[str, Any] | None = None
        self.last_poll_unix: float | None = None

    @property
    def current(self) -> VersionSet | None:
        """The serving set; read it once per request and use that object to the end."""
        return self._current

    def poll(self, force: bool = False) -> dict[str, Any]:
        """Look for a newer set and swap it in when it loads and checks. `force` ignores the retry delay of
        a set that failed. Returns {"swapped", "current", "error"}."""
        with self._load_lock:
            now = self.last_poll_unix = time.time()
            self._failed = {k: t for k, t in self._failed.items() if now - t < self.cfg.retry_failed_s}
            cur = self._current
            try:
                try:
                    key = candidate_key(self.ws, self.online)
                except (DermError, OSError):  # a read racing a move: pointers move first, so read them again
                    key = candidate_key(self.ws, self.online)
            except (DermError, OSError) as e:  # nothing to load (yet), or the store unreachable: not a swap
                return self._fail(None, e)
            if cur is not None and cur.key == key:
                # nothing newer is wanted (e.g. a rollback after a refused set): no failure or wait to report
                self.pending = self.last_failure = None
                return {"swapped": False, "current": cur.describe(), "error": None}
            if not force and key in self._failed:
                return {
                    "swapped": False,
                    "current": None if cur is None else cur.describe(),
                    "error": self.last_failure,
                }
            try:
                new = load_set(self.ws, self.cfg, key, self.online)
            except VersionsMoved as e:
                log.info("%s", e)
                return {"swapped": False, "current": None if cur is None else cur.describe(), "error": None}
            except WaitingForOnlineStore as e:
                if self.pending is None or self.pending["key"] != key.to_json():
                    log.warning("version set pending: %s", e)
                self.pending = {"reason": str(e), "key": key.to_json(), "unix": time.time()}
                return {
                    "swapped": False,
                    "current": None if cur is None else cur.describe(),
                    "error": None,
                    "pending": self.pending,
                }
            except (DermError, OSError) as e:
                return self._fail(key, e)
            except Exception as e:  # a bug, not a bad version: still never swapped in, logged with traceback
                log.exception("loading version set %s failed", key)
                return self._fail(key, e)
            self._current = new  # the swap: one reference assignment
            if cur is not None:
                self.swaps += 1
            self._failed.pop(key, None)
            self.last_failure = None
            self.pending = None
            log.info("serving day %d: %s", new.day, new.versions)
            return {"swapped": True, "current": new.describe(), "error": None}

    def _fail(self, key: SetKey | None, e: BaseException) -> dict[str, Any]:
        """Record a failure; only a set that was tried (`key`) counts as a swap failure."""
        if key is not None:
            self.swap_failures += 1
            self._failed[key] = time.time()
        msg = str(e) if isinstance(e, DermError | OSError) else f"internal error: {type(e).__name__}: {e}"
        if self.last_failure is None or self.last_failure["error"] != msg:  # once, not every poll
            log.error("version set not swapped in: %s", msg)
        self.last_failure = {
            "error": msg,
            "key": None if key is None else key.to_json(),
            "unix": time.time(),
        }
        cur = self._current
        return {
            "swapped": False,
            "current": None if cur is None else cur.describe(),
            "error": self.last_failure,
        }

    def start(self) -> None:
        """Load the first set now (the caller's thread), then watch on a daemon thread."""
        self.poll()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="derm-version-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.cfg.watch_interval_s):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any single failure
                log.exception("version watcher poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
