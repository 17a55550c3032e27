"""Tests for igris_mw._ops.metrics and the gateway's metrics, in process
(httpx.ASGITransport) against a real aiohttp upstream on loopback."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families

from igris_mw import IgrisGateway
from igris_mw._gateway import _UNKNOWN_CONNECTION
from igris_mw._ops.metrics import BUCKETS, UNKNOWN_CONNECTION, Metrics
from igris_mw.testing import FixedKeyring, MemoryStore

TOKEN = "metrics-upstream-canary-41d2"
RPC = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{sorted labels: value}`` of every sample called ``name`` in an exposition."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def requests_by(text: str) -> dict[tuple[str, str], float]:
    return {
        (dict(k)["connection"], dict(k)["outcome"]): v
        for k, v in samples(text, "igris_gateway_requests_total").items()
    }


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "no"}, status=401)
        if request.path.endswith("/events"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"data: one\n\n")
            return resp
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def gateway(upstream: str) -> AsyncIterator[tuple[IgrisGateway, str]]:
    gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring("metrics"), metrics=True)
    await gw.startup()
    _, key = await gw.service.create_api_key({"name": "k", "scopes": ["mcp"]})
    for slug in ("conn-a", "conn-b"):
        await gw.service.create_connection(
            {"slug": slug, "name": slug, "upstreamUrl": upstream + "/mcp", "credential": TOKEN}
        )
    yield gw, key
    await gw.aclose()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test")


async def scrape(gw: IgrisGateway) -> str:
    async with client(gw.metrics_app) as c:
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def test_contract_metric_names_are_exposed() -> None:
    """Every metric the contract names is in the exposition, with its type."""
    body, _ = Metrics().exposition()
    families = text_string_to_metric_families(body.decode())
    # prometheus_client's *_created series (counter creation times) are standard; not ours.
    types = {f.name: f.type for f in families if not f.name.endswith("_created")}
    assert types == {
        "igris_gateway_requests": "counter",
        "igris_gateway_request_duration_seconds": "histogram",
        "igris_upstream_response_seconds": "histogram",
        "igris_gateway_open_streams": "gauge",
        "igris_audit_queue_depth": "gauge",
        "igris_audit_events_written": "counter",
        "igris_audit_events_spilled": "counter",
        "igris_rate_limited": "counter",
        "igris_credential_refresh": "counter",
    }


def test_histogram_buckets_span_a_tenth_of_a_millisecond_to_a_minute() -> None:
    """Latency buckets run from 0.1 ms to 60 s, ascending."""
    assert BUCKETS[0] == 0.0001
    assert BUCKETS[-1] == 60.0
    assert list(BUCKETS) == sorted(set(BUCKETS))
    m = Metrics()
    m.request("conn-a", "ok", 0.00005, 0.00005)
    m.request("conn-a", "ok", 61.0, None)
    text = m.exposition()[0].decode()
    buckets = samples(text, "igris_gateway_request_duration_seconds_bucket")
    le = {dict(k)["le"]: v for k, v in buckets.items()}
    assert le["0.0001"] == 1
    assert le["60.0"] == 1
    assert le["+Inf"] == 2
    assert samples(text, "igris_upstream_response_seconds_count") == {
        (("connection", "conn-a"),): 1
    }


def test_series_are_bounded() -> None:
    """Past max_series label pairs, new pairs are counted under (_unknown, other)."""
    m = Metrics(max_series=3)
    for i in range(50):
        m.request(f"conn-{i}", "ok", 0.001, None)
    counts = requests_by(m.exposition()[0].decode())
    assert len(counts) == 4
    assert counts[(UNKNOWN_CONNECTION, "other")] == 47
    assert sum(counts.values()) == 50


def test_credential_refresh_results_are_a_fixed_set() -> None:
    """An unexpected refresh result is counted as 'failed', never as a new label value."""
    m = Metrics()
    m.credential_refresh("conn-a", "ok")
    m.credential_refresh("conn-a", "surprise-" + secrets.token_hex(4))
    got = samples(m.exposition()[0].decode(), "igris_credential_refresh_total")
    assert got == {
        (("connection", "conn-a"), ("result", "ok")): 1,
        (("connection", "conn-a"), ("result", "failed")): 1,
    }


def test_gateway_and_module_agree_on_the_unknown_label() -> None:
    """The gateway labels unknown slugs with the metrics module's constant."""
    assert _UNKNOWN_CONNECTION == UNKNOWN_CONNECTION


async def test_requests_are_counted_by_connection_and_outcome(
    gateway: tuple[IgrisGateway, str],
) -> None:
    """Proxied, refused and unknown-slug requests land in the right series."""
    gw, key = gateway
    auth = {"Authorization": f"Bearer {key}"}
    async with client(gw) as c:
        for _ in range(3):
            assert (await c.post("/v1/mcp/conn-a", json=RPC, headers=auth)).status_code == 200
        assert (await c.post("/v1/mcp/conn-b", json=RPC, headers=auth)).status_code == 200
        bad = {"Authorization": "Bearer ig_nope"}
        assert (await c.post("/v1/mcp/conn-b", json=RPC, headers=bad)).status_code == 401
        assert (await c.post("/v1/mcp/no-such", json=RPC, headers=auth)).status_code == 404
    text = await scrape(gw)
    assert requests_by(text) == {
        ("conn-a", "ok"): 3,
        ("conn-b", "ok"): 1,
        ("conn-b", "denied"): 1,
        (UNKNOWN_CONNECTION, "not_found"): 1,
    }
    durations = samples(text, "igris_gateway_request_duration_seconds_count")
    assert durations[(("connection", "conn-a"),)] == 3
    upstream = samples(text, "igris_upstream_response_seconds_count")
    upstream = {k: v for k, v in upstream.items() if v}  # refusals never went upstream
    assert upstream == {(("connection", "conn-a"),): 3, (("connection", "conn-b"),): 1}


async def test_random_slugs_add_no_series(gateway: tuple[IgrisGateway, str]) -> None:
    """A flood of random slugs (authenticated or not) is counted in one series."""
    gw, key = gateway
    async with client(gw) as c:
        for i in range(60):
            headers = {"Authorization": f"Bearer {key}" if i % 2 else "Bearer ig_x"}
            await c.post(f"/v1/mcp/r{secrets.token_hex(6)}", json=RPC, headers=headers)
    text = await scrape(gw)
    counts = requests_by(text)
    assert {conn for conn, _ in counts} == {UNKNOWN_CONNECTION}
    assert sum(counts.values()) == 60
    assert "r" not in {
        dict(k).get("connection", "")[:1]
        for k in samples(text, "igris_gateway_request_duration_seconds_count")
    }


async def test_audit_queue_and_written_events_are_reported(
    gateway: tuple[IgrisGateway, str],
) -> None:
    """The audit queue depth and written count follow the audit writer."""
    gw, key = gateway
    async with client(gw) as c:
        for _ in range(4):
            await c.post("/v1/mcp/conn-a", json=RPC, headers={"Authorization": f"Bearer {key}"})
    assert await gw.audit.flush(5)
    text = await scrape(gw)
    assert samples(text, "igris_audit_queue_depth") == {(): 0}
    assert samples(text, "igris_audit_events_written_total")[()] >= 4
    assert samples(text, "igris_audit_events_spilled_total") == {(): 0}


async def test_rate_limited_outcome_counts_as_rate_limited() -> None:
    """A request audited with outcome rate_limited also counts in igris_rate_limited_total."""
    m = Metrics()
    m.request("conn-a", "rate_limited", 0.0001, None)
    m.rate_limited()
    got = samples(m.exposition()[0].decode(), "igris_rate_limited_total")
    assert got == {(("connection", "conn-a"),): 1, (("connection", UNKNOWN_CONNECTION),): 1}


async def test_metrics_app_answers_get_and_refuses_other_methods() -> None:
    """The mountable app answers GET and HEAD; POST is 405."""
    m = Metrics()
    async with client(m.app) as c:
        assert (await c.get("/")).status_code == 200
        head = await c.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""
        post = await c.post("/metrics")
        assert post.status_code == 405


async def test_metrics_are_off_unless_asked() -> None:
    """Without metrics=True and without taking metrics_app, nothing is collected."""
    gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring("off"))
    assert gw.metrics is None
    app = gw.metrics_app
    assert gw.metrics is not None
    assert app is gw.metrics.app


def test_prometheus_multiprocess_mode_aggregates_processes(tmp_path: Any) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, two processes' counts are summed in one scrape, no pid."""
    script = (
        "from igris_mw._ops.metrics import Metrics\n"
        "m = Metrics()\n"
        "m.request('conn-a', 'ok', 0.01, 0.005)\n"
        "m.stream_opened()\n"
        "import os, sys; sys.stdout.write(m.exposition()[0].decode())\n"
        "sys.stderr.write(str(os.getpid()))\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True
        )
        # What the supervisor of serve --workers does when a worker exits.
        multiprocess.mark_process_dead(int(done.stderr), str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert requests_by(out) == {("conn-a", "ok"): 3}
    assert "pid" not in out
    # livesum: the streams of processes that exited are not counted
    assert samples(out, "igris_gateway_open_streams") == {(): 1}


def test_exposition_passes_promtool(tmp_path: Any) -> None:
    """promtool check metrics accepts the exposition (promtool from Debian's prometheus)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1":
            pytest.fail("IGRIS_TEST_REQUIRE_BACKENDS=1 but promtool is not installed")
        pytest.skip("promtool is not installed")
    m = Metrics()
    m.request("conn-a", "ok", 0.01, 0.005)
    m.request(UNKNOWN_CONNECTION, "not_found", 0.0002, None)
    m.credential_refresh("conn-a", "ok")
    body, _ = m.exposition()
    done = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == b""


DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_uses_only_exposed_series() -> None:
    """Every igris_* series the dashboard queries is one the gateway exposes."""
    m = Metrics()
    m.request("conn-a", "ok", 0.01, 0.005)
    m.rate_limited("conn-a")
    m.credential_refresh("conn-a", "ok")
    exposed = {
        s.name
        for f in text_string_to_metric_families(m.exposition()[0].decode())
        for s in f.samples
    }
    queried = {name for e in _dashboard_exprs() for name in re.findall(r"igris_[a-z_]+", e)}
    assert queried, "the dashboard queries nothing"
    assert queried <= exposed, queried - exposed
    for needed in (
        "igris_gateway_requests_total",
        "igris_gateway_open_streams",
        "igris_audit_queue_depth",
        "igris_upstream_response_seconds_bucket",
    ):
        assert needed in queried


def test_grafana_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool accepts every dashboard query (Grafana variables filled in) as a rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1":
            pytest.fail("IGRIS_TEST_REQUIRE_BACKENDS=1 but promtool is not installed")
        pytest.skip("promtool is not installed")
    rules = [
        {
            "record": f"igris:dashboard_{i}",
            "expr": e.replace("$__rate_interval", "5m").replace("$connection", ".*"),
        }
        for i, e in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_metrics_app_mounts_in_the_wrapped_starlette_app(upstream: str) -> None:
    """As documented: Route("/metrics", gateway.metrics_app) in the app the gateway wraps."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    inner = Starlette()
    gw = IgrisGateway(inner, store=MemoryStore(), crypto=FixedKeyring("mount"))
    inner.router.routes.append(Route("/metrics", gw.metrics_app))
    await gw.startup()
    try:
        _, key = await gw.service.create_api_key({"name": "k", "scopes": ["mcp"]})
        await gw.service.create_connection(
            {"slug": "mounted", "name": "m", "upstreamUrl": upstream + "/mcp", "credential": TOKEN}
        )
        async with client(gw) as c:
            auth = {"Authorization": f"Bearer {key}"}
            r = await c.post("/v1/mcp/mounted", json=RPC, headers=auth)
            assert r.status_code == 200
            scraped = await c.get("/metrics")
    finally:
        await gw.aclose()
    assert scraped.status_code == 200
    assert requests_by(scraped.text) == {("mounted", "ok"): 1}


def test_audit_counts_follow_the_writer_including_quarantined_when_it_has_them() -> None:
    """written/spilled always; quarantined only from a writer whose stats count it."""

    class Stats:
        written, spilled = 7, 2

    class QuarantiningStats(Stats):
        quarantined = 3

    class Writer:
        pending = 5

        def __init__(self, stats: Any) -> None:
            self.stats = stats

    for stats, expected in ((Stats(), None), (QuarantiningStats(), 3)):
        m = Metrics()
        m.watch_audit(Writer(stats))
        text = m.exposition()[0].decode()
        assert samples(text, "igris_audit_queue_depth") == {(): 5}
        assert samples(text, "igris_audit_events_written_total") == {(): 7}
        assert samples(text, "igris_audit_events_spilled_total") == {(): 2}
        got = samples(text, "igris_audit_events_quarantined_total")
        assert got == ({} if expected is None else {(): expected})


async def test_aggregated_refusals_are_each_counted(gateway: tuple[IgrisGateway, str]) -> None:
    """20 bad-key requests on a connection: the audit may aggregate them, the
    counter and the access lines count each one."""
    gw, _ = gateway
    async with client(gw) as c:
        for _ in range(20):
            r = await c.post("/v1/mcp/conn-a", json=RPC, headers={"Authorization": "Bearer ig_x"})
            assert r.status_code in (401, 429)
    counts = requests_by(await scrape(gw))
    assert sum(v for (conn, _), v in counts.items() if conn == "conn-a") == 20
