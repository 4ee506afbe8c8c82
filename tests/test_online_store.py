"""The Redis online feature store: lookups equal the local store's, publishing is atomic under SIGKILL (the old
pointer stays live), old versions expire, and a version that does not match the served index is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from embstore.store import embeddings_dir

with warnings.catch_warnings():  # starlette's TestClient warns that it runs over httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from adserving.two_stage import TwoStage
from adserving.versions import publish_workspace
from adslog.workspace import Workspace
from cli import main
from dermcore.errors import VersionMismatchError
from dermserve import ServiceConfig, create_app
from embstore.online import OnlineStore, OnlineStoreConfig
from embstore.store import open_version
from tests import serving
from tests.serving import REDIS_URL, latest_day, republish, wait_until, withdraw

redis_prefix = serving.redis_prefix  # the fixture: a key prefix on the test Redis server, deleted after

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-the-admin-endpoint"


def _cfg(prefix: str, **kw: int) -> OnlineStoreConfig:
    return OnlineStoreConfig(f"{REDIS_URL}?prefix={prefix}", **kw)


def _client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


def test_publish_then_lookups_equal_the_local_store(demo_ws: tuple[Path, dict], redis_prefix: str) -> None:
    ws = Workspace.open(demo_ws[0])
    day = latest_day(ws)
    local = open_version(embeddings_dir(ws, "ctr"), day)
    out = publish_workspace(ws, _cfg(redis_prefix))
    assert out["skipped"] is False and out["previous"] is None
    assert out["artifact_id"] == local.manifest["artifact_id"] and out["version"] == local.version
    assert out["n_users"] == len(local.ids("user")) and out["n_ads"] == len(local.ids("ad"))
    online = OnlineStore(_cfg(redis_prefix))
    try:
        assert online.live_id("ctr") == local.manifest["artifact_id"]
        remote = online.open("ctr")
        assert remote.version == local.version and remote.lineage == local.lineage and remote.day == day
        users = np.r_[local.ids("user")[::37], np.int64(-5), np.int64(2**62)]
        ads = np.r_[local.ids("ad")[::11], np.int64(-1)]
        for entity, ids, missing in (("user", users, 2), ("ad", ads, 1)):
            want, want_found = local.lookup(entity, ids)
            got, got_found = remote.lookup(entity, ids)
            assert (got_found == want_found).all()
            assert got_found[:-missing].all() and not got_found[-missing:].any()
            np.testing.assert_array_equal(got, want)
        keys = list(_client().scan_iter(match=f"{redis_prefix}:*"))
        assert keys and all(_client().ttl(k) == -1 for k in keys)  # a live version never expires
        again = publish_workspace(ws, _cfg(redis_prefix))
        assert again["skipped"] is True
    finally:
        online.close()


@pytest.mark.parametrize("point", ["feature_store", "feature_store_flip"])
def test_kill_mid_publish_keeps_the_old_version_live(
    demo_ws: tuple[Path, dict], redis_prefix: str, point: str
) -> None:
    ws = Workspace.open(demo_ws[0])
    day = latest_day(ws)
    old = publish_workspace(ws, _cfg(redis_prefix), day=day - 1)
    new_id = open_version(embeddings_dir(ws, "ctr"), day).manifest["artifact_id"]
    code = (
        "import sys; from adslog.workspace import Workspace; "
        "from adserving.versions import publish_workspace; from embstore.online import OnlineStoreConfig; "
        "publish_workspace(Workspace(sys.argv[1]), OnlineStoreConfig(sys.argv[2], users_per_bucket=2), "
        "day=int(sys.argv[3]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DERM_CRASH_AT": point}
    url = f"{REDIS_URL}?prefix={redis_prefix}"
    p = subprocess.run(
        [sys.executable, "-c", code, str(ws.root), url, str(day)], env=env, cwd=ROOT, capture_output=True
    )
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    r = _client()
    written = list(r.scan_iter(match=f"{redis_prefix}:ctr:v:{new_id}.*"))
    assert written  # the kill came mid-publish: part (or all) of the new version is there ...
    metas = [k for k in written if k.endswith(b":meta")]
    assert len(metas) == (1 if point == "feature_store_flip" else 0)
    assert all(0 < r.ttl(k) <= 3600 for k in written)  # ... and expires by itself
    online = OnlineStore(_cfg(redis_prefix))
    try:
        assert online.live_id("ctr") == old["artifact_id"]  # the pointer never moved
        assert online.open("ctr").version == old["version"]
    finally:
        online.close()
    # a full publish afterwards goes live; the previous version gets a TTL (retain_s) and stays readable
    done = publish_workspace(ws, _cfg(redis_prefix, retain_s=600))
    assert done["artifact_id"] == new_id and done["previous"] == old["slot"]
    live = f"{redis_prefix}:ctr:v:{done['slot']}:"
    new_keys = [k for k in r.scan_iter(match=f"{live}*")]
    assert new_keys and all(r.ttl(k) == -1 for k in new_keys)
    assert not set(written) & set(new_keys)  # the killed publish's keys are never reused ...
    assert all(0 < r.ttl(k) <= 3600 for k in written)  # ... and still expire
    old_keys = list(r.scan_iter(match=f"{redis_prefix}:ctr:v:{old['slot']}:*"))
    assert old_keys and all(0 < r.ttl(k) <= 600 for k in old_keys)
    assert r.get(f"{redis_prefix}:ctr:live").decode() == done["slot"]


def test_service_refuses_an_online_version_that_does_not_match_the_index(
    demo_ws: tuple[Path, dict], redis_prefix: str
) -> None:
    ws = Workspace.open(demo_ws[0])
    day = latest_day(ws)
    publish_workspace(ws, _cfg(redis_prefix), day=day - 1)
    online = OnlineStore(_cfg(redis_prefix))
    try:
        stale = online.open("ctr")
        with pytest.raises(VersionMismatchError, match="publish that version to the feature store"):
            TwoStage(ws, store=stale)
    finally:
        online.close()
    cfg = ServiceConfig(work=str(ws.root), feature_store=_cfg(redis_prefix), admin_token=TOKEN)
    with TestClient(create_app(cfg)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["last_failure"] is None  # waiting, not failed
        why = r.json()["pending"]["reason"]
        assert "the online store's live version is" in why and f"derm publish --day {day}" in why
        q = c.post("/v1/query", json={"user_id": 1})
        assert q.status_code == 503 and "derm publish" in q.json()["error"]["message"]
        metrics = c.get("/metrics").text
        assert "derm_pending_version_set 1" in metrics and "derm_swap_failures_total 0" in metrics
        publish_workspace(ws, _cfg(redis_prefix))
        assert c.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).json()["swapped"]
        ready = c.get("/readyz").json()
        assert ready["key"]["online"] == ready["key"]["store"]  # both 8-character prefixes
        assert ready["pending"] is None and "derm_pending_version_set 0" in c.get("/metrics").text
        ts = TwoStage(ws)
        user = int(ts.retriever.store.ids("user")[3])  # type: ignore[union-attr]
        doc = c.post("/v1/query", json={"user_id": user, "k": 10, "candidates": 100}).json()
        assert doc["path"] == "ann" and doc["versions"] == ts.versions
        want = ts.query(user, ts.config.__class__(k=10, candidates=100))
        assert doc == json.loads(json.dumps(want))  # same document as from the local store
        # the store goes away while serving: a 503 naming it, never a 500 or a traceback
        online_store = c.app.state.manager.current.ts.retriever.store.online  # type: ignore[attr-defined]
        live_client = online_store.client
        online_store.client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
        try:
            r = c.post("/v1/query", json={"user_id": user})
            assert r.status_code == 503 and "user lookup failed" in r.json()["error"]["message"]
        finally:
            online_store.client = live_client
        assert c.post("/v1/query", json={"user_id": user}).status_code == 200


def test_publish_cli(demo_ws: tuple[Path, dict], redis_prefix: str) -> None:
    runner = CliRunner()
    work = str(demo_ws[0])
    url = f"{REDIS_URL}?prefix={redis_prefix}"
    r = runner.invoke(main, ["publish", "--work", work, "--to", url, "--json"])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["skipped"] is False and out["n_users"] > 0 and r.stderr == ""
    r = runner.invoke(main, ["publish", "--work", work, "--to", url])
    assert r.exit_code == 0 and "already live" in r.stdout
    for args, msg in (
        (["--to", "http://127.0.0.1:6379/0"], "scheme must be one of redis, rediss, unix"),
        (["--to", "redis://127.0.0.1:1/0"], "redis://127.0.0.1:1/0: no Redis server answers"),
        (["--to", f"{REDIS_URL}?prefix=a/b"], "prefix must match"),
        (["--to", url, "--day", "3"], "no such published store version"),
    ):
        r = runner.invoke(main, ["publish", "--work", work, *args])
        assert r.exit_code == 1, r.output
        assert r.stderr.startswith("Error: ") and msg in r.stderr and len(r.stderr.splitlines()) == 1
    r = runner.invoke(main, ["serve", "--work", work, "--feature-store", "http://x"])
    assert r.exit_code == 1 and "scheme must be one of" in r.stderr


def test_daily_cycle_publishes_the_serving_version(
    ws_copy: tuple[Workspace, dict], redis_prefix: str
) -> None:
    from dataclasses import replace

    from workflow.cycle import CycleConfig, load_cycle_config, run_days

    ws, _ = ws_copy
    day = latest_day(ws)
    cfg = replace(load_cycle_config(ws, "cpu"), feature_store=f"{REDIS_URL}?prefix={redis_prefix}")
    assert CycleConfig.from_json(cfg.to_json(), "cpu").feature_store == cfg.feature_store
    served = open_version(embeddings_dir(ws, "ctr"), day).manifest["artifact_id"]
    online = OnlineStore(_cfg(redis_prefix))
    try:
        # days already published are skipped, but the publish step runs: a failed publish completes on a rerun
        out = run_days(ws, [day - 1], cfg)
        assert out[0]["skipped"] is True
        # and it publishes the version the workspace serves, not the rerun day's: never moved back
        assert online.live_id("ctr") == served
        slot = online.live_slot("ctr")
        run_days(ws, [day], cfg)
        assert online.live_slot("ctr") == slot  # live already: a no-op
    finally:
        online.close()
    with pytest.raises(ValueError, match="scheme must be one of"):
        replace(cfg, feature_store="http://127.0.0.1:6379")


def test_a_new_day_waits_for_its_online_publish(
    ws_copy: tuple[Workspace, dict], redis_prefix: str, tmp_path: Path
) -> None:
    """The daily cycle's order: local store, index, ranker, then the online publish. Until the online store
    has the new store version, the new set is pending (not a failure) and the old set keeps serving."""
    ws, _ = ws_copy
    day = latest_day(ws)
    withdraw(ws, day, tmp_path / "aside")
    publish_workspace(ws, _cfg(redis_prefix))  # the version served before the new day
    cfg = ServiceConfig(work=str(ws.root), feature_store=_cfg(redis_prefix), watch_interval_s=0.1)
    app = create_app(cfg)
    mgr = app.state.manager
    with TestClient(app) as c:
        old = mgr.current.versions
        user = int(ws.dataset().users(["user_id"]).column("user_id").to_numpy()[0])
        republish(ws, day, tmp_path / "aside")
        wait_until(lambda: mgr.pending is not None)
        r = c.post("/v1/query", json={"user_id": user})
        assert r.status_code == 200 and r.json()["versions"] == old
        ready = c.get("/readyz").json()
        assert ready["versions"] == old and ready["pending"]["key"]["day"] == day + 1
        assert mgr.swap_failures == 0 and ready["last_failure"] is None
        publish_workspace(ws, _cfg(redis_prefix))  # the cycle's last step
        wait_until(lambda: mgr.current.versions != old)
        assert mgr.pending is None and mgr.swaps == 1 and mgr.swap_failures == 0
        doc = c.post("/v1/query", json={"user_id": user}).json()
        assert doc["day"] == day + 1 and doc["versions"] == mgr.current.versions
