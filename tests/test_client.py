"""The SDK: IgrisClient / AsyncIgrisClient, get_mcp_config and McpConfig."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import uvicorn

from igris_mw._api import ManagementAPI
from igris_mw._errors import (
    BadRequest,
    Conflict,
    Forbidden,
    IgrisError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    SlugTaken,
    StoreUnavailable,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
    ValidationError,
    VersionConflict,
)
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.client import AsyncIgrisClient, IgrisClient, IssuedApiKey, McpConfig
from igris_mw.testing import FixedKeyring, MemoryStore

CANARY = "canary-Hx27Ra-credential"
KEY = "ig_" + "A" * 36  # shape only; never sent to a real server in the pure tests
BASE = "http://gw.test"


# -- a real uvicorn server on a loopback port, once per module ------------------


class _ServedAPI:
    """Opens a SQLite store and issues an admin key in the server's own loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.api: ManagementAPI | None = None
        self.admin_key = ""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            assert self.api is not None
            await self.api(scope, receive, send)
            return
        await receive()
        store = SQLiteStore(self.path)
        await store.open()
        service = Service(store, FixedKeyring())
        _, self.admin_key = await service.create_api_key({"name": "admin", "scopes": ["admin"]})
        self.api = ManagementAPI(service)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await store.close()
        await send({"type": "lifespan.shutdown.complete"})


@attrs.frozen
class Served:
    url: str
    admin_key: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    app = _ServedAPI(tmp_path_factory.mktemp("served") / "igris.db")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield Served(f"http://127.0.0.1:{port}", app.admin_key)
    server.should_exit = True
    thread.join(15)
    sock.close()
    assert not thread.is_alive()


# -- an in-process app for the async client -------------------------------------


@attrs.frozen
class InProcess:
    api: ManagementAPI
    service: Service
    admin_key: str
    mcp_key: str

    def client(self, key: str | None = None, **kw: Any) -> AsyncIgrisClient:
        return AsyncIgrisClient(
            BASE, key or self.admin_key, transport=httpx.ASGITransport(app=self.api), **kw
        )


@pytest.fixture
async def app() -> AsyncIterator[InProcess]:
    store = MemoryStore()
    await store.open()
    service = Service(store, FixedKeyring())
    _, admin_key = await service.create_api_key({"name": "admin", "scopes": ["admin"]})
    _, mcp_key = await service.create_api_key({"name": "agent", "scopes": ["mcp"]})
    yield InProcess(ManagementAPI(service), service, admin_key, mcp_key)
    await store.close()


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request to {request.url}")


# -- get_mcp_config / McpConfig ------------------------------------------------


def test_get_mcp_config_builds_url_and_headers_without_network() -> None:
    """get_mcp_config gives <base>/v1/mcp/<slug> and the gateway headers, offline."""
    with IgrisClient("https://gw.example/", KEY, transport=httpx.MockTransport(_no_network)) as c:
        config = c.get_mcp_config(
            "vk_github_prod", user="alice@company.com", metadata={"role": "developer", "n": 1}
        )
    assert config.url == "https://gw.example/v1/mcp/vk_github_prod"
    assert dict(config.headers) == {
        "Authorization": f"Bearer {KEY}",
        "X-Igris-User": "alice@company.com",
        "X-Igris-Metadata": '{"role":"developer","n":1}',
    }
    bare = IgrisClient("https://gw.example/prefix", KEY).get_mcp_config("abc")
    assert bare.url == "https://gw.example/prefix/v1/mcp/abc"
    assert dict(bare.headers) == {"Authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"slug": "../admin"}, "slug"),
        ({"slug": "UPPER"}, "slug"),
        ({"slug": "abc", "user": "eve\r\nX-Evil: 1"}, "user"),
        ({"slug": "abc", "user": ""}, "user"),
        ({"slug": "abc", "metadata": ["not", "an", "object"]}, "metadata"),
        ({"slug": "abc", "metadata": {"f": float("nan")}}, "metadata"),
        ({"slug": "abc", "metadata": {"o": object()}}, "metadata"),
    ],
)
def test_get_mcp_config_validates_locally(kwargs: dict[str, Any], field: str) -> None:
    """A bad slug, user or metadata is a ValidationError naming it, before any request."""
    client = IgrisClient(BASE, KEY, transport=httpx.MockTransport(_no_network))
    with pytest.raises(ValidationError) as info:
        client.get_mcp_config(**kwargs)
    assert info.value.field == field


def test_to_mcp_servers_renders_the_mcp_servers_block() -> None:
    """to_mcp_servers gives {"mcpServers": {name: {url, headers}}}, optionally with a type."""
    config = IgrisClient(BASE, KEY).get_mcp_config("github", user="bob")
    assert isinstance(config, McpConfig)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.url = "https://elsewhere.test"  # type: ignore[misc]
    block = config.to_mcp_servers()
    assert block == {
        "mcpServers": {
            "github": {
                "url": f"{BASE}/v1/mcp/github",
                "headers": {"Authorization": f"Bearer {KEY}", "X-Igris-User": "bob"},
            }
        }
    }
    assert json.loads(json.dumps(block)) == block
    typed = config.to_mcp_servers("gh", type="http")
    assert typed["mcpServers"]["gh"]["type"] == "http"
    assert typed["mcpServers"]["gh"]["url"] == config.url


def test_reprs_never_show_the_key() -> None:
    """Neither the client, nor an McpConfig, nor an IssuedApiKey shows a key in its repr."""
    sync = IgrisClient(BASE, KEY)
    async_client = AsyncIgrisClient(BASE, KEY)
    config = sync.get_mcp_config("abc", metadata={"x": 1})
    issued = IssuedApiKey(key=KEY, record={"id": "key_1"})
    for obj in (sync, async_client, config, issued):
        assert KEY not in repr(obj)
        assert KEY not in str(obj)
    assert BASE in repr(sync)
    assert config.url in repr(config)
    assert issued.id == "key_1"


def test_constructor_refuses_bad_base_url_and_key() -> None:
    """base_url must be http(s) with a host and no user info; the key printable ASCII."""
    for url in ("gw.example", "ftp://gw", "https://user:pw@gw.example", "https://gw/?a=1"):
        with pytest.raises(ValueError, match="base_url"):
            IgrisClient(url, KEY)
    for key in ("", "ig_x\r\nX: y", "ig_ x", 5):
        with pytest.raises(ValueError, match="api_key"):
            AsyncIgrisClient(BASE, key)  # type: ignore[arg-type]


# -- every call, async, in process ---------------------------------------------


async def test_async_client_every_management_call(app: InProcess) -> None:
    """Each management method of AsyncIgrisClient does its call and returns the API's JSON."""
    async with app.client() as c:
        created = await c.create_connection("conn-a", "A", "https://up.test/mcp", credential=CANARY)
        assert created["gatewayUrl"] == f"{BASE}/v1/mcp/conn-a"
        assert CANARY not in json.dumps(created)
        for i in range(4):
            await c.create_connection(
                f"conn-{i}x",
                "n",
                "https://up.test/mcp",
                auth_type="header",
                header_name="X-Key",
                credential="s",
            )
        first = await c.list_connections(limit=2)
        assert len(first.items) == 2
        assert first.next_cursor is not None
        every = [item["slug"] async for item in c.iter_connections(page_size=2)]
        assert sorted(every) == sorted(["conn-a", "conn-0x", "conn-1x", "conn-2x", "conn-3x"])

        assert (await c.get_connection("conn-a"))["name"] == "A"
        updated = await c.update_connection("conn-a", name="Renamed", enabled=False)
        assert (updated["name"], updated["enabled"]) == ("Renamed", False)
        assert (await c.enable_connection("conn-a"))["enabled"] is True
        assert (await c.disable_connection("conn-a"))["enabled"] is False
        assert (await c.rotate_credential("conn-a", "new-secret"))["credentialVersion"] == 2

        page = await c.list_audit("conn-a", limit=2)
        assert [e["action"] for e in page.items] == ["rotate", "disable"]
        trail = [e["action"] async for e in c.iter_audit("conn-a", page_size=2)]
        assert trail == ["rotate", "disable", "enable", "update", "create"]
        assert [e async for e in c.iter_audit("conn-a", since="2999-01-01T00:00:00Z")] == []

        issued = await c.create_api_key("agent-2", ["mcp"], connections=["conn-a"])
        assert issued.key.startswith("ig_")
        assert issued.record["connections"] == ["conn-a"]
        ids = {k["id"] for k in await c.list_api_keys()}
        assert issued.id in ids
        await c.revoke_api_key(issued.id)
        revoked = {k["id"]: k for k in await c.list_api_keys()}[issued.id]
        assert revoked["revokedAt"] is not None

        await c.delete_connection("conn-a")
        with pytest.raises(NotFound):
            await c.get_connection("conn-a")


async def test_api_errors_raise_the_matching_exception(app: InProcess) -> None:
    """Server errors come back as IgrisError subclasses keeping code, message and field."""
    async with app.client() as c:
        await c.create_connection("taken", "T", "https://up.test/mcp", credential="c")
        with pytest.raises(SlugTaken) as taken:
            await c.create_connection("taken", "T", "https://up.test/mcp", credential="c")
        assert taken.value.code == "slug_taken"
        with pytest.raises(ValidationError) as invalid:
            await c.create_connection("fresh", "T", "ftp://nope", credential=CANARY)
        assert invalid.value.field == "upstreamUrl"
        assert str(invalid.value).startswith("upstreamUrl: ")
        assert CANARY not in str(invalid.value)
        with pytest.raises(NotFound):
            await c.revoke_api_key("key_0000")
    async with app.client(KEY) as bad:
        with pytest.raises(Unauthorized):
            await bad.list_connections()
    async with app.client(app.mcp_key) as weak:
        with pytest.raises(Forbidden) as forbidden:
            await weak.list_api_keys()
        assert forbidden.value.status == 403


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "code"),
    [
        (
            400,
            {"error": {"code": "invalid_json", "message": "bad"}},
            {},
            BadRequest,
            "invalid_json",
        ),
        (
            401,
            {"error": {"code": "unauthorized", "message": "no"}},
            {},
            Unauthorized,
            "unauthorized",
        ),
        (
            403,
            {"error": {"code": "insufficient_scope", "message": "no"}},
            {},
            Forbidden,
            "insufficient_scope",
        ),
        (404, {"error": {"code": "not_found", "message": "gone"}}, {}, NotFound, "not_found"),
        (
            409,
            {"error": {"code": "version_conflict", "message": "race"}},
            {},
            VersionConflict,
            "version_conflict",
        ),
        (
            409,
            {"error": {"code": "other_conflict", "message": "x"}},
            {},
            Conflict,
            "other_conflict",
        ),
        (
            413,
            {"error": {"code": "payload_too_large", "message": "big"}},
            {},
            PayloadTooLarge,
            "payload_too_large",
        ),
        (502, "<html>bad gateway</html>", {}, UpstreamError, "upstream_unreachable"),
        (
            503,
            {"error": {"code": "store_unavailable", "message": "down"}},
            {"retry-after": "9"},
            StoreUnavailable,
            "store_unavailable",
        ),
        (
            504,
            {"error": {"code": "upstream_timeout", "message": "slow"}},
            {},
            UpstreamTimeout,
            "upstream_timeout",
        ),
        (
            418,
            {"error": {"code": "teapot", "message": "short and stout"}},
            {},
            IgrisError,
            "teapot",
        ),
    ],
)
def test_status_maps_to_exception(
    status: int, body: Any, headers: dict[str, str], cls: type[IgrisError], code: str
) -> None:
    """Each error status (and code) raises its IgrisError subclass with the server's text."""

    def handler(request: httpx.Request) -> httpx.Response:
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers=headers)

    with (
        IgrisClient(BASE, KEY, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(cls) as info,
    ):
        c.list_connections()
    assert type(info.value) is cls
    assert info.value.code == code
    assert info.value.status == status
    if isinstance(body, dict):
        assert info.value.message == body["error"]["message"]
    else:
        assert "<html>" not in info.value.message
    if isinstance(info.value, ServiceUnavailable):
        assert info.value.retry_after == 9


def test_redirects_are_not_followed_and_key_goes_only_to_base() -> None:
    """A redirect elsewhere is an error, not a second request carrying the key."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(307, headers={"location": "https://evil.test/api/v1/virtual-keys"})

    with (
        IgrisClient(f"{BASE}/igris", KEY, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(IgrisError) as info,
    ):
        c.list_connections(limit=5)
    assert info.value.status == 307
    assert len(seen) == 1
    assert str(seen[0].url) == f"{BASE}/igris/api/v1/virtual-keys?limit=5"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"


def test_transport_failure_is_service_unavailable_without_the_key() -> None:
    """A connection error becomes ServiceUnavailable(gateway_unreachable), key-free."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.headers['authorization']}")

    with (
        IgrisClient(BASE, KEY, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(ServiceUnavailable) as info,
    ):
        c.get_connection("abc")
    assert info.value.code == "gateway_unreachable"
    assert KEY not in str(info.value)
    assert BASE in str(info.value)


def test_slug_and_key_id_are_checked_before_the_request() -> None:
    """A slug or key id that could change the URL path is refused locally."""
    client = IgrisClient(BASE, KEY, transport=httpx.MockTransport(_no_network))
    with pytest.raises(ValidationError):
        client.get_connection("../api-keys")
    with pytest.raises(ValidationError):
        client.revoke_api_key("../virtual-keys/x")


# -- against a real uvicorn server ----------------------------------------------


def test_sync_client_against_real_server(served: Served) -> None:
    """IgrisClient drives the API over real HTTP on a loopback port (uvicorn)."""
    with IgrisClient(served.url, served.admin_key, timeout=10) as c:
        created = c.create_connection("real-one", "Real", "https://up.test/mcp", credential=CANARY)
        assert created["gatewayUrl"] == f"{served.url}/v1/mcp/real-one"
        assert c.get_mcp_config("real-one").url == created["gatewayUrl"]
        assert [x["slug"] for x in c.iter_connections(page_size=1)] == ["real-one"]
        assert c.rotate_credential("real-one", "next")["credentialVersion"] == 2
        assert c.disable_connection("real-one")["enabled"] is False
        assert [e["action"] for e in c.iter_audit("real-one")] == ["disable", "rotate", "create"]
        issued = c.create_api_key("robot", ["mcp"])
        c.revoke_api_key(issued.id)
        with pytest.raises(SlugTaken):
            c.create_connection("real-one", "Real", "https://up.test/mcp", credential="x")
        c.delete_connection("real-one")
        with pytest.raises(NotFound):
            c.get_connection("real-one")
    with IgrisClient(served.url, issued.key) as revoked, pytest.raises(Unauthorized):
        revoked.list_connections()


async def test_async_client_against_real_server(served: Served) -> None:
    """AsyncIgrisClient works over real HTTP too, including a 413 from the size limit."""
    async with AsyncIgrisClient(served.url, served.admin_key, timeout=10) as c:
        created = await c.create_connection("async-one", "A", "https://up.test/mcp", credential="s")
        assert created["slug"] == "async-one"
        with pytest.raises(PayloadTooLarge):
            await c.create_connection("big-one", "B", "https://up.test/mcp", credential="x" * 70000)
        assert [x["slug"] async for x in c.iter_connections()] == ["async-one"]
        await c.delete_connection("async-one")


def test_sync_client_lists_the_whole_audit_trail(served: Served) -> None:
    """IgrisClient.list_all_audit / iter_all_audit read GET /api/v1/audit with its filters."""
    with IgrisClient(served.url, served.admin_key, timeout=10) as c:
        issued = c.create_api_key("trail-robot", ["mcp"])
        c.revoke_api_key(issued.id)
        page = c.list_all_audit(slug=None, kind="management", action="revoke", limit=5)
        assert page.items[0]["connection"] is None
        assert page.items[0]["metadata"]["apiKey"] == issued.id
        every = list(c.iter_all_audit(page_size=2, kind="management"))
        assert [e["id"] for e in every] == sorted((e["id"] for e in every), reverse=True)
        assert issued.key not in json.dumps(every)
        with pytest.raises(ValidationError) as caught:
            c.list_all_audit(outcome="NOT A WORD")
        assert caught.value.field == "outcome"


async def test_async_client_lists_the_whole_audit_trail(app: InProcess) -> None:
    """AsyncIgrisClient.list_all_audit / iter_all_audit: newest first, filtered, paged."""
    async with app.client() as c:
        created = await c.create_api_key("trail-robot", ["mcp"])
        page = await c.list_all_audit(action="create", limit=1)
        assert page.items[0]["metadata"]["apiKey"] == created.id
        assert page.next_cursor is not None
        names = [e["metadata"]["name"] async for e in c.iter_all_audit(page_size=1)]
        assert names == ["trail-robot", "agent", "admin"]
