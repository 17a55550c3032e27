"""Contract, second part: operations (/metrics, /readyz, JSON logs, --workers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from contract_harness import ScriptedUpstream, Served, free_port, serve

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
METRICS = [
    "igris_gateway_requests_total",
    "igris_gateway_request_duration_seconds",
    "igris_upstream_response_seconds",
    "igris_gateway_open_streams",
    "igris_audit_queue_depth",
    "igris_audit_events_written_total",
    "igris_audit_events_spilled_total",
    "igris_rate_limited_total",
    "igris_credential_refresh_total",
]


def test_healthz_stays_the_liveness_check(gw: Served) -> None:
    """/healthz answers 200 without a key."""
    assert httpx.get(gw.url + "/healthz").status_code == 200


def test_readyz(gw: Served) -> None:
    """/readyz answers 200 when the store answers and the audit keeps up."""
    r = httpx.get(gw.url + "/readyz")
    assert r.status_code == 200, r.text


def test_metrics_not_on_the_public_listener(gw: Served) -> None:
    """/metrics is not served on the public port by default."""
    r = httpx.get(gw.url + "/metrics")
    assert r.status_code in (401, 403, 404)
    assert "igris_gateway_requests_total" not in r.text


def test_metrics_on_their_own_port(
    tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream
) -> None:
    """--metrics-port/--metrics-host serve Prometheus text without a key, with the named series."""
    home = tmp_path_factory.mktemp("contract-metrics") / "home"
    port = free_port()
    with serve(home, "--metrics-port", str(port), "--metrics-host", "127.0.0.1") as s:
        c = s.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
        assert httpx.post(c["gatewayUrl"], headers=s.h(), json=PING).status_code == 200
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        for name in METRICS:
            assert name in r.text, name
        assert "igris_gateway_request_duration_seconds_bucket" in r.text
        assert "igris_upstream_response_seconds_bucket" in r.text
        line = next(
            ln
            for ln in r.text.splitlines()
            if ln.startswith("igris_gateway_requests_total{") and c["slug"] in ln
        )
        assert 'outcome="ok"' in line
        assert s.admin not in r.text


def test_json_logs(tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream) -> None:
    """--log-format json: one JSON object per line; an access line per request, no secrets."""
    home = tmp_path_factory.mktemp("contract-logs") / "home"
    with serve(home, "--log-format", "json") as s:
        c = s.create_connection(
            None, upstreamUrl=scripted.base_url + "/echo", credential="log-canary-cred-55"
        )
        key, kid = s.mcp_key()
        httpx.post(
            c["gatewayUrl"],
            json=PING,
            headers=s.h(
                key, **{"X-Igris-User": "loguser", "X-Igris-Metadata": '{"m": "meta-canary-66"}'}
            ),
        )
        time.sleep(0.5)
        text = s.log_text()
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("{")]
    assert lines
    objs = [json.loads(ln) for ln in lines]
    access = [o for o in objs if c["slug"] in json.dumps(o) and "loguser" in json.dumps(o)]
    assert access, objs[-5:]
    blob = json.dumps(access[0])
    for word in ("200", kid):
        assert word in blob
    for secret in ("log-canary-cred-55", key, "meta-canary-66"):
        assert secret not in text


def test_ops_flags_in_help(gw: Served) -> None:
    """serve takes --metrics-port, --metrics-host and --log-format."""
    out = gw.cli("serve", "--help").stdout
    for flag in ("--metrics-port", "--metrics-host", "--log-format"):
        assert flag in out


def test_workers_share_one_port_and_changes(
    tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream
) -> None:
    """--workers 2 on SQLite: a disable made through one worker is honoured by all."""
    home = tmp_path_factory.mktemp("contract-workers") / "home"
    with serve(home, "--workers", "2") as s:
        children = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()
        assert len(children) >= 2
        c = s.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
        with httpx.Client(timeout=10) as http:
            for _ in range(6):  # new connections, so both workers see requests
                assert (
                    http.post(c["gatewayUrl"], headers=s.h(), json=PING, extensions={}).status_code
                    == 200
                )
        assert s.api("POST", f"/api/v1/virtual-keys/{c['slug']}/disable").status_code == 200
        deadline = time.monotonic() + 10
        while True:
            codes = {
                httpx.post(c["gatewayUrl"], headers=s.h(), json=PING).status_code for _ in range(10)
            }
            if codes == {403} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert codes == {403}
