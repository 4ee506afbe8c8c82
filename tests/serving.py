"""Helpers of the serving tests: move a day's versions aside and back (a daily publish without training), a
free port, a Redis server for tests."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adslog.workspace import Workspace, version_name
from dermcore.artifact import set_latest
from index.versions import index_dir

FAMILIES = ("embeddings/ctr", "index", "ranker")  # the cycle's publish order of what a version set holds


def latest_day(ws: Workspace) -> int:
    d = ws.latest_day(index_dir(ws))
    assert d is not None
    return d


def withdraw(ws: Workspace, day: int, to: Path) -> None:
    """Move day `day`'s store, index and ranker versions out of the workspace into `to` (pointers first)."""
    for fam in reversed(FAMILIES):
        parent = ws.root / fam
        prev = [d for d in ws.published_days(parent) if d < day]
        set_latest(parent, version_name(prev[-1]))
        (to / fam).mkdir(parents=True, exist_ok=True)
        os.replace(parent / version_name(day), to / fam / version_name(day))


def republish(ws: Workspace, day: int, src: Path) -> None:
    """Put them back as a daily cycle publishes: each version renamed into place, then its LATEST moved."""
    for fam in FAMILIES:
        parent = ws.root / fam
        os.replace(src / fam / version_name(day), parent / version_name(day))
        set_latest(parent, version_name(day))


def copy_version(src: Path, day: int, dst: Path) -> None:
    for fam in FAMILIES:
        (dst / fam).mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / fam / version_name(day), dst / fam / version_name(day))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture()
def redis_prefix() -> Iterator[str]:
    """A key prefix unique to this test on the Redis server at 127.0.0.1:6379; its keys are deleted after.
    Skips when no server answers, unless the environment variable CI is set (then it fails)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis server at {REDIS_URL} ({e})")
    prefix = f"dermtest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def wait_until(cond: object, timeout: float = 60.0) -> None:
    """Poll `cond()` every 50 ms until it is true; AssertionError after `timeout` seconds."""
    import time

    t0 = time.time()
    while not cond():  # type: ignore[operator]
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s")
        time.sleep(0.05)
