"""`igris-mw serve --log-format json --metrics-port` as a real process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from igris_mw._errors import ConfigurationError
from igris_mw._settings import Settings

KEY_RE = re.compile(r"ig_[0-9A-Za-z]{36}")
CREDENTIAL = "ops-serve-credential-canary-9Qx"
METADATA_CANARY = "ops-metadata-canary-7Hd"
COOKIE_CANARY = "ops-cookie-canary-2Lp"
BODY_CANARY = "ops-body-canary-5Vt"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(home: Path, *args: str) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IGRIS_", "OTEL_"))}
    env["IGRIS_HOME"] = str(home)
    # Egress policy (when present) must let a connection point at this loopback server.
    env["IGRIS_ALLOW_UPSTREAM_NETWORKS"] = "127.0.0.0/8"
    log = home.parent / f"serve-{port}.log"
    err = log.with_suffix(".err")  # standard error; the tests read both
    with log.open("w") as out, err.open("w") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "igris_mw.cli", "serve", "--port", str(port), *args],
            env=env,
            cwd=home.parent,
            stdout=out,
            stderr=errors,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text() + err.read_text()
            assert time.monotonic() < deadline, log.read_text() + err.read_text()
            time.sleep(0.1)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(10)


def test_json_logs_and_metrics_listener(tmp_path: Path) -> None:
    """Every output line is JSON; the gateway request has one access line with the
    response's request id and no header value, body or credential; /metrics is on
    its own loopback listener and counts the request."""
    home = tmp_path / "data"
    metrics_port = _free_port()
    with _serve(home, "--log-format", "json", "--metrics-port", str(metrics_port)) as (url, log):
        admin = KEY_RE.findall(log.with_suffix(".err").read_text())[0]
        auth = {"Authorization": f"Bearer {admin}"}
        r = httpx.post(
            url + "/api/v1/virtual-keys",
            headers=auth,
            json={
                "slug": "self",
                "name": "self",
                "upstreamUrl": url + "/healthz",
                "credential": CREDENTIAL,
            },
        )
        assert r.status_code == 201, r.text
        r = httpx.post(
            url + "/api/v1/api-keys", headers=auth, json={"name": "m", "scopes": ["mcp"]}
        )
        mcp_key = r.json()["key"]
        r = httpx.post(
            url + "/v1/mcp/self?token=query-canary-3Wm",
            headers={
                "Authorization": f"Bearer {mcp_key}",
                "X-Igris-User": "alice@example.com",
                "X-Igris-Metadata": json.dumps({"note": METADATA_CANARY}),
                "Cookie": f"session={COOKIE_CANARY}",
            },
            json={"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": BODY_CANARY}},
        )
        request_id = r.headers["x-igris-request-id"]
        assert request_id.startswith("evt_")
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert httpx.get(url + "/metrics").status_code == 404  # not on the public listener
        time.sleep(0.3)  # let the access line reach the file
    stdout, stderr = log.read_text(), log.with_suffix(".err").read_text()
    text = stdout + stderr
    lines = [line for line in text.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line of both streams parses
    assert all({"time", "level", "logger", "message"} <= set(rec) for rec in records)
    logged = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert {rec["logger"] for rec in logged} >= {"igris_mw.access", "uvicorn.access"}

    access = [rec for rec in records if rec["logger"] == "igris_mw.access"]
    assert len(access) == 1
    line = access[0]
    assert line["requestId"] == request_id
    assert line["connection"] == "self"
    assert line["user"] == "alice@example.com"
    assert line["outcome"] == "ok"
    assert line["status"] == r.status_code
    assert line["apiKeyId"]
    assert line["latencyMs"] > 0
    assert line["path"] == "/v1/mcp/self"
    api_lines = [rec for rec in records if rec["logger"] == "uvicorn.access"]
    assert any(rec["path"] == "/api/v1/virtual-keys" for rec in api_lines)
    assert not any(rec["path"].startswith("/v1/mcp/") for rec in api_lines)

    for canary in (
        CREDENTIAL,
        METADATA_CANARY,
        COOKIE_CANARY,
        BODY_CANARY,
        mcp_key,
        "query-canary-3Wm",
    ):
        assert canary not in text
    assert sum(admin in line for line in lines) == 1  # the one-time first-start notice

    assert scraped.status_code == 200
    counts = {
        (s.labels["connection"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
        if s.name == "igris_gateway_requests_total"
    }
    assert counts == {("self", "ok"): 1}


def test_metrics_port_taken_is_one_line_error(tmp_path: Path) -> None:
    """A metrics port already in use stops serve with one line naming it, exit 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
        env["IGRIS_HOME"] = str(tmp_path / "data")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "igris_mw.cli",
                "serve",
                "--port",
                str(_free_port()),
                "--metrics-port",
                str(port),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert f"127.0.0.1:{port}" in errors[0]
    assert "Traceback" not in done.stderr


def test_metrics_port_equal_to_the_gateway_port_is_refused(tmp_path: Path) -> None:
    """--metrics-port equal to --port is a one-line configuration error, exit 2."""
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env["IGRIS_HOME"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-m", "igris_mw.cli", "serve", "--port", port, "--metrics-port", port],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "gateway's own port" in done.stderr
    assert "Traceback" not in done.stderr


def test_text_access_log_has_the_request_id(tmp_path: Path) -> None:
    """serve --access-log (text): the gateway request's line is the gateway's, with the
    request id the client got; management calls keep uvicorn's line; no canary."""
    home = tmp_path / "data"
    with _serve(home, "--access-log") as (url, log):
        admin = KEY_RE.findall(log.with_suffix(".err").read_text())[0]
        auth = {"Authorization": f"Bearer {admin}"}
        r = httpx.post(
            url + "/api/v1/virtual-keys",
            headers=auth,
            json={
                "slug": "self",
                "name": "s",
                "upstreamUrl": url + "/healthz",
                "credential": CREDENTIAL,
            },
        )
        assert r.status_code == 201, r.text
        r = httpx.get(url + "/v1/mcp/self", headers={**auth, "Cookie": f"c={COOKIE_CANARY}"})
        request_id = r.headers["x-igris-request-id"]
        time.sleep(0.3)
    text = log.read_text() + log.with_suffix(".err").read_text()
    gateway_lines = [line for line in text.splitlines() if request_id in line]
    assert len(gateway_lines) == 1
    assert "'/v1/mcp/self'" in gateway_lines[0]
    assert " ok " in gateway_lines[0]
    assert any('"POST /api/v1/virtual-keys' in line for line in text.splitlines())
    assert not any('"GET /v1/mcp/self' in line for line in text.splitlines())
    assert CREDENTIAL not in text
    assert COOKIE_CANARY not in text


def test_operations_settings_are_validated() -> None:
    """IGRIS_LOG_FORMAT, IGRIS_METRICS_PORT and IGRIS_METRICS_HOST parse, and bad values
    are errors that name the variable."""
    s = Settings.from_env(
        {"IGRIS_LOG_FORMAT": "JSON", "IGRIS_METRICS_PORT": "9464", "IGRIS_METRICS_HOST": "::1"}
    )
    assert (s.log_format, s.metrics_port, s.metrics_host) == ("json", 9464, "::1")
    defaults = Settings.from_env({})
    assert (defaults.log_format, defaults.metrics_port, defaults.metrics_host) == (
        "text",
        None,
        "127.0.0.1",
    )
    with pytest.raises(ConfigurationError, match="IGRIS_LOG_FORMAT"):
        Settings.from_env({"IGRIS_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigurationError, match="IGRIS_METRICS_PORT"):
        Settings.from_env({"IGRIS_METRICS_PORT": "0"})
