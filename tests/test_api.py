"""The management API (pure ASGI) in-process through httpx.ASGITransport."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import httpx
import pytest

from igris_mw import _validation
from igris_mw._api import ManagementAPI
from igris_mw._errors import StoreUnavailable
from igris_mw._openapi import REQUEST_FIELDS
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.testing import FixedKeyring, MemoryStore

CANARY = "canary-Kf93Lq-credential"
CANARY2 = "canary-Tz61Wb-rotated"
BASE = "http://gw.test"
CONNECTION_FIELDS = {
    "slug",
    "name",
    "upstreamUrl",
    "authType",
    "headerName",
    "enabled",
    "credentialVersion",
    "createdAt",
    "updatedAt",
    "rotatedAt",
    "gatewayUrl",
    "caCertificate",
    "clientCertificate",
    "rateLimit",
    "tools",
}


@attrs.define
class Env:
    api: ManagementAPI
    service: Service
    admin_key: str
    admin_id: str
    mcp_key: str
    http: httpx.AsyncClient

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    async def create(self, slug: str = "github-prod", **over: Any) -> httpx.Response:
        body = {
            "slug": slug,
            "name": "GitHub",
            "upstreamUrl": "https://up.test/mcp",
            "credential": CANARY,
            **over,
        }
        return await self.http.post("/api/v1/virtual-keys", json=body, headers=self.auth)


@pytest.fixture(params=["memory", "sqlite"])
async def env(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Env]:
    store: Any = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    await store.open()
    service = Service(store, FixedKeyring())
    admin, admin_key = await service.create_api_key({"name": "admin", "scopes": ["admin"]})
    _, mcp_key = await service.create_api_key({"name": "agent", "scopes": ["mcp"]})
    api = ManagementAPI(service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE) as http:
        yield Env(api, service, admin_key, admin.id, mcp_key, http)
    await store.close()


async def snapshot(service: Service) -> dict[str, Any]:
    """Everything stored: every connection, key and audit event."""
    conns = []
    cursor = None
    while True:
        page = await service.list_connections(limit=200, cursor=cursor)
        conns += [attrs.asdict(c) for c in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    audit = {}
    for slug in await service.audit.audit_connections():
        audit[slug] = [e.to_json() for e in await service.audit.audit_chain(slug)]
    keys = [attrs.asdict(k) for k in await service.list_api_keys()]
    return {"connections": conns, "keys": keys, "audit": audit}


def test_constructor_refuses_bad_settings() -> None:
    """max_body must be a positive int and public_url an http(s) URL."""
    service = Service(MemoryStore(), FixedKeyring())
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_body"):
            ManagementAPI(service, max_body=bad)  # type: ignore[arg-type]
    for url in ("ftp://x", "https://", "https://h/?q=1", "gw.example"):
        with pytest.raises(ValueError, match="public_url"):
            ManagementAPI(service, public_url=url)


async def test_create_returns_201_and_the_connection_without_credential(env: Env) -> None:
    """POST /virtual-keys answers 201 with the contract's fields and a gatewayUrl."""
    r = await env.create()
    assert r.status_code == 201
    body = r.json()
    assert set(body) == CONNECTION_FIELDS
    assert body["gatewayUrl"] == f"{BASE}/v1/mcp/github-prod"
    assert body["credentialVersion"] == 1
    assert body["enabled"] is True
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    assert CANARY not in r.text


async def test_gateway_url_honours_root_path_host_and_public_url(env: Env) -> None:
    """gatewayUrl is built from Host + root_path, or from public_url when set."""
    await env.create()
    transport = httpx.ASGITransport(app=env.api, root_path="/igris")
    async with httpx.AsyncClient(transport=transport, base_url="https://edge.test:8443") as c:
        r = await c.get("/igris/api/v1/virtual-keys/github-prod", headers=env.auth)
    assert r.status_code == 200
    assert r.json()["gatewayUrl"] == "https://edge.test:8443/igris/v1/mcp/github-prod"

    api = ManagementAPI(env.service, public_url="https://gw.example/base/")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE) as c:
        r = await c.get("/api/v1/virtual-keys", headers=env.auth)
    assert r.json()["data"][0]["gatewayUrl"] == "https://gw.example/base/v1/mcp/github-prod"


async def test_list_pages_with_limit_and_cursor(env: Env) -> None:
    """GET /virtual-keys pages by limit; following nextCursor yields each connection once."""
    slugs = {f"conn-{i:02d}" for i in range(7)}
    for slug in slugs:
        assert (await env.create(slug)).status_code == 201
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        r = await env.http.get("/api/v1/virtual-keys", params=params, headers=env.auth)
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"data", "nextCursor"}
        assert len(body["data"]) <= 3
        seen += [c["slug"] for c in body["data"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(slugs)
    default = await env.http.get("/api/v1/virtual-keys", headers=env.auth)
    assert len(default.json()["data"]) == 7
    assert default.json()["nextCursor"] is None


async def test_read_update_rotate_disable_enable_delete(env: Env) -> None:
    """Each connection route answers its contract status and body."""
    await env.create()
    one = "/api/v1/virtual-keys/github-prod"
    r = await env.http.get(one, headers=env.auth)
    assert r.status_code == 200
    assert r.json()["slug"] == "github-prod"

    r = await env.http.patch(
        one,
        json={"name": "Renamed", "authType": "header", "headerName": "X-Token"},
        headers=env.auth,
    )
    assert r.status_code == 200
    assert (r.json()["name"], r.json()["authType"], r.json()["headerName"]) == (
        "Renamed",
        "header",
        "X-Token",
    )

    r = await env.http.post(one + "/rotate", json={"credential": CANARY2}, headers=env.auth)
    assert r.status_code == 200
    assert r.json()["credentialVersion"] == 2
    assert r.json()["rotatedAt"] is not None

    r = await env.http.post(one + "/disable", headers=env.auth)
    assert (r.status_code, r.json()["enabled"]) == (200, False)
    r = await env.http.post(one + "/enable", json={}, headers=env.auth)
    assert (r.status_code, r.json()["enabled"]) == (200, True)

    r = await env.http.delete(one, headers=env.auth)
    assert r.status_code == 204
    assert r.content == b""
    assert "content-type" not in r.headers
    assert (await env.http.get(one, headers=env.auth)).status_code == 404


async def test_audit_lists_management_changes_newest_first_with_actor(env: Env) -> None:
    """GET .../audit returns the management events, newest first, naming the admin key."""
    await env.create()
    one = "/api/v1/virtual-keys/github-prod"
    await env.http.post(one + "/rotate", json={"credential": CANARY2}, headers=env.auth)
    await env.http.post(one + "/disable", headers=env.auth)
    r = await env.http.get(one + "/audit", headers=env.auth)
    assert r.status_code == 200
    events = r.json()["data"]
    assert [e["action"] for e in events] == ["disable", "rotate", "create"]
    assert {e["apiKeyId"] for e in events} == {env.admin_id}
    assert r.json()["nextCursor"] is None

    first = await env.http.get(one + "/audit", params={"limit": "2"}, headers=env.auth)
    rest = await env.http.get(
        one + "/audit",
        headers=env.auth,
        params={"limit": "2", "cursor": first.json()["nextCursor"]},
    )
    assert [e["action"] for e in first.json()["data"] + rest.json()["data"]] == [
        "disable",
        "rotate",
        "create",
    ]
    assert rest.json()["nextCursor"] is None

    later = await env.http.get(
        one + "/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=env.auth
    )
    assert (later.status_code, later.json()["data"]) == (200, [])


async def test_api_keys_issue_list_and_revoke(env: Env) -> None:
    """POST /api-keys shows the key once; GET never does; DELETE revokes at once."""
    r = await env.http.post(
        "/api/v1/api-keys", headers=env.auth, json={"name": "ops", "scopes": ["admin"]}
    )
    assert r.status_code == 201
    issued = r.json()
    key = issued["key"]
    assert key.startswith("ig_")
    assert issued["scopes"] == ["admin"]

    listing = await env.http.get("/api/v1/api-keys", headers=env.auth)
    assert listing.status_code == 200
    assert issued["id"] in {k["id"] for k in listing.json()["data"]}
    assert key not in listing.text
    assert all("key" not in k for k in listing.json()["data"])

    ok = await env.http.get("/api/v1/virtual-keys", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200
    r = await env.http.delete(f"/api/v1/api-keys/{issued['id']}", headers=env.auth)
    assert (r.status_code, r.content) == (204, b"")
    gone = await env.http.get("/api/v1/virtual-keys", headers={"Authorization": f"Bearer {key}"})
    assert gone.status_code == 401


async def test_openapi_document_matches_the_router(env: Env) -> None:
    """openapi.json is public, OpenAPI 3.1, and lists exactly the served (path, method) pairs."""
    r = await env.http.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    assert {"openapi", "info", "paths", "components"} <= set(doc)
    assert {"title", "version"} <= set(doc["info"])
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "ig_...",
    }
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    assert documented == env.api.routes
    assert len(documented) == 21

    # Every documented pair is answered (not 404/405); every other method is 405.
    for path, methods in doc["paths"].items():
        concrete = path.replace("{slug}", "nope-nope").replace("{id}", "key_nope")
        for method in ("GET", "POST", "PATCH", "DELETE", "PUT"):
            r = await env.http.request(method, concrete, headers=env.auth, json={})
            if method.lower() in methods:
                assert r.status_code != 405
                assert r.status_code != 404 or r.json()["error"]["message"] != "no such endpoint"
            else:
                assert r.status_code == 405
                assert set(r.headers["allow"].split(", ")) == {m.upper() for m in methods}

    # Every $ref resolves, every request body is closed, every op states responses.
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node: Any = doc
        for step in ref.lstrip("#/").split("/"):
            node = node[step]
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["responses"]
            if "requestBody" in op:
                name = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                schema = doc["components"]["schemas"][name.rsplit("/", 1)[1]]
                assert schema["additionalProperties"] is False


def test_request_schemas_match_the_fields_the_service_accepts() -> None:
    """The documented request fields are exactly those the service validates."""
    assert REQUEST_FIELDS["ConnectionCreate"] == _validation.CREATE_FIELDS
    assert REQUEST_FIELDS["ConnectionUpdate"] == _validation.PATCH_FIELDS
    assert REQUEST_FIELDS["ApiKeyCreate"] == _validation.API_KEY_FIELDS


BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str | None]] = [
    # (id, method, path, request kwargs, status, field named in the 422)
    (
        "malformed-json",
        "POST",
        "/api/v1/virtual-keys",
        {"content": b'{"slug": "abc",', "headers": {"content-type": "application/json"}},
        400,
        None,
    ),
    ("array-body", "POST", "/api/v1/virtual-keys", {"json": ["slug"]}, 400, None),
    ("empty-body", "POST", "/api/v1/virtual-keys", {}, 400, None),
    (
        "duplicate-keys",
        "POST",
        "/api/v1/virtual-keys/taken-one/rotate",
        {
            "content": f'{{"credential": "{CANARY}", "credential": "x"}}'.encode(),
            "headers": {"content-type": "application/json"},
        },
        400,
        None,
    ),
    (
        "nan",
        "POST",
        "/api/v1/virtual-keys",
        {"content": b'{"slug": NaN}', "headers": {"content-type": "application/json"}},
        400,
        None,
    ),
    (
        "not-json-type",
        "POST",
        "/api/v1/virtual-keys",
        {"content": b"slug=abc", "headers": {"content-type": "application/x-www-form-urlencoded"}},
        415,
        None,
    ),
    (
        "unknown-field",
        "POST",
        "/api/v1/virtual-keys",
        {
            "json": {
                "slug": "new-one",
                "name": "N",
                "upstreamUrl": "https://u.test",
                "credential": "c",
                "bogus": 1,
            }
        },
        422,
        "bogus",
    ),
    (
        "wrong-type",
        "POST",
        "/api/v1/virtual-keys",
        {
            "json": {
                "slug": "new-one",
                "name": 5,
                "upstreamUrl": "https://u.test",
                "credential": "c",
            }
        },
        422,
        "name",
    ),
    (
        "bad-slug",
        "POST",
        "/api/v1/virtual-keys",
        {"json": {"slug": "No!", "name": "N", "upstreamUrl": "https://u.test", "credential": "c"}},
        422,
        "slug",
    ),
    (
        "bad-url",
        "POST",
        "/api/v1/virtual-keys",
        {"json": {"slug": "new-one", "name": "N", "upstreamUrl": "ftp://u", "credential": "c"}},
        422,
        "upstreamUrl",
    ),
    (
        "crlf-credential",
        "POST",
        "/api/v1/virtual-keys",
        {
            "json": {
                "slug": "new-one",
                "name": "N",
                "upstreamUrl": "https://u.test",
                "credential": CANARY + "\r\nX-Evil: 1",
            }
        },
        422,
        "credential",
    ),
    (
        "taken-slug",
        "POST",
        "/api/v1/virtual-keys",
        {
            "json": {
                "slug": "taken-one",
                "name": "N",
                "upstreamUrl": "https://u.test",
                "credential": "c",
            }
        },
        409,
        None,
    ),
    (
        "patch-credential",
        "PATCH",
        "/api/v1/virtual-keys/taken-one",
        {"json": {"credential": CANARY2}},
        422,
        "credential",
    ),
    (
        "patch-wrong-type",
        "PATCH",
        "/api/v1/virtual-keys/taken-one",
        {"json": {"enabled": "no"}},
        422,
        "enabled",
    ),
    (
        "patch-unknown",
        "PATCH",
        "/api/v1/virtual-keys/nobody-here",
        {"json": {"name": "x"}},
        404,
        None,
    ),
    (
        "rotate-unknown-field",
        "POST",
        "/api/v1/virtual-keys/taken-one/rotate",
        {"json": {"credential": CANARY2, "extra": True}},
        422,
        "extra",
    ),
    (
        "rotate-secret-as-key",
        "POST",
        "/api/v1/virtual-keys/taken-one/rotate",
        {"json": {"credential": "x", CANARY2 + "-" + CANARY: 1}},
        422,
        "body",
    ),
    (
        "rotate-missing",
        "POST",
        "/api/v1/virtual-keys/taken-one/rotate",
        {"json": {}},
        422,
        "credential",
    ),
    (
        "rotate-unknown-slug",
        "POST",
        "/api/v1/virtual-keys/nobody-here/rotate",
        {"json": {"credential": CANARY2}},
        404,
        None,
    ),
    (
        "disable-with-field",
        "POST",
        "/api/v1/virtual-keys/taken-one/disable",
        {"json": {"enabled": False}},
        422,
        "enabled",
    ),
    ("get-unknown", "GET", "/api/v1/virtual-keys/nobody-here", {}, 404, None),
    ("delete-unknown", "DELETE", "/api/v1/virtual-keys/nobody-here", {}, 404, None),
    ("path-bad-slug", "DELETE", "/api/v1/virtual-keys/BAD%20SLUG", {}, 422, "slug"),
    ("limit-zero", "GET", "/api/v1/virtual-keys?limit=0", {}, 422, "limit"),
    ("limit-text", "GET", "/api/v1/virtual-keys?limit=ten", {}, 422, "limit"),
    ("limit-big", "GET", "/api/v1/virtual-keys/taken-one/audit?limit=201", {}, 422, "limit"),
    ("bad-cursor", "GET", "/api/v1/virtual-keys?cursor=garbage", {}, 422, "cursor"),
    ("bad-since", "GET", "/api/v1/virtual-keys/taken-one/audit?since=yesterday", {}, 422, "since"),
    (
        "bad-scope",
        "POST",
        "/api/v1/api-keys",
        {"json": {"name": "k", "scopes": ["root"]}},
        422,
        "scopes",
    ),
    (
        "key-unknown-field",
        "POST",
        "/api/v1/api-keys",
        {"json": {"name": "k", "scopes": ["mcp"], "key": "ig_x"}},
        422,
        "key",
    ),
    ("revoke-unknown", "DELETE", "/api/v1/api-keys/key_0000000000000000", {}, 404, None),
    ("unknown-path", "GET", "/api/v1/nothing-here", {}, 404, None),
    ("wrong-method", "PUT", "/api/v1/virtual-keys/taken-one", {"json": {}}, 405, None),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "field"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_request_gets_its_status_and_changes_nothing(
    env: Env, method: str, path: str, kwargs: dict[str, Any], status: int, field: str | None
) -> None:
    """Each bad input gets its status and JSON error and leaves the store exactly as it was."""
    await env.create("taken-one")
    before = await snapshot(env.service)
    kwargs = dict(kwargs)
    headers = {**env.auth, **kwargs.pop("headers", {})}
    r = await env.http.request(method, path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"code", "message"}
    assert error["code"].replace("_", "").isalpha()
    if field is not None:
        assert error["field"] == field
        assert field in error["message"]
    assert CANARY not in r.text
    assert CANARY2 not in r.text
    assert await snapshot(env.service) == before


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer", 401),
        ("Basic Zm9vOmJhcg==", 401),
        ("Bearer ig_notakey", 401),
        ("Bearer {revoked}", 401),
        ("Bearer {mcp}", 403),
    ],
    ids=["none", "empty", "basic", "malformed", "revoked", "mcp-scope"],
)
async def test_every_route_needs_an_admin_key(
    env: Env, authorization: str | None, status: int
) -> None:
    """No/bad key: 401 with WWW-Authenticate; a key without admin: 403; nothing changes."""
    await env.create("taken-one")
    record, revoked = await env.service.create_api_key({"name": "old", "scopes": ["admin"]})
    await env.service.revoke_api_key(record.id)
    before = await snapshot(env.service)
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(revoked=revoked, mcp=env.mcp_key)
    for path, method in sorted(env.api.routes):
        if path.endswith(("openapi.json", "/oauth/callback")):  # public: a browser lands there
            continue
        concrete = path.replace("{slug}", "taken-one").replace("{id}", env.admin_id)
        body = (
            {"slug": "another", "name": "n", "upstreamUrl": "https://u.test", "credential": CANARY}
            if method in ("POST", "PATCH")
            else None
        )
        r = await env.http.request(method, concrete, headers=headers, json=body)
        assert r.status_code == status, (method, path)
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["code"]
        assert env.mcp_key not in r.text
        assert revoked not in r.text
    assert await snapshot(env.service) == before


async def test_body_over_limit_by_content_length_is_refused_before_reading() -> None:
    """A declared Content-Length over max_body gets 413 without receive() being called."""
    service = Service(MemoryStore(), FixedKeyring())
    await service.store.open()
    _, key = await service.create_api_key({"name": "admin", "scopes": ["admin"]})
    api = ManagementAPI(service, max_body=100)
    sent: list[dict[str, Any]] = []

    async def receive() -> Any:
        raise AssertionError("the body was read")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/virtual-keys",
        "raw_path": b"/api/v1/virtual-keys",
        "root_path": "",
        "query_string": b"",
        "server": ("gw.test", 80),
        "client": None,
        "headers": [
            (b"host", b"gw.test"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-length", b"101"),
        ],
    }
    await api(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"
    assert (await service.list_connections()).items == []


async def test_chunked_body_over_limit_is_refused_as_soon_as_it_passes(env: Env) -> None:
    """A chunked body gets 413 once it passes max_body: the rest is never read."""
    api = ManagementAPI(env.service, max_body=1000)
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b'{"slug": "chunky", "name": "'
        for _ in range(1000):
            pulled += 1
            yield b"x" * 100
        yield b'", "upstreamUrl": "https://u.test", "credential": "c"}'

    before = await snapshot(env.service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE) as c:
        r = await c.post(
            "/api/v1/virtual-keys",
            content=chunks(),
            headers={**env.auth, "content-type": "application/json"},
        )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert pulled <= 11
    assert await snapshot(env.service) == before

    # Just under the limit is fine.
    small = json.dumps(
        {"slug": "chunky", "name": "x" * 100, "upstreamUrl": "https://u.test", "credential": "c"}
    ).encode()

    async def one() -> AsyncIterator[bytes]:
        for i in range(0, len(small), 7):
            yield small[i : i + 7]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE) as c:
        r = await c.post(
            "/api/v1/virtual-keys",
            content=one(),
            headers={**env.auth, "content-type": "application/json"},
        )
    assert r.status_code == 201


async def test_store_unavailable_is_503_with_retry_after(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A StoreUnavailable with retry_after becomes 503 store_unavailable + Retry-After."""

    async def down(**_: Any) -> Any:
        raise StoreUnavailable("the store is down", retry_after=7)

    monkeypatch.setattr(env.service, "list_connections", down)
    r = await env.http.get("/api/v1/virtual-keys", headers=env.auth)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "store_unavailable"
    assert r.headers["retry-after"] == "7"


async def test_unexpected_error_is_500_without_details_or_leaks(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception is a bare 500 internal_error; its message is not logged."""
    caplog.set_level(logging.DEBUG)

    async def boom(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"driver said {CANARY}")

    monkeypatch.setattr(env.service, "rotate_credential", boom)
    await env.create()
    r = await env.http.post(
        "/api/v1/virtual-keys/github-prod/rotate", json={"credential": CANARY2}, headers=env.auth
    )
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal error"}}
    assert "RuntimeError" in caplog.text
    assert CANARY not in caplog.text
    assert CANARY2 not in caplog.text
    assert env.admin_key not in caplog.text


async def test_canary_never_in_responses_or_logs(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """No credential or gateway key shows in any response body/header or DEBUG log line."""
    caplog.set_level(logging.DEBUG)
    responses: list[httpx.Response] = []
    one = "/api/v1/virtual-keys/github-prod"
    responses.append(await env.create())
    responses.append(await env.create("basic-one", authType="basic", credential=f"u:{CANARY}"))
    responses.append(await env.http.get("/api/v1/virtual-keys", headers=env.auth))
    responses.append(await env.http.get(one, headers=env.auth))
    responses.append(
        await env.http.patch(one, json={"upstreamUrl": "https://up2.test/mcp"}, headers=env.auth)
    )
    responses.append(
        await env.http.post(one + "/rotate", json={"credential": CANARY2}, headers=env.auth)
    )
    responses.append(
        await env.http.post(one + "/rotate", json={"credential": CANARY2 + "\n"}, headers=env.auth)
    )
    responses.append(await env.http.patch(one, json={"credential": CANARY2}, headers=env.auth))
    responses.append(await env.http.get(one + "/audit", headers=env.auth))
    responses.append(await env.http.get("/api/v1/api-keys", headers=env.auth))
    responses.append(await env.http.get(one, headers={"Authorization": f"Bearer {env.mcp_key}"}))
    responses.append(await env.http.delete(one, headers=env.auth))
    assert [r.status_code for r in responses] == [
        201,
        201,
        200,
        200,
        200,
        200,
        422,
        422,
        200,
        200,
        403,
        204,
    ]
    secrets = (CANARY, CANARY2, env.admin_key, env.mcp_key)
    for r in responses:
        wire = r.text + json.dumps(dict(r.headers))
        assert not any(s in wire for s in secrets), r.request.url
    assert not any(s in caplog.text for s in secrets)
    assert "management" in caplog.text  # the DEBUG access lines were captured


async def test_disconnect_while_reading_sends_nothing(env: Env) -> None:
    """A client that goes away mid-body gets no response and nothing is created."""
    sent: list[Any] = []
    messages = iter(
        [
            {"type": "http.request", "body": b'{"slug": "gone-', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/virtual-keys",
        "root_path": "",
        "query_string": b"",
        "server": ("gw.test", 80),
        "headers": [(b"authorization", f"Bearer {env.admin_key}".encode())],
    }
    await env.api(scope, receive, send)  # type: ignore[arg-type]
    assert sent == []
    assert (await env.service.list_connections()).items == []


async def test_lifespan_and_websocket_scopes() -> None:
    """Served alone, it completes lifespan events and closes websockets."""
    api = ManagementAPI(Service(MemoryStore(), FixedKeyring()))
    inbox: Iterator[dict[str, Any]] = iter(
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    )
    sent: list[Any] = []

    async def receive() -> Any:
        return next(inbox)

    async def send(message: Any) -> None:
        sent.append(message)

    await api({"type": "lifespan"}, receive, send)  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    sent.clear()
    await api({"type": "websocket", "path": "/api/v1/x"}, receive, send)  # type: ignore[arg-type]
    assert sent[0]["type"] == "websocket.close"


async def test_every_response_matches_its_documented_schema(env: Env) -> None:
    """Each route's success and error bodies validate against the document's schema."""
    import jsonschema

    doc = env.api.openapi()
    one = "/api/v1/virtual-keys/github-prod"
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        (
            "POST",
            "/api/v1/virtual-keys",
            "/api/v1/virtual-keys",
            {
                "json": {
                    "slug": "github-prod",
                    "name": "G",
                    "upstreamUrl": "https://u.test",
                    "credential": CANARY,
                }
            },
        ),
        ("POST", "/api/v1/virtual-keys", "/api/v1/virtual-keys", {"json": {"slug": 1}}),
        ("GET", "/api/v1/virtual-keys", "/api/v1/virtual-keys", {"params": {"limit": "1"}}),
        ("GET", "/api/v1/virtual-keys/{slug}", one, {}),
        ("PATCH", "/api/v1/virtual-keys/{slug}", one, {"json": {"name": "H"}}),
        (
            "POST",
            "/api/v1/virtual-keys/{slug}/rotate",
            one + "/rotate",
            {"json": {"credential": CANARY2}},
        ),
        ("POST", "/api/v1/virtual-keys/{slug}/disable", one + "/disable", {}),
        ("POST", "/api/v1/virtual-keys/{slug}/enable", one + "/enable", {}),
        ("GET", "/api/v1/virtual-keys/{slug}/audit", one + "/audit", {}),
        (
            "POST",
            "/api/v1/api-keys",
            "/api/v1/api-keys",
            {
                "json": {
                    "name": "k",
                    "scopes": ["mcp"],
                    "connections": ["github-prod"],
                    "expiresAt": "2999-01-01T00:00:00Z",
                }
            },
        ),
        ("GET", "/api/v1/api-keys", "/api/v1/api-keys", {}),
        ("DELETE", "/api/v1/api-keys/{id}", f"/api/v1/api-keys/{env.admin_id}x", {}),
        ("DELETE", "/api/v1/virtual-keys/{slug}", one, {}),
        ("GET", "/api/v1/virtual-keys/{slug}", one, {}),
        ("GET", "/api/v1/audit", "/api/v1/audit", {}),
        ("GET", "/api/v1/audit", "/api/v1/audit", {"params": {"kind": "Bad Kind"}}),
        ("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", {}),
    ]
    statuses: set[int] = set()
    for method, template, path, kwargs in calls:
        r = await env.http.request(method, path, headers=env.auth, **kwargs)
        documented = doc["paths"][template][method.lower()]["responses"]
        assert str(r.status_code) in documented, (method, path, r.status_code)
        entry = documented[str(r.status_code)]
        if "$ref" in entry:
            entry = doc["components"]["responses"][entry["$ref"].rsplit("/", 1)[1]]
        if "content" not in entry:
            assert r.content == b""
            continue
        schema = {"components": doc["components"], **entry["content"]["application/json"]["schema"]}
        jsonschema.Draft202012Validator(schema).validate(r.json())
        statuses.add(r.status_code)
    assert statuses >= {200, 201, 404, 422}


def test_document_passes_an_openapi_31_validator() -> None:
    """The document validates with openapi-spec-validator (when it is installed)."""
    validator = pytest.importorskip("openapi_spec_validator")
    api = ManagementAPI(Service(MemoryStore(), FixedKeyring()))
    validator.validate(api.openapi())
