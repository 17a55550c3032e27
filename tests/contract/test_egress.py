"""Contract, second part: the egress policy (where a connection may point)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from contract_harness import ScriptedUpstream, Served, error_of, new_slug, serve

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}

FORBIDDEN = [
    "http://10.0.0.1/mcp",
    "http://192.168.1.20/",
    "http://172.16.0.1/",
    "http://[fc00::1]/",
    "http://169.254.1.1/",
    "http://[fe80::1]/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://[::]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::10.0.0.1]/",
    "http://[64:ff9b::a00:1]/",
    "http://[2002:a00:1::]/",
    "http://167772161/",
    "http://0x0a000001/",
    "http://012.0.0.1/",
    "http://10.1/",
    "http://127.0.0.1:8080/",
    "http://[::1]/",
    "http://2130706433/",
    "http://0/",
    "http://127.1/",
    "http://0177.0.0.1/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:10.0.0.1]/",
    "http://10.0.0.1./",
    "http://[fe80::1%25eth0]/",
    "http://0x7f.0.0.1/",
    "http://0x7f.1/",
    "http://[::ffff:0a00:0001]/",
    "http://00000000012.1/",
    "http://[64:ff9b:1::a00:1]/",
    "http://198.18.0.1/",
    "http://192.0.0.1/",
    "http://[100::1]/",
    "http://[2001:db8::1]/",
    "https://[::ffff:a9fe:a9fe]/",
    "http://%31%30.0.0.1/",
]
METADATA = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/",
    "http://metadata.google.internal/",
    "http://metadata.goog/",
    "http://METADATA.GOOGLE.INTERNAL./",
    "http://[::ffff:169.254.169.254]/",
    "http://2852039166/",
]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """serve with no allowed network: the default egress policy."""
    home = tmp_path_factory.mktemp("contract-egress") / "home"
    with serve(home, env={"IGRIS_ALLOW_UPSTREAM_NETWORKS": None}) as served:
        yield served


def _forbidden_422(r: httpx.Response) -> None:
    err = error_of(r, 422, "upstream_forbidden")
    assert err.get("field") == "upstreamUrl", err


@pytest.mark.parametrize("url", FORBIDDEN + METADATA)
def test_forbidden_literal_on_create_is_422_upstream_forbidden(gw: Served, url: str) -> None:
    """A literal forbidden address in any spelling, or a metadata name: 422 on upstreamUrl."""
    body = {"slug": new_slug(), "name": "x", "upstreamUrl": url, "credential": "c"}
    _forbidden_422(gw.api("POST", "/api/v1/virtual-keys", json=body))
    assert gw.api("GET", f"/api/v1/virtual-keys/{body['slug']}").status_code == 404


def test_forbidden_literal_on_patch_is_422_and_changes_nothing(gw: Served) -> None:
    """PATCH to a forbidden literal is 422 upstream_forbidden; the connection is unchanged."""
    c = gw.create_connection(None, upstreamUrl="https://mcp.example.com/mcp")
    path = f"/api/v1/virtual-keys/{c['slug']}"
    _forbidden_422(gw.api("PATCH", path, json={"upstreamUrl": "http://10.0.0.1/"}))
    assert gw.api("GET", path).json()["upstreamUrl"] == "https://mcp.example.com/mcp"


@pytest.mark.parametrize(
    "url", ["https://user:pw@mcp.example.com/", "https://user@mcp.example.com/"]
)
def test_user_info_in_upstream_url_is_422(gw: Served, url: str) -> None:
    """upstreamUrl with user-info is refused (422 on upstreamUrl)."""
    body = {"slug": new_slug(), "name": "x", "upstreamUrl": url, "credential": "c"}
    err = error_of(gw.api("POST", "/api/v1/virtual-keys", json=body), 422)
    assert "upstreamUrl" in err["message"]
    assert "pw" not in err["message"]


def test_public_names_are_not_resolved_at_create(gw: Served) -> None:
    """A name (even one that would resolve to a forbidden address) is accepted at create."""
    c = gw.create_connection(None, upstreamUrl="http://localhost:9/mcp")
    assert c["upstreamUrl"] == "http://localhost:9/mcp"


def test_name_resolving_to_forbidden_address_is_502_at_connect(
    gw: Served, scripted: ScriptedUpstream
) -> None:
    """localhost resolves to loopback: 502 upstream_forbidden, nothing reaches the upstream."""
    c = gw.create_connection(None, upstreamUrl=f"http://localhost:{scripted.port}/echo")
    before = len(scripted.seen)
    error_of(
        httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10),
        502,
        "upstream_forbidden",
    )
    assert len(scripted.seen) == before


def test_allowed_networks_open_ranges_but_never_metadata(
    tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream
) -> None:
    """--allow-upstream-network opens a range; metadata addresses stay refused."""
    home = tmp_path_factory.mktemp("contract-egress-allow") / "home"
    with serve(
        home,
        "--allow-upstream-network",
        "127.0.0.0/8",
        "--allow-upstream-network",
        "169.254.0.0/16",
        env={"IGRIS_ALLOW_UPSTREAM_NETWORKS": None},
    ) as s:
        c = s.create_connection(None, upstreamUrl=f"http://127.0.0.1:{scripted.port}/echo")
        assert httpx.post(c["gatewayUrl"], headers=s.h(), json=PING, timeout=10).status_code == 200
        for url in ("http://169.254.169.254/", "http://169.254.170.2/"):
            body = {"slug": new_slug(), "name": "x", "upstreamUrl": url, "credential": "c"}
            _forbidden_422(s.api("POST", "/api/v1/virtual-keys", json=body))


def test_env_allowed_networks(
    tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream
) -> None:
    """IGRIS_ALLOW_UPSTREAM_NETWORKS (comma-separated CIDRs) opens loopback for serve."""
    home = tmp_path_factory.mktemp("contract-egress-env") / "home"
    with serve(home, env={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "10.0.0.0/8,127.0.0.0/8"}) as s:
        c = s.create_connection(None, upstreamUrl=f"http://127.0.0.1:{scripted.port}/echo")
        assert httpx.post(c["gatewayUrl"], headers=s.h(), json=PING, timeout=10).status_code == 200
        body = {
            "slug": new_slug(),
            "name": "x",
            "upstreamUrl": "http://192.168.0.1/",
            "credential": "c",
        }
        _forbidden_422(s.api("POST", "/api/v1/virtual-keys", json=body))
