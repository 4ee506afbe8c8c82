"""The online feature store: store versions published to Redis, read by the HTTP service (`dermserve`).

DERM's appendix C.2-C.3: the aggregated user embeddings are uploaded to an online key-value store; the ad
embeddings are built into the index. A version of the store lives under its own keys, and one pointer key
names the live version:

    <prefix>:<task>:live              the live slot: `<artifact id>.<nonce>`
    <prefix>:<task>:v:<slot>:meta     JSON: task, day, dim, lineage, artifact id, counts, buckets, sha256
    <prefix>:<task>:v:<slot>:u:<b>    hash: decimal user id -> float32[dim] bytes, b = user_id mod buckets
    <prefix>:<task>:v:<slot>:ad_ids   int64[n_ads] bytes (the ad table the ranker's DERM input reads)
    <prefix>:<task>:v:<slot>:ad_vecs  float32[n_ads, dim] bytes

Each publish writes a fresh slot (the store version's artifact id and a random nonce), never into keys
that exist: the leftovers of a killed publish of the same version (perhaps with another bucket count) can
never mix into a later one, and a republish (after a rollback) never rewrites keys that servers are reading.

Users go into hashes of ~256 (one HSET per bucket, a few thousand commands for a million users, pipelined)
rather than one key each: a million separate keys cost a million commands and ~50 bytes of key overhead
each. A lookup is one HMGET per bucket touched (one round trip, pipelined, for a batch of users).

Publishing is atomic. Every key of a new version is written with a TTL (`pending_ttl_s`), so a publisher
killed mid-write leaves keys that expire by themselves and a pointer that still names the old version. Only
after the whole version is written and counted does one MULTI/EXEC transaction remove the new keys' TTLs,
move the pointer and give the previous version's keys a TTL (`retain_s`: servers still on it keep reading it
until they swap). A concurrent publisher that moved the pointer meanwhile makes the transaction fail (WATCH).

The URL names the server and the key prefix: `redis://HOST:PORT/DB?prefix=NAME` (default prefix `derm`).
`redis` is imported here only, lazily: the rest of derm runs without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from dermcore.errors import ConfigError, DataError, DermError
from dermcore.faults import crash_point
from embstore.store import StoreVersion, _check_array

log = logging.getLogger(__name__)

ONLINE_KIND = "online_embedding_store"
ONLINE_SCHEMA_VERSION = 1
SCHEMES = ("redis", "rediss", "unix")
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PIPELINE_COMMANDS = 256  # commands per pipeline round trip while publishing


class FeatureStoreError(DermError):
    """The online feature store cannot be reached or answers something unusable."""


@dataclass(frozen=True)
class OnlineStoreConfig:
    """Where and how store versions are published online.

    url: `redis://HOST:PORT/DB[?prefix=NAME]` (also rediss:// and unix://). users_per_bucket: users per
    hash. pending_ttl_s: TTL of the keys of a version being written (a killed publish's keys expire).
    retain_s: TTL given to the previous live version when a new one goes live."""

    url: str
    users_per_bucket: int = 256
    pending_ttl_s: int = 3600
    retain_s: int = 86400
    socket_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in SCHEMES:
            raise ConfigError(
                f"feature store URL {self.url!r}: scheme must be one of {', '.join(SCHEMES)} "
                "(redis://HOST:PORT/DB[?prefix=NAME])"
            )
        if not _SAFE.match(self.prefix):
            raise ConfigError(f"feature store URL {self.url!r}: prefix must match {_SAFE.pattern}")
        for name in ("users_per_bucket", "pending_ttl_s", "retain_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        if not self.socket_timeout_s > 0:
            raise ConfigError("socket_timeout_s must be > 0")

    @property
    def prefix(self) -> str:
        return dict(parse_qsl(urlsplit(self.url).query)).get("prefix", "derm")

    @property
    def server_url(self) -> str:
        """The URL without the `prefix` query parameter (what the Redis client reads)."""
        p = urlsplit(self.url)
        query = urlencode([(k, v) for k, v in parse_qsl(p.query) if k != "prefix"])
        return urlunsplit((p.scheme, p.netloc, p.path, query, p.fragment))

    @property
    def display(self) -> str:
        """The URL without a password, for messages and /v1/versions."""
        p = urlsplit(self.url)
        host = p.hostname or ""
        netloc = f"{host}:{p.port}" if p.port else host
        return urlunsplit((p.scheme, netloc, p.path, urlsplit(self.url).query, ""))


def _keys(prefix: str, task: str) -> tuple[str, str]:
    return f"{prefix}:{task}:live", f"{prefix}:{task}:v:"


def _version_keys(base: str, buckets: int) -> list[str]:
    return [f"{base}:meta", f"{base}:ad_ids", f"{base}:ad_vecs"] + [f"{base}:u:{b}" for b in range(buckets)]


def _check_safe(name: str, what: str) -> str:
    if not _SAFE.match(name):
        raise DataError(what, f"{name!r} is not a safe key component")
    return name


class OnlineStore:
    """A connection to the online feature store at `config.url`: publish versions, open the live one."""

    def __init__(self, config: OnlineStoreConfig) -> None:
        import redis  # lazy: only the feature store needs it

        self.config = config
        self._redis = redis
        # Any: redis-py types replies as `bytes | str` (decode_responses is a runtime switch); ours are bytes
        self.client: Any = redis.Redis.from_url(
            config.server_url,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.socket_timeout_s,
        )
        try:
            self.client.ping()
        except redis.RedisError as e:
            raise FeatureStoreError(f"{config.display}: no Redis server answers ({e})") from None

    def close(self) -> None:
        self.client.close()

    # -- reading ------------------------------------------------------------------------------------------
    def live_slot(self, task: str = "ctr") -> str | None:
        """The live slot of `task` (`<artifact id>.<nonce>`), or None when nothing was published."""
        live, _ = _keys(self.config.prefix, task)
        try:
            v = self.client.get(live)
        except self._redis.RedisError as e:
            raise FeatureStoreError(f"{self.config.display}: {e}") from None
        return None if v is None else v.decode()

    def live_id(self, task: str = "ctr") -> str | None:
        """The artifact id of the live store version of `task`, or None when nothing was published."""
        slot = self.live_slot(task)
        return None if slot is None else slot_artifact(slot)

    def meta(self, task: str, slot: str) -> dict[str, Any] | None:
        _, vbase = _keys(self.config.prefix, task)
        try:
            raw = self.client.get(f"{vbase}{_check_safe(slot, 'slot')}:meta")
        except self._redis.RedisError as e:
            raise FeatureStoreError(f"{self.config.display}: {e}") from None
        if raw is None:
            return None
        try:
            m = json.loads(raw)
        except ValueError:
            raise FeatureStoreError(f"{self.config.display}: {vbase}{slot}:meta is not JSON") from None
        if not isinstance(m, dict) or m.get("kind") != ONLINE_KIND:
            raise FeatureStoreError(f"{self.config.display}: {vbase}{slot}:meta is not a store version")
        if not isinstance(m.get("schema_version"), int) or m["schema_version"] > ONLINE_SCHEMA_VERSION:
            raise FeatureStoreError(
                f"{self.config.display}: {vbase}{slot}: unsupported schema_version "
                f"{m.get('schema_version')!r} (this build reads 1..{ONLINE_SCHEMA_VERSION})"
            )
        return m

    def open(self, task: str = "ctr", slot: str | None = None) -> RedisStoreVersion:
        """The live version of `task` (or the one in `slot`), checked: its meta, the ad table's sha256, and
        the user count of its hashes (a version missing keys is refused, never half-served)."""
        slot = slot or self.live_slot(task)
        if slot is None:
            raise FeatureStoreError(
                f"{self.config.display}: no version of {task!r} is live under prefix {self.config.prefix!r} "
                "(run `derm publish`)"
            )
        m = self.meta(task, slot)
        if m is None:
            raise FeatureStoreError(f"{self.config.display}: slot {slot} of {task!r} has no meta (expired?)")
        return RedisStoreVersion(self, m)

    # -- writing ------------------------------------------------------------------------------------------
    def publish(
        self,
        meta: dict[str, Any],
        user_ids: np.ndarray,
        user_vecs: np.ndarray,
        ad_ids: np.ndarray,
        ad_vecs: np.ndarray,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Publish one version (user_ids int64[n], user_vecs float32[n, dim], ad_ids int64[m], ad_vecs
        float32[m, dim]; `meta` names task, day, dim, lineage, artifact_id, version) and make it live
        atomically (see the module docstring). A version that is live already is skipped unless
        `overwrite`. Returns {"artifact_id", "version", "previous", "n_users", "n_ads", "seconds", "skipped"}."""
        t0 = time.perf_counter()
        task = _check_safe(str(meta["task"]), "task")
        aid = _check_safe(str(meta["artifact_id"]), "artifact id")
        dim = int(meta["dim"])
        user_ids = np.ascontiguousarray(user_ids, np.int64)
        user_vecs = np.ascontiguousarray(user_vecs, np.float32)
        ad_ids = np.ascontiguousarray(ad_ids, np.int64)
        ad_vecs = np.ascontiguousarray(ad_vecs, np.float32)
        if user_vecs.shape != (len(user_ids), dim) or ad_vecs.shape != (len(ad_ids), dim):
            raise DermError(f"publish: shapes {user_vecs.shape} / {ad_vecs.shape} do not match dim {dim}")
        if len(np.unique(user_ids)) != len(user_ids):
            raise DermError("publish: user ids are not unique")
        live, vbase = _keys(self.config.prefix, task)
        slot = f"{aid}.{uuid.uuid4().hex[:8]}"
        base = f"{vbase}{slot}"
        out = {
            "artifact_id": aid,
            "slot": slot,
            "version": meta["version"],
            "n_users": int(len(user_ids)),
            "n_ads": int(len(ad_ids)),
            "url": self.config.display,
        }
        previous = self.live_slot(task)
        if (
            previous is not None
            and slot_artifact(previous) == aid
            and not overwrite
            and self.meta(task, previous) is not None
        ):
            return {
                **out,
                "slot": previous,
                "previous": previous,
                "skipped": True,
                "seconds": time.perf_counter() - t0,
            }
        buckets = max(1, math.ceil(len(user_ids) / self.config.users_per_bucket))
        ad_ids_b, ad_vecs_b = ad_ids.tobytes(), ad_vecs.tobytes()
        full = {
            **meta,
            "kind": ONLINE_KIND,
            "schema_version": ONLINE_SCHEMA_VERSION,
            "n_users": int(len(user_ids)),
            "n_ads": int(len(ad_ids)),
            "buckets": buckets,
            "dtype": "float32",
            "slot": slot,
            "ad_sha256": hashlib.sha256(ad_ids_b + ad_vecs_b).hexdigest(),
            "published_unix": int(time.time()),
        }
        ttl = self.config.pending_ttl_s
        try:
            self._write_users(base, user_ids, user_vecs, buckets, ttl)
            pipe = self.client.pipeline(transaction=False)
            pipe.set(f"{base}:ad_ids", ad_ids_b, ex=ttl)
            pipe.set(f"{base}:ad_vecs", ad_vecs_b, ex=ttl)
            pipe.set(f"{base}:meta", json.dumps(full), ex=ttl)
            pipe.execute()
            crash_point("feature_store_flip", base)
            counted = self._count_users(base, buckets)
            if counted != len(user_ids):
                raise FeatureStoreError(
                    f"{self.config.display}: {base}: {counted} users written of {len(user_ids)}; not made live"
                )
            self._flip(task, live, base, slot)
        except self._redis.RedisError as e:
            raise FeatureStoreError(
                f"{self.config.display}: publish of {meta['version']} failed ({e})"
            ) from None
        log.info("published %s to %s (%d users)", meta["version"], self.config.display, len(user_ids))
        return {**out, "previous": previous, "skipped": False, "seconds": time.perf_counter() - t0}

    def _write_users(self, base: str, ids: np.ndarray, vecs: np.ndarray, buckets: int, ttl: int) -> None:
        b = ids % buckets  # numpy's mod of a positive modulus is never negative
        order = np.argsort(b, kind="stable")
        starts = np.searchsorted(b[order], np.arange(buckets + 1))
        names = [str(x).encode() for x in ids[order].tolist()]
        rows = vecs[order].tobytes()
        width = vecs.shape[1] * 4
        pipe = self.client.pipeline(transaction=False)
        pending = 0
        for k in range(buckets):
            lo, hi = int(starts[k]), int(starts[k + 1])
            if hi == lo:
                continue
            args: list[bytes] = []
            for i in range(lo, hi):
                args.append(names[i])
                args.append(rows[i * width : (i + 1) * width])
            key = f"{base}:u:{k}"
            pipe.execute_command("HSET", key, *args)
            pipe.expire(key, ttl)
            pending += 2
            if pending >= PIPELINE_COMMANDS:
                pipe.execute()
                pending = 0
                crash_point("feature_store", base)
        pipe.execute()

    def _count_users(self, base: str, buckets: int) -> int:
        pipe = self.client.pipeline(transaction=False)
        for k in range(buckets):
            pipe.hlen(f"{base}:u:{k}")
        return int(sum(pipe.execute()))

    def _flip(self, task: str, live: str, base: str, slot: str) -> None:
        """One transaction: the new version's keys lose their TTL, the pointer moves, the old version gets one."""
        new_keys = _version_keys(base, int(json.loads(self.client.get(f"{base}:meta"))["buckets"]))
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(live)
                old = pipe.get(live)
                old_id = None if old is None else old.decode()
                old_keys: list[str] = []
                if old_id is not None and old_id != slot:
                    old_meta = self.meta(task, old_id)
                    if old_meta is not None:
                        old_keys = _version_keys(
                            f"{_keys(self.config.prefix, task)[1]}{old_id}", old_meta["buckets"]
                        )
                pipe.multi()
                for k in new_keys:
                    pipe.persist(k)
                pipe.set(live, slot)
                for k in old_keys:
                    pipe.expire(k, self.config.retain_s)
                pipe.execute()
            except self._redis.WatchError:
                raise FeatureStoreError(
                    f"{self.config.display}: {live} moved during the publish (another publisher); not made live"
                ) from None


class RedisStoreVersion(StoreVersion):
    """A store version served from the online feature store, readable like a local `StoreVersion`: user
    lookups are one pipelined HMGET per bucket; the ad table is read once, checked, and held in memory."""

    def __init__(self, store: OnlineStore, meta: dict[str, Any]) -> None:
        self.online = store
        self.manifest = meta
        self._cache = {}
        cfg = store.config
        self.slot = str(meta["slot"])
        self._base = f"{_keys(cfg.prefix, str(meta['task']))[1]}{self.slot}"
        self.dir = Path(f"{cfg.display}/{self._base}")
        self.buckets = int(meta["buckets"])
        dim = self.dim = int(meta["dim"])
        try:
            ad_ids_b = store.client.get(f"{self._base}:ad_ids")
            ad_vecs_b = store.client.get(f"{self._base}:ad_vecs")
            counted = store._count_users(self._base, self.buckets)
        except store._redis.RedisError as e:
            raise FeatureStoreError(f"{cfg.display}: {e}") from None
        if ad_ids_b is None or ad_vecs_b is None:
            raise FeatureStoreError(f"{self.dir}: the ad table is missing (expired?)")
        if hashlib.sha256(ad_ids_b + ad_vecs_b).hexdigest() != meta["ad_sha256"]:
            raise DataError(self.dir, "ad table sha256 differs from its meta (corrupt or replaced keys)")
        if counted != int(meta["n_users"]):
            raise DataError(self.dir, f"{counted} users present, meta says {meta['n_users']} (keys lost?)")
        ad_ids = np.frombuffer(ad_ids_b, np.int64)
        ad_vecs = np.frombuffer(ad_vecs_b, np.float32).reshape(-1, dim)
        _check_array(self.dir / "ad_ids", "ad_ids", ad_ids, dim)
        _check_array(self.dir / "ad_vecs", "ad_vecs", ad_vecs, dim)
        self._cache["ad_ids"], self._cache["ad_vecs"] = ad_ids, ad_vecs

    def _arr(self, name: str) -> np.ndarray:
        if name not in self._cache:
            raise FeatureStoreError(f"{self.dir}: {name} is not held by the online store (lookups only)")
        return self._cache[name]

    def pool(self, entity: str) -> Any:
        raise FeatureStoreError(f"{self.dir}: the online store holds served vectors only, not the pool")

    def lookup(self, entity: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vecs float32[n, dim], found bool[n]); users from Redis, ads from the table read at open."""
        if entity != "user":
            return super().lookup(entity, ids)
        ids = np.asarray(ids, np.int64)
        uniq, inverse = np.unique(ids, return_inverse=True)
        if len(uniq) < len(ids):  # the ranker's rows repeat one user per candidate: fetch each user once
            vecs, found = self.lookup("user", uniq)
            return vecs[inverse], found[inverse]
        out = np.zeros((len(ids), self.dim), np.float32)
        found = np.zeros(len(ids), bool)
        if len(ids) == 0:
            return out, found
        b = ids % self.buckets
        groups = {int(k): np.flatnonzero(b == k) for k in np.unique(b)}
        client = self.online.client
        try:
            if len(groups) == 1:
                ((k, rows),) = groups.items()
                answers = [client.hmget(f"{self._base}:u:{k}", [str(x) for x in ids[rows].tolist()])]
            else:
                pipe = client.pipeline(transaction=False)
                for k, rows in groups.items():
                    pipe.hmget(f"{self._base}:u:{k}", [str(x) for x in ids[rows].tolist()])
                answers = pipe.execute()
        except self.online._redis.RedisError as e:
            raise FeatureStoreError(f"{self.online.config.display}: user lookup failed ({e})") from None
        width = self.dim * 4
        for rows, values in zip(groups.values(), answers, strict=True):
            for r, v in zip(rows.tolist(), values, strict=True):
                if v is None:
                    continue
                if len(v) != width:
                    raise DataError(self.dir, f"user {int(ids[r])}: {len(v)} bytes, expected {width}")
                out[r] = np.frombuffer(v, np.float32)
                found[r] = True
        return out, found


def slot_artifact(slot: str) -> str:
    """The store version's artifact id of a slot `<artifact id>.<nonce>`."""
    return slot.split(".", 1)[0]


def store_meta(store: StoreVersion) -> dict[str, Any]:
    """The fields of a local store version's manifest that the online copy carries."""
    m = store.manifest
    return {
        "task": str(m["task"]),
        "day": int(m["day"]),
        "dim": int(m["dim"]),
        "lineage": str(m["lineage"]),
        "artifact_id": str(m["artifact_id"]),
        "model_version": m.get("model_version"),
        "version": store.version,
    }
