"""Contract, second part: upstream responses and limits on the data plane."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from contract_harness import ScriptedUpstream, Served, error_of, serve

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
NEVER_RELAYED = (
    "set-cookie",
    "www-authenticate",
    "alt-svc",
    "strict-transport-security",
    "clear-site-data",
)


def _conn(gw: Served, scripted: ScriptedUpstream, path: str, **fields: Any) -> dict[str, Any]:
    return gw.create_connection(None, upstreamUrl=scripted.base_url + path, **fields)


def _audit_outcomes(gw: Served, slug: str) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        data = gw.api("GET", f"/api/v1/virtual-keys/{slug}/audit").json()["data"]
        outcomes = [e["outcome"] for e in data if e.get("method")]
        if outcomes or time.monotonic() > deadline:
            return outcomes
        time.sleep(0.1)


def test_upstream_401_is_502_upstream_auth_failed(gw: Served, scripted: ScriptedUpstream) -> None:
    """Upstream 401: 502 upstream_auth_failed, no WWW-Authenticate, audit upstream_auth_failed."""
    c = _conn(gw, scripted, "/status/401")
    r = httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10)
    err = error_of(r, 502, "upstream_auth_failed")
    assert "credential" in err["message"]
    assert "www-authenticate" not in r.headers
    assert _audit_outcomes(gw, c["slug"]) == ["upstream_auth_failed"]


@pytest.mark.parametrize("status", [200, 403, 500])
def test_never_relayed_response_headers(
    gw: Served, scripted: ScriptedUpstream, status: int
) -> None:
    """Set-Cookie, WWW-Authenticate, Alt-Svc, HSTS, Clear-Site-Data never reach the client."""
    c = _conn(gw, scripted, "/leaky" if status == 200 else f"/status/{status}")
    r = httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10)
    assert r.status_code == status
    for name in NEVER_RELAYED:
        assert name not in r.headers, (name, r.headers)
    if status == 200:
        assert r.headers["x-upstream-ok"] == "1"


def test_never_forwarded_request_headers(gw: Served, scripted: ScriptedUpstream) -> None:
    """Forwarded, X-Forwarded-*, X-Real-IP, metadata headers, X-Igris-* never reach the upstream."""
    c = _conn(gw, scripted, "/echo")
    sent = {
        "Forwarded": "for=1.2.3.4",
        "X-Forwarded-Host": "evil",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "6.6.6.6",
        "X-Real-IP": "6.6.6.6",
        "Metadata-Flavor": "Google",
        "X-aws-ec2-metadata-token": "t",
        "X-aws-ec2-metadata-token-ttl-seconds": "60",
        "X-Igris-User": "u",
        "X-Igris-Anything": "z",
        "Connection": "keep-alive",
    }
    r = httpx.post(c["gatewayUrl"], headers=gw.h(**sent), json=PING, timeout=10)
    assert r.status_code == 200, r.text
    got = r.json()["headers"]
    for name in (
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "metadata-flavor",
        "x-aws-ec2-metadata-token",
        "x-aws-ec2-metadata-token-ttl-seconds",
        "x-igris-user",
        "x-igris-anything",
    ):
        assert name not in got, (name, got)
    assert "6.6.6.6" not in got.get("x-forwarded-for", "")
    assert got["authorization"] == f"Bearer {c['_credential']}"


def test_reflected_credential_is_502(gw: Served, scripted: ScriptedUpstream) -> None:
    """An error response repeating the injected credential: 502 upstream_reflected_credential."""
    c = _conn(gw, scripted, "/reflect")
    r = httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10)
    error_of(r, 502, "upstream_reflected_credential")
    assert c["_credential"] not in r.text
    assert c["_credential"] not in str(r.headers)


def test_fixed_query_parameters_cannot_be_overridden(
    gw: Served, scripted: ScriptedUpstream
) -> None:
    """A query parameter fixed in upstreamUrl is neither repeated nor overridden by the client."""
    c = _conn(gw, scripted, "/echo?tenant=acme")
    r = httpx.post(c["gatewayUrl"] + "?tenant=evil&x=1", headers=gw.h(), json=PING, timeout=10)
    assert r.status_code in (200, 400, 422), r.text
    if r.status_code == 200:
        query = r.json()["query"]
        assert query.count("tenant=") == 1, query
        assert "tenant=acme" in query, query


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Cookie",
        "TE",
        "Upgrade",
        "Keep-Alive",
        "Proxy-Authorization",
        "Trailer",
    ],
)
def test_header_name_may_not_be_hop_by_hop_framing_or_routing(gw: Served, name: str) -> None:
    """headerName Host, Content-Length, Transfer-Encoding, Connection, Cookie ...: 422."""
    body = {
        "slug": "hdr-" + name.lower(),
        "name": "x",
        "upstreamUrl": "https://a.example/",
        "authType": "header",
        "headerName": name,
        "credential": "c",
    }
    err = error_of(gw.api("POST", "/api/v1/virtual-keys", json=body), 422)
    assert "headerName" in err["message"]


def test_default_body_limit_allows_a_few_mib(gw: Served, scripted: ScriptedUpstream) -> None:
    """A 1 MiB body passes under the default 8 MiB limit."""
    c = _conn(gw, scripted, "/echo")
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"a" * (1 << 20) + b'"}}'
    r = httpx.post(
        c["gatewayUrl"],
        headers=gw.h(**{"Content-Type": "application/json"}),
        content=body,
        timeout=20,
    )
    assert r.status_code == 200, r.text


def test_body_over_the_default_8_mib_is_413(gw: Served, scripted: ScriptedUpstream) -> None:
    """Past 8 MiB: 413 request_too_large."""
    c = _conn(gw, scripted, "/echo")
    before = len(scripted.seen)
    r = httpx.post(
        c["gatewayUrl"],
        headers=gw.h(**{"Content-Type": "application/json"}),
        content=b"{" + b" " * (8 * 1024 * 1024 + 10) + b"}",
        timeout=30,
    )
    error_of(r, 413, "request_too_large")
    assert all(s["bodyLength"] < 8 * 1024 * 1024 for s in scripted.seen[before:])


def test_max_request_body_flag_env_and_idle_timeout(
    tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream
) -> None:
    """--max-request-body and IGRIS_MAX_REQUEST_BODY bound bodies; --stream-idle-timeout closes."""
    home = tmp_path_factory.mktemp("contract-limits") / "home"
    with serve(home, "--max-request-body", "1000", "--stream-idle-timeout", "1") as s:
        c = s.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
        r = httpx.post(c["gatewayUrl"], headers=s.h(), content=b"x" * 1001, timeout=10)
        error_of(r, 413, "request_too_large")
        chunked = httpx.post(
            c["gatewayUrl"], headers=s.h(), content=iter([b"x" * 600, b"x" * 600]), timeout=10
        )
        error_of(chunked, 413, "request_too_large")
        assert (
            httpx.post(c["gatewayUrl"], headers=s.h(), content=b"{}", timeout=10).status_code == 200
        )

        idle = s.create_connection(None, upstreamUrl=scripted.base_url + "/idle")
        started = time.monotonic()
        with httpx.stream("GET", idle["gatewayUrl"], headers=s.h(), timeout=30) as r:
            assert r.status_code == 200
            body = b"".join(r.iter_raw())
        assert b"data: first" in body
        assert time.monotonic() - started < 10
        assert "upstream_idle" in _audit_outcomes(s, idle["slug"])
    home2 = tmp_path_factory.mktemp("contract-limits-env") / "home"
    with serve(home2, env={"IGRIS_MAX_REQUEST_BODY": "500"}) as s:
        c = s.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
        error_of(
            httpx.post(c["gatewayUrl"], headers=s.h(), content=b"x" * 501, timeout=10),
            413,
            "request_too_large",
        )


def test_unauthenticated_5xx_names_no_store_path(gw: Served) -> None:
    """A 5xx to an unauthenticated caller names no store path or upstream address."""
    for path in ("/v1/mcp/some-slug", "/api/v1/virtual-keys", "/v1/mcp/x/y"):
        r = httpx.post(gw.url + path, json=PING, timeout=10)
        assert r.status_code < 500 or (str(gw.home) not in r.text and "sqlite" not in r.text)
