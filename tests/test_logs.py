"""Tests for igris_mw._ops.logs and _ops.access: JSON log lines, access lines, request ids."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from igris_mw import IgrisGateway
from igris_mw._ops.access import access_line, current_request_id
from igris_mw._ops.logs import JsonFormatter, SkipGatewayAccess, log_config
from igris_mw.testing import FixedKeyring, MemoryStore

CREDENTIAL = "logs-credential-canary-3Pz"


class Capture(logging.Handler):
    """Keeps every record and its JSON line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Any:
    handler = Capture()
    root = logging.getLogger("igris_mw")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


hostile = st.text(max_size=300) | st.sampled_from(["\x00", "\ud800", "a\nb", "\u2028", "\x1b[2J"])


@given(user=hostile, path=hostile, connection=hostile)
def test_access_line_is_one_parseable_line_for_any_input(
    user: str, path: str, connection: str
) -> None:
    """Whatever the client sent, the access line is one line of JSON holding it back."""
    handler = Capture()
    log = logging.getLogger("igris_mw.access")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        access_line(
            "evt_1",
            connection=connection,
            api_key_id="key_1",
            user=user,
            method="POST",
            path=path,
            outcome="ok",
            status=200,
            latency_ms=1.5,
        )
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    (line,) = handler.lines
    assert "\n" not in line
    assert "\u2028" not in line
    record = json.loads(line)
    assert record["user"] == user
    assert record["connection"] == connection
    assert record["path"] == path[:2048]
    assert record["requestId"] == "evt_1"


@given(path=hostile, user=hostile)
def test_text_access_message_keeps_one_line(path: str, user: str) -> None:
    """In text mode path and user are quoted, so a CR or LF in them cannot forge a line."""
    handler = Capture()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("igris_mw.access")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        access_line(
            "evt_1",
            connection="c-1",
            api_key_id="key_1",
            user=user,
            method="GET",
            path=path,
            outcome="ok",
            status=200,
            latency_ms=1.0,
        )
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    (message,) = handler.lines
    assert "\n" not in message
    assert "\r" not in message
    assert message.startswith("evt_1 GET ")


def test_uvicorn_access_line_drops_the_query_string() -> None:
    """uvicorn's access record becomes method, path without query, status and client."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/api/v1/audit?cursor=secret-cursor", "1.1", 200),
        None,
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["path"] == "/api/v1/audit"
    assert line["status"] == 200
    assert "secret-cursor" not in json.dumps(line)
    gateway = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/v1/mcp/x", "1.1", 200),
        None,
    )
    assert SkipGatewayAccess().filter(record)
    assert not SkipGatewayAccess().filter(gateway)


def test_exception_is_written_as_its_traceback() -> None:
    """A record with exc_info gets an 'exception' field and stays one line."""
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "igris_mw.gateway", logging.ERROR, "", 0, "failed", None, sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_log_config_text_keeps_uvicorns_and_json_routes_everything() -> None:
    """text: uvicorn's config plus the gateway's loggers (access lines only when asked);
    json: one stdout handler with access lines at INFO whatever the level."""
    text = log_config("text", "warning", access_log=False)
    assert text["formatters"]["default"]["()"] == "uvicorn.logging.DefaultFormatter"
    assert text["loggers"]["igris_mw"]["level"] == "WARNING"
    assert text["loggers"]["igris_mw.access"]["level"] == "WARNING"
    assert text["loggers"]["uvicorn.access"]["filters"] == ["skip_gateway"]
    assert (
        log_config("text", "info", access_log=True)["loggers"]["igris_mw.access"]["level"] == "INFO"
    )
    config = log_config("json", "warning")
    assert config["handlers"]["stdout"]["stream"] == "ext://sys.stdout"
    assert config["root"]["level"] == "WARNING"
    assert config["loggers"]["igris_mw.access"]["level"] == "INFO"
    assert config["loggers"]["uvicorn.access"]["level"] == "INFO"
    with pytest.raises(ValueError, match="text, json"):
        log_config("xml", "info")


async def test_lines_logged_during_a_request_carry_its_id(captured: Capture) -> None:
    """An upstream failure's warning and the access line both carry the request's id,
    which is the X-Igris-Request-Id the client got; no canary is logged."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends: connections are refused
    gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring("logs"))
    await gw.startup()
    try:
        _, key = await gw.service.create_api_key({"name": "k", "scopes": ["mcp"]})
        await gw.service.create_connection(
            {
                "slug": "dead",
                "name": "d",
                "upstreamUrl": f"http://127.0.0.1:{dead}/mcp",
                "credential": CREDENTIAL,
            }
        )
        transport = httpx.ASGITransport(app=gw)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as c:
            r = await c.post(
                "/v1/mcp/dead",
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Authorization": f"Bearer {key}", "Cookie": "c=cookie-canary-8Yh"},
            )
    finally:
        await gw.aclose()
    assert r.status_code == 502
    request_id = r.headers["x-igris-request-id"]
    records = [json.loads(line) for line in captured.lines]
    warning = [x for x in records if x["logger"] == "igris_mw.proxy"]
    assert warning
    assert warning[0]["requestId"] == request_id
    access = [x for x in records if x["logger"] == "igris_mw.access"]
    assert [x["requestId"] for x in access] == [request_id]
    assert access[0]["outcome"] == "upstream_error"
    text = "\n".join(captured.lines)
    for canary in (CREDENTIAL, key, "cookie-canary-8Yh"):
        assert canary not in text
    assert current_request_id.get() is None  # the id does not leak out of the request
