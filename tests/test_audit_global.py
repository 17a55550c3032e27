"""GET /api/v1/audit: the whole trail, newest first, with filters; API-key events in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from igris_mw._api import ManagementAPI
from igris_mw._audit.events import new_event_id
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.models import AuditEvent, utcnow
from igris_mw.testing import FixedKeyring, MemoryStore


class Env:
    def __init__(self, service: Service, admin: str, admin_id: str, http: httpx.AsyncClient):
        self.service, self.admin, self.admin_id, self.http = service, admin, admin_id, http

    async def get(self, **params: Any) -> httpx.Response:
        return await self.http.get(
            "/api/v1/audit", params=params, headers={"Authorization": f"Bearer {self.admin}"}
        )


@pytest.fixture(params=["memory", "sqlite"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    store: Any = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "s.db")
    await store.open()
    service = Service(store, FixedKeyring())
    admin, key = await service.create_api_key({"name": "admin", "scopes": ["admin"]})
    api = ManagementAPI(service)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
        yield Env(service, key, admin.id, http)
    await store.close()


def _connection(slug: str) -> dict[str, Any]:
    return {"slug": slug, "name": slug, "upstreamUrl": "https://mcp.example/mcp",
            "credential": "canary-global-secret"}  # fmt: skip


async def _gateway_event(svc: Service, slug: str, user: str, outcome: str) -> None:
    await svc.audit.append_audit_events([
        AuditEvent(id=new_event_id(), timestamp=utcnow(), connection=slug, user=user,
                   outcome=outcome, method="POST", path="/", status=200)
    ])  # fmt: skip


async def test_lists_every_event_newest_first_with_the_global_chain(env: Env) -> None:
    """Every chain's events, API-key ones (connection null) too, newest first, paged."""
    headers = {"Authorization": f"Bearer {env.admin}"}
    r = await env.http.post("/api/v1/virtual-keys", json=_connection("conn-a"), headers=headers)
    assert r.status_code == 201, r.text
    r = await env.http.post("/api/v1/api-keys", json={"name": "ci", "scopes": ["mcp"]},
                            headers=headers)  # fmt: skip
    issued = r.json()
    r = await env.http.delete(f"/api/v1/api-keys/{issued['id']}", headers=headers)
    assert r.status_code == 204
    await _gateway_event(env.service, "conn-a", "alice", "denied")
    r = await env.get()
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [(e["connection"], e["kind"], e["action"]) for e in data] == [
        ("conn-a", "gateway", None),
        (None, "management", "revoke"),
        (None, "management", "create"),
        ("conn-a", "management", "create"),
        (None, "management", "create"),  # the fixture's admin key
    ]
    assert data[1]["apiKeyId"] == env.admin_id
    assert data[1]["metadata"] == {"apiKey": issued["id"], "name": "ci"}
    assert issued["key"] not in r.text
    assert "canary-global-secret" not in r.text
    first = await env.get(limit=2)
    assert [e["id"] for e in first.json()["data"]] == [e["id"] for e in data[:2]]
    rest = await env.get(limit=10, cursor=first.json()["nextCursor"])
    assert [e["id"] for e in rest.json()["data"]] == [e["id"] for e in data[2:]]
    assert rest.json()["nextCursor"] is None


async def test_filters_narrow_the_listing(env: Env) -> None:
    """slug, kind, action, outcome, user and since each keep only matching events."""
    await env.service.create_connection(_connection("conn-a"))
    await env.service.create_connection(_connection("conn-b"))
    await _gateway_event(env.service, "conn-a", "alice", "ok")
    await _gateway_event(env.service, "conn-b", "bob", "denied")

    async def ids(**params: Any) -> list[tuple[str | None, str | None]]:
        r = await env.get(**params)
        assert r.status_code == 200, r.text
        return [(e["connection"], e["action"] or e["user"]) for e in r.json()["data"]]

    assert await ids(slug="conn-b") == [("conn-b", "bob"), ("conn-b", "create")]
    assert await ids(kind="gateway") == [("conn-b", "bob"), ("conn-a", "alice")]
    assert await ids(action="create", slug="conn-a") == [("conn-a", "create")]
    assert await ids(outcome="denied") == [("conn-b", "bob")]
    assert await ids(user="alice") == [("conn-a", "alice")]
    assert await ids(since="2999-01-01T00:00:00Z") == []
    assert len(await ids(since="2000-01-01T00:00:00Z")) == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("slug", "Not A Slug"),
        ("kind", "DROP TABLE"),
        ("action", "x" * 100),
        ("outcome", "\u0000"),
        ("user", "u" * 300),
        ("since", "yesterday"),
        ("limit", "0"),
        ("cursor", "not-a-cursor"),
    ],
)
async def test_bad_filter_is_422_naming_the_field(env: Env, field: str, value: str) -> None:
    """Each bad query parameter is refused with 422 and its name in "field"."""
    r = await env.get(**{field: value})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


async def test_needs_the_admin_scope(env: Env) -> None:
    """An mcp key gets 403, no key 401."""
    _, mcp = await env.service.create_api_key({"name": "agent", "scopes": ["mcp"]})
    r = await env.http.get("/api/v1/audit", headers={"Authorization": f"Bearer {mcp}"})
    assert r.status_code == 403
    assert (await env.http.get("/api/v1/audit")).status_code == 401
