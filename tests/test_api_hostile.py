"""The management API refuses lone surrogates cleanly (no 500, nothing stored)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from igris_mw._api import ManagementAPI
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.testing import FixedKeyring

BASE = "http://gw.test"
CONN = '{"slug": "%s", "name": %s, "upstreamUrl": "https://up.test/mcp", "credential": %s}'


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Service, str]]:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    service = Service(store, FixedKeyring())
    _, admin = await service.create_api_key({"name": "admin", "scopes": ["admin"]})
    app = ManagementAPI(service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        yield http, service, admin
    await store.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/virtual-keys", CONN % ("sur-a", '"\\ud800"', '"c"')),
        ("POST", "/api/v1/virtual-keys", CONN % ("sur-b", '"ok"', '"c\\udfff"')),
        ("POST", "/api/v1/virtual-keys", '{"slug": "sur-c", "\\ud800": 1}'),
        ("PATCH", "/api/v1/virtual-keys/base", '{"name": "x\\ud800y"}'),
        ("POST", "/api/v1/virtual-keys/base/rotate", '{"credential": "\\udbff"}'),
        ("POST", "/api/v1/api-keys", '{"name": "\\ud800", "scopes": ["mcp"]}'),
    ],
)
async def test_lone_surrogate_is_400_and_nothing_changes(
    api: tuple[httpx.AsyncClient, Service, str], method: str, path: str, body: str
) -> None:
    """A lone UTF-16 surrogate escape anywhere in a body is 400 invalid_json, never a 500."""
    http, _, admin = api
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    made = await http.post(
        "/api/v1/virtual-keys",
        headers=headers,
        content=CONN % ("base", '"base"', '"c"'),
    )
    assert made.status_code == 201
    before = await http.get("/api/v1/virtual-keys/base", headers=headers)
    keys_before = await http.get("/api/v1/api-keys", headers=headers)
    r = await http.request(method, path, headers=headers, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json"
    assert (await http.get("/api/v1/virtual-keys/base", headers=headers)).json() == before.json()
    assert (await http.get("/api/v1/api-keys", headers=headers)).json() == keys_before.json()
    listed = await http.get("/api/v1/virtual-keys", headers=headers)
    assert [c["slug"] for c in listed.json()["data"]] == ["base"]


async def test_surrogate_pairs_are_kept(api: tuple[httpx.AsyncClient, Service, str]) -> None:
    """A proper surrogate pair (an emoji written as escapes) is ordinary text."""
    http, _, admin = api
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    r = await http.post(
        "/api/v1/virtual-keys", headers=headers, content=CONN % ("emo", '"\\ud83d\\ude00"', '"c"')
    )
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "\U0001f600"
