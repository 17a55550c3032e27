"""End to end: a canary credential and the gateway keys never leak anywhere.

One scenario drives every path a credential travels (create, read, list,
patch, rotate, a rejected rotate, MCP traffic on both transports, upstream
refusal, unreachable upstream, disabled connection, audit reads) with every
logger at DEBUG, then searches every response, log record, audit event and
the bytes of the SQLite files for the secrets.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import httpx
import httpx2
import pytest
from e2e_harness import (
    Gateway,
    api,
    client_headers,
    legacy_session,
    raw_post,
    streamable_session,
)
from upstream import UpstreamServer, free_socket


def _canary() -> str:
    return f"canary-{secrets.token_hex(16)}"


def _capture_every_logger(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        caplog.set_level(logging.DEBUG, logger=name)
        # Loggers that do not propagate would hide their records from caplog.
        if not logger.propagate:
            monkeypatch.setattr(logger, "propagate", True)
        if logger.disabled:
            monkeypatch.setattr(logger, "disabled", False)


def _response_text(response: httpx.Response | httpx2.Response) -> str:
    head = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    return f"{response.status_code}\n{head}\n\n{response.text}"


async def _mcp_post(
    gateway: Gateway, slug: str, body: object, session_id: str | None = None
) -> httpx.Response:
    headers = {
        "Authorization": f"Bearer {gateway.mcp_key}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(gateway.url(slug), json=body, headers=headers)


async def test_canary_never_leaks(
    gateway: Gateway,
    upstream: UpstreamServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Canary credentials and ig_ keys appear in no response, log, audit event or store file."""
    _capture_every_logger(caplog, monkeypatch)
    first, second, rejected, unreachable, refused = (_canary() for _ in range(5))
    canaries = [first, second, rejected, unreachable, refused]
    upstream.accept(first, second)
    responses: list[str] = []
    slug = f"canary-{secrets.token_hex(4)}"

    async def call(
        method: str, path: str, body: object = None, status: int = 200
    ) -> httpx.Response:
        response = await api(gateway, method, path, body)
        responses.append(_response_text(response))
        assert response.status_code == status, response.text
        return response

    # Management API: create, read, list, patch, rotate, a refused rotate.
    await call(
        "POST",
        "/virtual-keys",
        {
            "slug": slug,
            "name": "canary",
            "upstreamUrl": upstream.base_url + "/mcp",
            "credential": first,
        },
        201,
    )
    await call("GET", f"/virtual-keys/{slug}")
    await call("GET", "/virtual-keys?limit=200")
    await call("PATCH", f"/virtual-keys/{slug}", {"name": "canary renamed"})

    # MCP traffic on the first credential, raw and with the SDK.
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "canary", "version": "1"},
        },
    }
    initialized = await _mcp_post(gateway, slug, init)
    responses.append(_response_text(initialized))
    assert initialized.status_code == 200
    session_id = initialized.headers["mcp-session-id"]
    listed = await _mcp_post(
        gateway, slug, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session_id
    )
    responses.append(_response_text(listed))
    assert "slow_progress" in listed.text
    async with httpx.AsyncClient(timeout=10) as http:
        ended = await http.delete(
            gateway.url(slug),
            headers={"Authorization": f"Bearer {gateway.mcp_key}", "Mcp-Session-Id": session_id},
        )
    responses.append(_response_text(ended))
    assert ended.status_code == 200

    sdk_headers: list[str] = []

    async def keep(response: httpx2.Response) -> None:
        sdk_headers.append("\n".join(f"{k}: {v}" for k, v in response.headers.items()))

    async with streamable_session(
        gateway.url(slug), client_headers(gateway.mcp_key), on_response=keep
    ) as session:
        results = [
            await session.call_tool("echo", {"text": "hello"}),
            await session.call_tool("whoami", {}),
        ]
        responses.extend(r.model_dump_json() for r in results)

    await call("POST", f"/virtual-keys/{slug}/rotate", {"credential": second})
    bad = await call(
        "POST", f"/virtual-keys/{slug}/rotate", {"credential": f"{rejected}\r\nX-Evil: 1"}, 422
    )
    assert bad.json()["error"]["code"]

    # The legacy transport with the rotated credential.
    legacy = f"canary-legacy-{secrets.token_hex(4)}"
    await call(
        "POST",
        "/virtual-keys",
        {
            "slug": legacy,
            "name": "l",
            "upstreamUrl": upstream.base_url + "/legacy",
            "credential": second,
        },
        201,
    )
    async with legacy_session(gateway.url(legacy, "/sse"), client_headers(gateway.mcp_key)) as s:
        responses.append((await s.call_tool("whoami", {})).model_dump_json())

    # Gateway errors: upstream refuses the credential, upstream unreachable, disabled.
    refusing = f"canary-refused-{secrets.token_hex(4)}"
    await call(
        "POST",
        "/virtual-keys",
        {
            "slug": refusing,
            "name": "r",
            "upstreamUrl": upstream.base_url + "/mcp",
            "credential": refused,
        },
        201,
    )
    upstream_refusal = await raw_post(gateway.url(refusing), gateway.mcp_key, init)
    responses.append(_response_text(upstream_refusal))
    # The contract's second part: an upstream 401 is the gateway's 502, never relayed.
    assert upstream_refusal.status_code == 502
    assert upstream_refusal.json()["error"]["code"] == "upstream_auth_failed"
    assert "www-authenticate" not in upstream_refusal.headers

    dead = free_socket()  # bound, never listening: connection refused
    dead_port = dead.getsockname()[1]
    gone = f"canary-gone-{secrets.token_hex(4)}"
    await call(
        "POST",
        "/virtual-keys",
        {
            "slug": gone,
            "name": "g",
            "upstreamUrl": f"http://127.0.0.1:{dead_port}/mcp",
            "credential": unreachable,
        },
        201,
    )
    unreachable_response = await raw_post(gateway.url(gone), gateway.mcp_key, init)
    dead.close()
    responses.append(_response_text(unreachable_response))
    assert unreachable_response.status_code == 502
    assert unreachable_response.json()["error"]["code"]

    await call("POST", f"/virtual-keys/{slug}/disable")
    disabled = await raw_post(gateway.url(slug), gateway.mcp_key, init)
    responses.append(_response_text(disabled))
    assert disabled.status_code == 403
    await call("POST", f"/virtual-keys/{slug}/enable")

    for audited in (slug, legacy, refusing, gone):
        await call("GET", f"/virtual-keys/{audited}/audit?limit=200")
    await call("GET", "/api-keys")

    # Gather every place a secret could land.
    await gateway.gw.audit.flush()
    audit_json: list[str] = []
    for audited in (slug, legacy, refusing, gone):
        page = await gateway.gw.service.list_audit(audited, limit=200)
        assert page.items
        audit_json.extend(json.dumps(event.to_json()) for event in page.items)
    records = caplog.records
    captured = {r.name.partition(".")[0] for r in records}
    assert {"uvicorn", "igris_mw", "mcp"} <= captured, captured
    log_lines = [caplog.text] + [r.getMessage() for r in records]
    log_lines += [repr(r.args) for r in records if r.args]
    db = gateway.db_path
    store_bytes = b"".join(
        Path(f"{db}{suffix}").read_bytes()
        for suffix in ("", "-wal", "-shm", "-journal")
        if Path(f"{db}{suffix}").exists()
    )

    everything = "\n".join(responses + sdk_headers)
    for canary in canaries:
        assert canary not in everything
        assert not [line for line in log_lines if canary in line]
        assert not [event for event in audit_json if canary in event]
        assert canary.encode() not in store_bytes
    for key in (gateway.mcp_key, gateway.admin_key):
        assert key not in everything
        assert not [line for line in log_lines if key in line]
        assert not [event for event in audit_json if key in event]
        assert key.encode() not in store_bytes
