"""The HTTP service: every endpoint's status codes and JSON, limits and field-naming errors, the admin token,
hot swap (a new day, a rollback, a corrupt version refused), and a real server under concurrent requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from ranking.train import ranker_dir

with warnings.catch_warnings():  # starlette's TestClient warns that it runs over httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from adserving.two_stage import ServeConfig, TwoStage
from adslog.workspace import Workspace, version_name
from cli import main
from dermserve import ServiceConfig, create_app
from tests.serving import free_port, latest_day, republish, withdraw
from workflow.rollback import rollback

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-the-admin-endpoint"
LIMITS = dict(max_k=100, max_candidates=600, max_batch=8, max_exclude=50, max_body_bytes=4096)


@pytest.fixture(scope="module")
def served(demo_ws: tuple[Path, dict]) -> Any:
    app = create_app(ServiceConfig(work=str(demo_ws[0]), admin_token=TOKEN, **LIMITS))  # type: ignore[arg-type]
    with TestClient(app) as c:
        yield c, app


def _users(app: Any, n: int = 3) -> list[int]:
    return [int(u) for u in app.state.manager.current.ts.retriever.store.ids("user")[:n]]


def _wait(cond: Any, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_query_returns_the_derm_query_document(served: Any, demo_ws: tuple[Path, dict]) -> None:
    c, app = served
    user = _users(app)[0]
    r = c.post("/v1/query", json={"user_id": user, "k": 10, "candidates": 100, "max_per_advertiser": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    cli = CliRunner().invoke(
        main,
        ["query", "--work", str(demo_ws[0]), "--user", str(user), "--k", "10", "--candidates", "100"]
        + ["--max-per-advertiser", "2", "--json"],
    )
    assert cli.exit_code == 0, cli.stderr
    assert doc == json.loads(cli.stdout)
    assert doc["path"] == "ann" and len(doc["results"]) == 10
    assert doc["versions"] == app.state.manager.current.versions


def test_batch_equals_single_queries_and_reports_unknown_users(served: Any) -> None:
    c, app = served
    users = _users(app, 3)
    unknown = 10**15
    r = c.post(
        "/v1/query/batch", json={"user_ids": [users[0], unknown, *users[1:]], "k": 8, "candidates": 80}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["versions"] == app.state.manager.current.versions
    res = body["results"]
    assert res[1] == {
        "user_id": unknown,
        "error": {"status": 404, "field": "user_id", "message": res[1]["error"]["message"]},
    }
    assert "not in the dataset's users table" in res[1]["error"]["message"]
    for user, doc in zip(users, [res[0], res[2], res[3]], strict=True):
        single = c.post("/v1/query", json={"user_id": user, "k": 8, "candidates": 80}).json()
        assert doc["user_id"] == user and doc["versions"] == single["versions"]
        # one ranker pass over all users: equal up to float rounding of the batched forward pass
        got = {x["ad_id"]: x["p_ctr"] for x in doc["results"]}
        want = {x["ad_id"]: x["p_ctr"] for x in single["results"]}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[a] for a in want], list(want.values()), rtol=1e-4)


def test_query_many_equals_query(demo_ws: tuple[Path, dict]) -> None:
    ts = TwoStage(Workspace.open(demo_ws[0]))
    users = [int(u) for u in ts.retriever.store.ids("user")[:5]]  # type: ignore[union-attr]
    cfg = ServeConfig(k=20, candidates=150)
    many = ts.query_many(users, cfg)
    for u, doc in zip(users, many, strict=True):
        one = ts.query(u, cfg)
        assert isinstance(doc, dict)
        assert [x["ad_id"] for x in doc["results"]] == [x["ad_id"] for x in one["results"]]
        np.testing.assert_allclose(
            [x["ecpm"] for x in doc["results"]], [x["ecpm"] for x in one["results"]], rtol=1e-4
        )


def test_exclusions(served: Any) -> None:
    c, app = served
    user = _users(app)[1]
    base = c.post("/v1/query", json={"user_id": user, "k": 10, "candidates": 100}).json()["results"]
    ads = [x["ad_id"] for x in base[:3]]
    adv = base[3]["advertiser_id"]
    r = c.post(
        "/v1/query",
        json={
            "user_id": user,
            "k": 10,
            "candidates": 100,
            "exclude_ad_ids": ads,
            "exclude_advertiser_ids": [adv],
        },
    )
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 10
    assert not {x["ad_id"] for x in res} & set(ads)
    assert adv not in {x["advertiser_id"] for x in res}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "user_id"),
        ({"user_id": "12"}, 422, "user_id"),
        ({"user_id": True}, 422, "user_id"),
        ({"user_id": 2**63}, 422, "user_id"),
        ({"user_id": 1, "k": 0}, 422, "k"),
        ({"user_id": 1, "k": 101}, 422, "k"),
        ({"user_id": 1, "k": 1.5}, 422, "k"),
        ({"user_id": 1, "candidates": 601}, 422, "candidates"),
        ({"user_id": 1, "k": 60, "candidates": 50}, 422, "candidates"),
        ({"user_id": 1, "order": "random"}, 422, "order"),
        ({"user_id": 1, "max_per_advertiser": -1}, 422, "max_per_advertiser"),
        ({"user_id": 1, "candidates": 100, "exclude_ad_ids": list(range(51))}, 422, "exclude_ad_ids"),
        ({"user_id": 1, "exclude_advertiser_ids": ["a"]}, 422, "exclude_advertiser_ids.0"),
        ({"user_id": 1, "colour": "red"}, 422, "colour"),
        ({"user_id": 10**15}, 404, "user_id"),
        ({"user_id": 1, "exclude_ad_ids": list(range(2000))}, 413, "body"),
    ],
)
def test_bad_query_is_a_json_error_naming_the_field(
    served: Any, body: dict[str, Any], status: int, field: str
) -> None:
    c, _ = served
    r = c.post("/v1/query", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["field"] == field and err["message"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(
    ("content", "status", "field"),
    [
        (b"{not json", 422, "body"),
        (b"[1, 2]", 422, "body"),
        (json.dumps({"user_ids": []}).encode(), 422, "user_ids"),
        (json.dumps({"user_ids": list(range(9))}).encode(), 422, "user_ids"),
        (json.dumps({"user_ids": [1, -(2**63) - 1]}).encode(), 422, "user_ids"),
    ],
)
def test_bad_batch_is_a_json_error(served: Any, content: bytes, status: int, field: str) -> None:
    c, _ = served
    r = c.post("/v1/query/batch", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field


def test_chunked_body_without_length_is_refused(served: Any) -> None:
    c, _ = served
    r = c.post(
        "/v1/query", content=iter([b'{"user_id": ', b"1}"]), headers={"content-type": "application/json"}
    )
    assert r.status_code == 411 and r.json()["error"]["field"] == "Content-Length"


def test_health_ready_versions_and_metrics(served: Any) -> None:
    c, app = served
    schema = c.get("/openapi.json").json()
    assert {"/v1/query", "/v1/query/batch", "/readyz", "/metrics"} <= set(schema["paths"])
    vset = app.state.manager.current
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["day"] == vset.day and body["versions"] == vset.versions
    assert body["check"]["recall_at_10"] >= 0.9 and body["last_failure"] is None
    v = c.get("/v1/versions").json()
    assert v["serving"]["versions"] == vset.versions and v["swaps"] == 0 and v["swap_failures"] == 0
    assert v["config"]["max_k"] == 100 and v["config"]["admin_reload"] is True
    assert TOKEN not in json.dumps(v)
    c.post("/v1/query", json={"user_id": _users(app)[0]})
    c.post("/v1/query", json={"user_id": 1, "k": 0})
    text = c.get("/metrics")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    lines = text.text.splitlines()

    def value(prefix: str) -> float:
        return float(next(x for x in lines if x.startswith(prefix)).rsplit(" ", 1)[1])

    assert value('derm_requests_total{endpoint="/v1/query",status="200"}') >= 1
    assert value('derm_requests_total{endpoint="/v1/query",status="422"}') >= 1
    count = value('derm_request_seconds_count{endpoint="/v1/query"}')
    assert value('derm_request_seconds_bucket{endpoint="/v1/query",le="+Inf"}') == count >= 2
    assert value("derm_serving_day ") == vset.day and value("derm_ready ") == 1
    assert value("derm_swaps_total ") == 0 and value("derm_swap_failures_total ") == 0
    info = next(x for x in lines if x.startswith("derm_serving_version_info{"))
    assert f'ranker="{vset.versions["ranker"]}"' in info and info.endswith(" 1")
    assert value("derm_batch_users_count ") >= 1


def test_admin_reload_needs_the_token(served: Any) -> None:
    c, app = served
    r = c.post("/v1/admin/reload")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["field"] == "Authorization"
    for header in ("Bearer wrong-token-of-some-length", f"Basic {TOKEN}", f"Bearer {TOKEN}x"):
        r = c.post("/v1/admin/reload", headers={"Authorization": header})
        assert r.status_code in (401, 403), header
    assert app.state.manager.last_poll_unix is not None
    before = app.state.manager.last_poll_unix
    r = c.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert (
        r.json()["swapped"] is False and r.json()["current"]["versions"] == app.state.manager.current.versions
    )
    assert app.state.manager.last_poll_unix > before


def test_not_ready_without_versions_and_popular_policy_without_token(
    demo_ws: tuple[Path, dict], tmp_path: Path
) -> None:
    empty = Workspace.create(tmp_path / "empty", Workspace.open(demo_ws[0]).data_path())
    with TestClient(create_app(ServiceConfig(work=str(empty.root)))) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert "nothing is published" in r.json()["last_failure"]["error"]
        q = c.post("/v1/query", json={"user_id": 1})
        assert q.status_code == 503 and "no version set is loaded" in q.json()["error"]["message"]
        text = c.get("/metrics").text
        assert "derm_ready 0" in text and "derm_swap_failures_total 0" in text  # nothing was tried
    cfg = ServiceConfig(work=str(demo_ws[0]), unknown_user="popular")  # type: ignore[arg-type]
    with TestClient(create_app(cfg)) as c:
        r = c.post("/v1/query", json={"user_id": 10**15, "k": 5, "candidates": 50})
        assert r.status_code == 200 and r.json()["path"] == "cold_start_popular"
        assert len(r.json()["results"]) == 5
        top = [x["ad_id"] for x in r.json()["results"]]
        body = {"user_id": 10**15, "k": 5, "candidates": 50, "exclude_ad_ids": top[:2]}
        again = c.post("/v1/query", json=body).json()["results"]
        assert len(again) == 5 and not {x["ad_id"] for x in again} & set(top[:2])
        assert [x["ad_id"] for x in again][:3] == top[2:]  # the rest of the cold-start list moves up
        r = c.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 404 and "disabled" in r.json()["error"]["message"]


def test_hot_swap_new_day_corrupt_version_and_rollback(
    ws_copy: tuple[Workspace, dict], tmp_path: Path
) -> None:
    ws, _ = ws_copy
    day = latest_day(ws)
    aside = tmp_path / "aside"
    withdraw(ws, day, aside)  # serve day - 1's set first
    cfg = ServiceConfig(work=str(ws.root), watch_interval_s=0.1, retry_failed_s=3600, admin_token=TOKEN)
    app = create_app(cfg)
    mgr = app.state.manager
    with TestClient(app) as c:
        old = mgr.current.versions
        assert old["index"].startswith(f"index:{version_name(day - 1)}:")
        user = _users(app)[0]
        # a corrupt ranker in the new set: refused, the old set keeps serving, /readyz and /metrics say so
        weights = aside / "ranker" / version_name(day) / "weights.pt"
        good = weights.read_bytes()
        weights.write_bytes(good[:-64] + bytes(64))
        republish(ws, day, aside)
        _wait(lambda: mgr.swap_failures >= 1)
        r = c.post("/v1/query", json={"user_id": user})
        assert r.status_code == 200 and r.json()["versions"] == old
        ready = c.get("/readyz").json()
        assert ready["versions"] == old and "sha256 differs" in ready["last_failure"]["error"]
        metrics = c.get("/metrics").text
        assert "derm_swap_failures_total 1" in metrics and "derm_last_swap_failure_info{error=" in metrics
        assert mgr.swaps == 0
        # repaired: the failed set waits for retry_failed_s, a forced reload loads it now
        (ranker_dir(ws) / version_name(day) / "weights.pt").write_bytes(good)
        time.sleep(0.3)
        assert mgr.current.versions == old
        r = c.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["swapped"] is True
        new = mgr.current.versions
        assert new["index"].startswith(f"index:{version_name(day)}:") and mgr.swaps == 1
        doc = c.post("/v1/query", json={"user_id": user}).json()
        assert doc["versions"] == new and doc["day"] == day + 1
        assert c.get("/readyz").json()["last_failure"] is None
        # rollback moves the pointers back: picked up by the watcher like any new set
        with ws.lock():
            rollback(ws, day - 1)
        _wait(lambda: mgr.current.versions == old)
        assert mgr.swaps == 2
        assert c.post("/v1/query", json={"user_id": user}).json()["versions"] == old


def test_poll_racing_a_rollback_never_serves_a_mixed_set(
    ws_copy: tuple[Workspace, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback that moves the pointers between the watcher's reads of them (here: right after the rule has
    picked the day) is never served as the old day beside the restored versions; the next poll serves the
    restored set under its own day."""
    from dermserve.versions import VersionManager

    ws, _ = ws_copy
    day = latest_day(ws)
    mgr = VersionManager(ServiceConfig(work=str(ws.root), retry_failed_s=3600))
    real = type(mgr.ws).serving_version
    calls = {"n": 0}

    def racing(self: Workspace, parents: list[Path], d: int, **kw: Any) -> int | None:
        out = real(self, parents, d, **kw)
        calls["n"] += 1
        if calls["n"] == 1:  # the rule has read the pointers of day `day`: now a rollback moves them
            with self.lock():
                rollback(self, day - 1)
        return out

    monkeypatch.setattr(type(mgr.ws), "serving_version", racing)
    mgr.poll()

    def served_day_of_versions() -> tuple[int, int]:
        cur = mgr.current
        assert cur is not None
        days = {v.split(":")[1] for v in cur.versions.values()}
        assert len(days) == 1, cur.versions
        return cur.day, int(days.pop()[len("day=") :])

    if mgr.current is not None:
        served, of = served_day_of_versions()
        assert served == of + 1
    mgr.poll()
    assert served_day_of_versions() == (day, day - 1)


def test_swap_under_concurrent_http_requests(ws_copy: tuple[Workspace, dict], tmp_path: Path) -> None:
    """A real server process; four clients query without pause while a new day is published and then
    rolled back: no request fails and every response carries one consistent version set."""
    import httpx

    ws, _ = ws_copy
    day = latest_day(ws)
    aside = tmp_path / "aside"
    withdraw(ws, day, aside)
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cli", "serve", "--work", str(ws.root), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--watch-interval", "0.1"], cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as h:

            def ready() -> dict[str, Any] | None:
                try:
                    r = h.get("/readyz")
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "server.log").read_text()
                    return None
                return r.json() if r.status_code == 200 else None

            _wait(lambda: ready() is not None, 120)
            first = ready()
            assert first is not None
            users = [int(u) for u in ws.dataset().users(["user_id"]).column("user_id").to_numpy()[:40]]
            stop = threading.Event()
            seen: list[tuple[int, int, str]] = []  # (status, day, versions as JSON)

            def client(seed: int) -> None:
                rng = np.random.default_rng(seed)
                with httpx.Client(base_url=url, timeout=30) as hc:
                    while not stop.is_set():
                        r = hc.post("/v1/query", json={"user_id": int(rng.choice(users)), "k": 20})
                        doc = r.json()
                        ok = r.status_code == 200
                        seen.append(
                            (r.status_code, doc["day"] if ok else -1, json.dumps(doc.get("versions") or doc))
                        )

            threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            republish(ws, day, aside)
            _wait(lambda: (ready() or first)["day"] == day + 1, 60)
            time.sleep(0.5)
            with ws.lock():
                rollback(ws, day - 1)
            _wait(lambda: (ready() or first)["day"] == day, 60)
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(60)
            swapped = h.get("/v1/versions").json()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert [s for s in seen if s[0] != 200] == []
    sets = {(d, v) for _, d, v in seen}
    old = (day, json.dumps(first["versions"]))
    assert old in sets and len(sets) == 2, "\n".join(
        map(str, sorted(sets))
    )  # the old and the new set, never a mix
    (new,) = sets - {old}
    assert new[0] == day + 1 and f"index:{version_name(day)}:" in new[1]
    assert swapped["swaps"] == 2 and swapped["swap_failures"] == 0
    assert len(seen) > 20


def test_micro_batcher_groups_concurrent_queries(served: Any) -> None:
    """Concurrent queries with the same parameters share one ranker pass (up to max_users); other parameters
    go in their own pass; an unknown user fails alone; each answer equals the single query's."""
    import asyncio

    from adserving.auction import Order
    from dermserve.batcher import Batcher, QueryParams

    _, app = served
    vset = app.state.manager.current
    users = _users(app, 9)
    sizes: list[int] = []
    batcher = Batcher(window_s=0.05, max_users=4, on_batch=sizes.append)
    p = QueryParams(ServeConfig(k=10, candidates=100))
    other = QueryParams(ServeConfig(k=10, candidates=100, order=Order.RANK_SCORE))

    async def go() -> list[Any]:
        jobs = [batcher.submit(vset, p, u) for u in users[:6]]
        jobs += [batcher.submit(vset, other, users[6]), batcher.submit(vset, p, 10**15)]
        jobs += [batcher.submit(vset, p, u) for u in users[7:]]
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        out = asyncio.run(go())
    finally:
        batcher.close()
    assert sizes == [4, 4, 1, 1], sizes  # 4 of p; the next 4 of p (unknown user included); other; p's last
    assert isinstance(out[7], Exception) and "not in the dataset's users table" in str(out[7])
    for u, doc, params in zip(users[:6] + [users[6]], out[:7], [p] * 6 + [other], strict=True):
        single = vset.ts.query(u, params.config)
        assert doc["user_id"] == u and doc["versions"] == vset.versions
        assert {x["ad_id"] for x in doc["results"]} == {x["ad_id"] for x in single["results"]}
        np.testing.assert_allclose(
            [x["ecpm"] for x in doc["results"]], [x["ecpm"] for x in single["results"]], rtol=1e-4
        )
    assert out[8]["user_id"] == users[7] and out[9]["user_id"] == users[8]


def test_serve_cli_refuses_bad_options_before_listening(demo_ws: tuple[Path, dict], tmp_path: Path) -> None:
    runner = CliRunner()
    work = str(demo_ws[0])
    short = tmp_path / "short"
    short.write_text("abc\n")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for args, msg in (
        (["--work", str(tmp_path / "nowhere")], "workspace does not exist"),
        (["--work", work, "--admin-token-file", str(tmp_path / "missing")], "unreadable admin token file"),
        (["--work", work, "--admin-token-file", str(empty)], "admin token file is empty"),
        (["--work", work, "--admin-token-file", str(short)], "admin_token must be at least 16 characters"),
        (["--work", work, "--port", "70000"], "Invalid value for '--port'"),
        (["--work", work, "--feature-store", "redis://127.0.0.1:1/0"], "no Redis server answers"),
    ):
        r = runner.invoke(main, ["serve", *args])
        assert r.exit_code == 1, (args, r.output)
        assert r.stderr.startswith("Error: ") and msg in r.stderr, r.stderr
