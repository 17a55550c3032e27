"""The egress policy through the gateway: 422 at create/PATCH, 502 at connect, allowed networks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from igris_mw import IgrisGateway
from igris_mw._errors import ConfigurationError
from igris_mw._policy.egress import UpstreamForbidden
from igris_mw.testing import FixedKeyring, MemoryStore

TOKEN = "egress-upstream-canary-0b1d"
RPC = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


class Upstream:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield up
    await runner.cleanup()


async def _gateway(store: MemoryStore, allowed: list[str]) -> tuple[IgrisGateway, str]:
    gw = IgrisGateway(None, store=store, crypto=FixedKeyring(), allow_upstream_networks=allowed)
    await gw.startup()
    _, admin = await gw.service.create_api_key({"name": "admin", "scopes": ["admin"]})
    return gw, admin


def _client(gw: IgrisGateway, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gw),
        base_url="http://gw.test",
        headers={"Authorization": f"Bearer {key}"},
    )


def _conn(slug: str, url: str) -> dict[str, Any]:
    return {"slug": slug, "name": slug, "upstreamUrl": url, "credential": TOKEN}


async def _audit(gw: IgrisGateway, slug: str) -> list[dict[str, Any]]:
    assert await gw.audit.flush(5)
    page = await gw.service.list_audit(slug, limit=50)
    return [e.to_json() for e in page.items if e.kind == "gateway"]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/",
        "http://127.0.0.1:8080/api/v1/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://[::1]/mcp",
        "http://10.0.0.1/",
        "http://[fd00:ec2::254]/",
    ],
)
async def test_create_and_patch_with_a_forbidden_literal_are_422(url: str) -> None:
    """POST and PATCH with a forbidden upstreamUrl: 422 upstream_forbidden, nothing stored."""
    store = MemoryStore()
    gw, admin = await _gateway(store, [])
    try:
        async with _client(gw, admin) as c:
            r = await c.post("/api/v1/virtual-keys", json=_conn("bad-one", url))
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "upstream_forbidden"
            assert error["field"] == "upstreamUrl"
            assert (await c.get("/api/v1/virtual-keys/bad-one")).status_code == 404

            ok = await c.post(
                "/api/v1/virtual-keys", json=_conn("good-one", "https://mcp.example/")
            )
            assert ok.status_code == 201
            r = await c.patch("/api/v1/virtual-keys/good-one", json={"upstreamUrl": url})
            assert r.status_code == 422
            assert r.json()["error"]["code"] == "upstream_forbidden"
            after = await c.get("/api/v1/virtual-keys/good-one")
            assert after.json()["upstreamUrl"] == "https://mcp.example/"
    finally:
        await gw.aclose()


async def test_metadata_refused_at_create_even_with_everything_allowed() -> None:
    """With 0.0.0.0/0 and ::/0 allowed, metadata is still 422 and the message says why."""
    gw, admin = await _gateway(MemoryStore(), ["0.0.0.0/0", "::/0"])
    try:
        async with _client(gw, admin) as c:
            r = await c.post("/api/v1/virtual-keys", json=_conn("meta", "http://169.254.169.254/"))
            assert r.status_code == 422
            assert "refused always" in r.json()["error"]["message"]
            r = await c.post("/api/v1/virtual-keys", json=_conn("lan", "http://10.1.2.3/mcp"))
            assert r.status_code == 201
    finally:
        await gw.aclose()


async def test_name_resolving_to_loopback_is_502_at_connect_and_nothing_is_sent(
    upstream: Upstream,
) -> None:
    """localhost passes create (no DNS there) but is refused at connect: 502, upstream untouched."""
    gw, admin = await _gateway(MemoryStore(), [])
    try:
        await gw.service.create_connection(_conn("local", f"http://localhost:{upstream.port}/mcp"))
        async with _client(gw, admin) as c:
            r = await c.post("/v1/mcp/local", json=RPC)
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_forbidden"
        assert "IGRIS_ALLOW_UPSTREAM_NETWORKS" in r.json()["error"]["message"]
        assert "127.0.0.1" not in r.text  # the resolved address stays in the log
        assert TOKEN not in r.text
        assert upstream.requests == []
        events = await _audit(gw, "local")
        assert [(e["status"], e["outcome"]) for e in events] == [(502, "upstream_forbidden")]
    finally:
        await gw.aclose()


async def test_allowed_loopback_network_lets_the_same_connection_work(upstream: Upstream) -> None:
    """With 127.0.0.0/8 (and ::1) allowed, the localhost connection reaches its upstream."""
    gw, admin = await _gateway(MemoryStore(), ["127.0.0.0/8", "::1/128"])
    try:
        await gw.service.create_connection(_conn("local", f"http://localhost:{upstream.port}/mcp"))
        async with _client(gw, admin) as c:
            r = await c.post("/v1/mcp/local", json=RPC)
        assert r.status_code == 200, r.text
        assert upstream.requests == ["/mcp"]
    finally:
        await gw.aclose()


async def test_stored_literal_is_refused_at_connect_when_no_longer_allowed(
    upstream: Upstream,
) -> None:
    """A connection stored while loopback was allowed is refused where it no longer is."""
    store = MemoryStore()
    first, _ = await _gateway(store, ["127.0.0.0/8"])
    await first.service.create_connection(_conn("literal", f"http://127.0.0.1:{upstream.port}/mcp"))
    await first.aclose()
    second, admin = await _gateway(store, [])
    try:
        async with _client(second, admin) as c:
            r = await c.post("/v1/mcp/literal", json=RPC)
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_forbidden"
        assert upstream.requests == []
    finally:
        await second.aclose()


def test_allowed_networks_setting_errors_name_the_entry() -> None:
    """A bad IGRIS_ALLOW_UPSTREAM_NETWORKS is a configuration error naming the entry."""
    with pytest.raises(ConfigurationError) as info:
        IgrisGateway(
            None,
            store=MemoryStore(),
            crypto=FixedKeyring(),
            environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "10.0.0.0/8,10.0.0.1/8"},
        )
    assert "10.0.0.1/8" in info.value.message
    gw = IgrisGateway(
        None,
        store=MemoryStore(),
        crypto=FixedKeyring(),
        environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "10.0.0.0/8, fd00::/8"},
    )
    assert [str(n) for n in gw.egress.allowed] == ["10.0.0.0/8", "fd00::/8"]


def test_serve_accepts_repeated_allow_upstream_network() -> None:
    """serve --allow-upstream-network is repeatable and checked like the variable."""
    from igris_mw.cli import build_parser
    from igris_mw.cli.serve import _networks_option

    args = build_parser().parse_args(
        ["serve", "--allow-upstream-network", "10.0.0.0/8", "--allow-upstream-network", "::1"]
    )
    assert args.allow_upstream_network == ["10.0.0.0/8", "::1"]
    assert _networks_option(args.allow_upstream_network) == ("10.0.0.0/8", "::1/128")
    with pytest.raises(ConfigurationError, match=r"did you mean 10\.0\.0\.0/8"):
        _networks_option(["10.0.0.1/8"])


def test_cli_connections_create_uses_the_environment(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI refuses an internal upstream unless IGRIS_ALLOW_UPSTREAM_NETWORKS opens it."""
    from igris_mw import cli

    for var in ("IGRIS_STORE", "IGRIS_CRYPTO", "IGRIS_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IGRIS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IGRIS_MASTER_KEY", FixedKeyring.environ()["IGRIS_MASTER_KEY"])
    (tmp_path / "cred.txt").write_text(TOKEN + "\n")
    args = [
        "connections",
        "create",
        "--slug",
        "lan",
        "--name",
        "LAN",
        "--upstream-url",
        "http://192.168.0.10/mcp",
        "--credential-file",
        str(tmp_path / "cred.txt"),
    ]
    monkeypatch.setenv("IGRIS_ALLOW_UPSTREAM_NETWORKS", "")
    assert cli.main(args) != 0
    err = capsys.readouterr().err
    assert "IGRIS_ALLOW_UPSTREAM_NETWORKS" in err
    assert err.count("\n") == 1
    monkeypatch.setenv("IGRIS_ALLOW_UPSTREAM_NETWORKS", "192.168.0.0/16")
    assert cli.main(args) == 0
    assert TOKEN not in capsys.readouterr().out


async def test_service_without_a_policy_opens_nothing() -> None:
    """A Service built without an egress policy allows no internal network."""
    from igris_mw._service import Service

    service = Service(MemoryStore(), FixedKeyring())
    with pytest.raises(UpstreamForbidden):
        await service.create_connection(_conn("lan", "http://192.168.0.10/"))


async def test_through_a_forward_proxy_names_are_left_to_the_proxy_literals_are_not() -> None:
    """With a forward proxy the session has no egress resolver (the proxy resolves, and its
    own internal address must stay reachable); literals and metadata names are still refused."""
    from igris_mw._policy.egress import EgressForbidden, EgressPolicy
    from igris_mw._policy.resolver import EgressResolver
    from igris_mw._proxy.forward import Forwarder
    from igris_mw._proxy.outbound import parse_upstream_proxy

    proxied = Forwarder(egress=EgressPolicy(), proxy=parse_upstream_proxy("http://10.1.2.3:3128"))
    direct = Forwarder(egress=EgressPolicy())
    try:
        await proxied.start()
        await direct.start()
        assert proxied._session is not None
        assert direct._session is not None
        assert not isinstance(proxied._session.connector._resolver, EgressResolver)  # type: ignore[union-attr]
        assert isinstance(direct._session.connector._resolver, EgressResolver)  # type: ignore[union-attr]
        for fwd in (proxied, direct):
            assert isinstance(fwd._literal_refusal("127.0.0.1"), EgressForbidden)
            assert isinstance(fwd._literal_refusal("metadata.google.internal"), EgressForbidden)
            assert fwd._literal_refusal("mcp.example") is None
    finally:
        await proxied.close()
        await direct.close()
