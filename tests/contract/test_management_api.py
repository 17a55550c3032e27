"""Contract, first part: the management API under /api/v1 (connections, keys, audit)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from contract_harness import Served, error_of, new_slug, serve

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
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
}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A store of this module's own: its listings are walked whole."""
    home = tmp_path_factory.mktemp("contract-management_api") / "home"
    with serve(home) as served:
        yield served


def _body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "slug": new_slug(),
        "name": "Contract",
        "upstreamUrl": "https://mcp.example.com/mcp",
        "credential": "cred-canary-Qx7Jd0",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def test_create_returns_201_with_the_connection_in_camel_case(gw: Served) -> None:
    """POST /virtual-keys: 201, every field, defaults, absolute gatewayUrl, no credential."""
    body = _body()
    r = gw.api("POST", "/api/v1/virtual-keys", json=body)
    assert r.status_code == 201, r.text
    c = r.json()
    assert set(c) >= CONNECTION_FIELDS, c
    assert "credential" not in c
    assert "cred-canary-Qx7Jd0" not in r.text
    assert c["slug"] == body["slug"]
    assert c["name"] == "Contract"
    assert c["upstreamUrl"] == "https://mcp.example.com/mcp"
    assert c["authType"] == "bearer"
    assert c["enabled"] is True
    assert type(c["credentialVersion"]) is int
    for field in ("createdAt", "updatedAt"):
        assert RFC3339_UTC.match(c[field]), c[field]
    assert c["gatewayUrl"] == f"{gw.url}/v1/mcp/{body['slug']}"


@pytest.mark.parametrize("slug", ["abc", "0-_", "a" * 64, "9lives"])
def test_slug_pattern_accepts(gw: Served, slug: str) -> None:
    """Slugs matching ^[a-z0-9][a-z0-9_-]{2,63}$ are accepted."""
    gw.api("DELETE", f"/api/v1/virtual-keys/{slug}")
    r = gw.api("POST", "/api/v1/virtual-keys", json=_body(slug=slug))
    assert r.status_code == 201, r.text
    assert gw.api("DELETE", f"/api/v1/virtual-keys/{slug}").status_code == 204


@pytest.mark.parametrize(
    "slug", ["ab", "Abc", "-abc", "_abc", "a" * 65, "ab c", "abc/d", "äbc", ""]
)
def test_slug_pattern_refuses_with_422_naming_the_field(gw: Served, slug: str) -> None:
    """A slug outside the pattern is a 422 whose message names `slug`."""
    err = error_of(gw.api("POST", "/api/v1/virtual-keys", json=_body(slug=slug)), 422)
    assert "slug" in err["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"upstreamUrl": "ftp://mcp.example.com/"}, "upstreamUrl"),
        ({"upstreamUrl": "http://"}, "upstreamUrl"),
        ({"upstreamUrl": "not a url"}, "upstreamUrl"),
        ({"authType": "kerberos"}, "authType"),
        ({"authType": "header"}, "headerName"),
        ({"authType": "header", "headerName": "bad name"}, "headerName"),
        ({"authType": "header", "headerName": "X-Key:"}, "headerName"),
        ({"credential": None}, "credential"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_invalid_field_is_422_naming_it_and_stores_nothing(
    gw: Served, fields: dict[str, Any], field: str
) -> None:
    """Each invalid field gives 422 naming the field; nothing is created."""
    body = _body(**fields)
    if fields.get("credential", "x") is None:
        body.pop("credential", None)
    err = error_of(gw.api("POST", "/api/v1/virtual-keys", json=body), 422)
    assert field in err["message"], err
    assert gw.api("GET", f"/api/v1/virtual-keys/{body['slug']}").status_code == 404


def test_auth_types_header_basic_none_are_accepted(gw: Served) -> None:
    """authType header (with headerName), basic and none (no credential) create."""
    for extra in (
        {"authType": "header", "headerName": "X-Api-Key"},
        {"authType": "basic", "credential": "user:pw"},
        {"authType": "none", "credential": None},
    ):
        r = gw.api("POST", "/api/v1/virtual-keys", json=_body(**extra))
        assert r.status_code == 201, (extra, r.text)
        assert r.json()["authType"] == extra["authType"]


def test_create_disabled(gw: Served) -> None:
    """enabled: false on create stores a revoked connection."""
    r = gw.api("POST", "/api/v1/virtual-keys", json=_body(enabled=False))
    assert r.status_code == 201
    assert r.json()["enabled"] is False


def test_slug_taken_is_409(gw: Served) -> None:
    """A second create with the same slug is 409 and the first stays as it was."""
    body = _body()
    assert gw.api("POST", "/api/v1/virtual-keys", json=body).status_code == 201
    error_of(gw.api("POST", "/api/v1/virtual-keys", json={**body, "name": "Other"}), 409)
    assert gw.api("GET", f"/api/v1/virtual-keys/{body['slug']}").json()["name"] == "Contract"


def test_bad_json_is_400(gw: Served) -> None:
    """A body that is not JSON is 400 with the error shape."""
    r = gw.api(
        "POST",
        "/api/v1/virtual-keys",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    error_of(r, 400)


def test_no_key_or_bad_key_is_401(gw: Served) -> None:
    """No Authorization, a malformed key or an unknown ig_ key: 401."""
    url = gw.url + "/api/v1/virtual-keys"
    error_of(httpx.get(url), 401)
    error_of(httpx.get(url, headers={"Authorization": "Bearer nope"}), 401)
    error_of(httpx.get(url, headers={"Authorization": "Bearer ig_" + "A" * 36}), 401)
    error_of(httpx.get(url, headers={"Authorization": "Basic Zm9vOmJhcg=="}), 401)


def test_mcp_key_lacks_admin_scope_403(gw: Served) -> None:
    """An mcp-scoped key on the management API: 403."""
    key, _ = gw.mcp_key()
    error_of(gw.api("GET", "/api/v1/virtual-keys", key=key), 403)
    error_of(
        gw.api("POST", "/api/v1/api-keys", key=key, json={"name": "x", "scopes": ["admin"]}), 403
    )


def test_unknown_slug_is_404_everywhere(gw: Served) -> None:
    """GET, PATCH, DELETE, rotate, disable, enable, audit of an unknown slug: 404."""
    base = "/api/v1/virtual-keys/no-such-slug"
    error_of(gw.api("GET", base), 404)
    error_of(gw.api("PATCH", base, json={"name": "x"}), 404)
    error_of(gw.api("DELETE", base), 404)
    error_of(gw.api("POST", base + "/rotate", json={"credential": "c"}), 404)
    error_of(gw.api("POST", base + "/disable"), 404)
    error_of(gw.api("POST", base + "/enable"), 404)
    error_of(gw.api("GET", base + "/audit"), 404)
    error_of(gw.api("DELETE", "/api/v1/api-keys/no-such-key"), 404)


def test_huge_body_is_413(gw: Served) -> None:
    """A management body of 10 MB is 413 and nothing is stored."""
    body = _body(name="x" * (10 * 1024 * 1024))
    error_of(gw.api("POST", "/api/v1/virtual-keys", json=body), 413)
    assert gw.api("GET", f"/api/v1/virtual-keys/{body['slug']}").status_code == 404


def test_list_pages_with_data_and_next_cursor(gw: Served) -> None:
    """GET /virtual-keys pages with limit and cursor; nextCursor is null on the last page."""
    for _ in range(3):
        gw.create_connection(None)
    r = gw.api("GET", "/api/v1/virtual-keys")
    assert r.status_code == 200
    assert set(r.json()) == {"data", "nextCursor"}
    total = [c["slug"] for c in r.json()["data"]]
    assert len(total) >= 3
    assert len(total) <= 50
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = gw.api("GET", "/api/v1/virtual-keys", params=params).json()
        assert len(page["data"]) <= 2
        for c in page["data"]:
            assert "credential" not in c
            assert c["gatewayUrl"].endswith("/v1/mcp/" + c["slug"])
        seen += [c["slug"] for c in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(total)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("limit", ["0", "201", "-1", "abc"])
def test_list_limit_out_of_range_is_422(gw: Served, limit: str) -> None:
    """?limit= outside 1-200 is 422."""
    error_of(gw.api("GET", "/api/v1/virtual-keys", params={"limit": limit}), 422)


def test_list_limit_bounds_are_accepted(gw: Served) -> None:
    """?limit=1 and ?limit=200 are accepted."""
    assert len(gw.api("GET", "/api/v1/virtual-keys", params={"limit": 1}).json()["data"]) == 1
    assert gw.api("GET", "/api/v1/virtual-keys", params={"limit": 200}).status_code == 200


def test_get_patch_rotate_disable_enable_delete(gw: Served) -> None:
    """The connection lifecycle with the contract's statuses and fields."""
    c = gw.create_connection(None)
    path = f"/api/v1/virtual-keys/{c['slug']}"
    r = gw.api("GET", path)
    assert r.status_code == 200
    assert r.json()["slug"] == c["slug"]
    assert c["_credential"] not in r.text

    r = gw.api(
        "PATCH",
        path,
        json={
            "name": "Renamed",
            "upstreamUrl": "https://b.example/mcp",
            "authType": "header",
            "headerName": "X-Token",
        },
    )
    assert r.status_code == 200, r.text
    p = r.json()
    assert (p["name"], p["upstreamUrl"], p["authType"], p["headerName"]) == (
        "Renamed",
        "https://b.example/mcp",
        "header",
        "X-Token",
    )
    assert p["credentialVersion"] == c["credentialVersion"]

    r = gw.api("PATCH", path, json={"enabled": False})
    assert r.status_code == 200
    assert r.json()["enabled"] is False
    r = gw.api("PATCH", path, json={"enabled": True})
    assert r.status_code == 200
    assert r.json()["enabled"] is True

    r = gw.api("POST", path + "/rotate", json={"credential": "rotated-canary-3kd9"})
    assert r.status_code == 200, r.text
    rot = r.json()
    assert rot["credentialVersion"] == c["credentialVersion"] + 1
    assert rot["rotatedAt"]
    assert RFC3339_UTC.match(rot["rotatedAt"])
    assert "rotated-canary-3kd9" not in r.text

    r = gw.api("POST", path + "/disable")
    assert r.status_code == 200
    assert r.json()["enabled"] is False
    r = gw.api("POST", path + "/enable")
    assert r.status_code == 200
    assert r.json()["enabled"] is True

    r = gw.api("DELETE", path)
    assert r.status_code == 204
    assert r.content == b""
    error_of(gw.api("GET", path), 404)


def test_bad_patch_changes_nothing(gw: Served) -> None:
    """An invalid PATCH is 422 and the stored connection is unchanged."""
    c = gw.create_connection(None)
    path = f"/api/v1/virtual-keys/{c['slug']}"
    before = gw.api("GET", path).json()
    error_of(gw.api("PATCH", path, json={"name": "ok", "upstreamUrl": "ftp://x"}), 422)
    error_of(gw.api("PATCH", path, json={"authType": "header"}), 422)
    error_of(gw.api("POST", path + "/rotate", json={}), 422)
    assert gw.api("GET", path).json() == before


def test_connection_audit_trail_newest_first_with_paging(gw: Served) -> None:
    """GET .../audit: data + nextCursor, newest first, the management changes included."""
    c = gw.create_connection(None)
    path = f"/api/v1/virtual-keys/{c['slug']}"
    gw.api("POST", path + "/disable")
    gw.api("POST", path + "/enable")
    r = gw.api("GET", path + "/audit")
    assert r.status_code == 200
    assert set(r.json()) == {"data", "nextCursor"}
    events = r.json()["data"]
    assert len(events) >= 3
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    assert all(e["connection"] == c["slug"] for e in events)
    assert c["_credential"] not in r.text
    page = gw.api("GET", path + "/audit", params={"limit": 1}).json()
    assert len(page["data"]) == 1
    assert page["nextCursor"]
    page2 = gw.api("GET", path + "/audit", params={"limit": 1, "cursor": page["nextCursor"]})
    assert page2.json()["data"][0]["id"] != page["data"][0]["id"]
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert gw.api("GET", path + "/audit", params={"since": future}).json()["data"] == []
    error_of(gw.api("GET", path + "/audit", params={"since": "yesterday"}), 422)


def test_api_keys_issue_list_revoke(gw: Served) -> None:
    """POST /api-keys: 201 with key once; list never shows it; DELETE 204 revokes at once."""
    r = gw.api("POST", "/api/v1/api-keys", json={"name": "agent", "scopes": ["admin"]})
    assert r.status_code == 201, r.text
    key, kid = r.json()["key"], r.json()["id"]
    assert key.startswith("ig_")
    listing = gw.api("GET", "/api/v1/api-keys")
    assert listing.status_code == 200
    assert key not in listing.text
    body = listing.json()
    items = body["data"] if isinstance(body, dict) else body
    assert kid in [k["id"] for k in items]
    assert all("key" not in k for k in items)
    assert gw.api("GET", "/api/v1/virtual-keys", key=key).status_code == 200
    assert gw.api("DELETE", f"/api/v1/api-keys/{kid}").status_code == 204
    error_of(gw.api("GET", "/api/v1/virtual-keys", key=key), 401)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": ["admin"]}, "name"),
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": ["mcp"], "connections": "abc"}, "connections"),
        ({"name": "x", "scopes": ["mcp"], "expiresAt": "tomorrow"}, "expiresAt"),
    ],
)
def test_api_key_invalid_field_is_422(gw: Served, body: dict[str, Any], field: str) -> None:
    """An invalid api-key field is 422 naming it."""
    err = error_of(gw.api("POST", "/api/v1/api-keys", json=body), 422)
    assert field in err["message"], err


def test_expired_key_is_401(gw: Served) -> None:
    """A key whose expiresAt has passed authenticates nothing (401)."""
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = gw.api(
        "POST", "/api/v1/api-keys", json={"name": "old", "scopes": ["admin"], "expiresAt": past}
    )
    if r.status_code == 422:  # refusing a past expiry on create is also fair
        return
    assert r.status_code == 201
    error_of(gw.api("GET", "/api/v1/virtual-keys", key=r.json()["key"]), 401)


@pytest.mark.parametrize("name", ["é" * 200, "😀" * 200, "a", "名前"])
def test_name_counts_characters(gw: Served, name: str) -> None:
    """name is 1-200 characters, whatever their UTF-8 length."""
    r = gw.api("POST", "/api/v1/virtual-keys", json=_body(name=name))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name


@pytest.mark.parametrize("header", ["X_Key", "X.Key", "x-api-key", "!#$%&'*+-.^_`|~0Az"])
def test_header_name_accepts_rfc9110_tokens(gw: Served, header: str) -> None:
    """Any RFC 9110 token that is not a reserved header is a valid headerName."""
    r = gw.api("POST", "/api/v1/virtual-keys", json=_body(authType="header", headerName=header))
    assert r.status_code == 201, r.text


def test_default_page_is_50(gw: Served) -> None:
    """GET /virtual-keys without limit answers at most 50, with a nextCursor when there is more."""
    have = len(gw.api("GET", "/api/v1/virtual-keys", params={"limit": 200}).json()["data"])
    for _ in range(max(0, 51 - have)):
        gw.create_connection(None)
    page = gw.api("GET", "/api/v1/virtual-keys").json()
    assert len(page["data"]) == 50
    assert page["nextCursor"] is not None


def test_bad_cursor_is_a_client_error(gw: Served) -> None:
    """A cursor the server never issued is a 4xx with the error shape, never a 500."""
    for path in ("/api/v1/virtual-keys", "/api/v1/api-keys"):
        r = gw.api("GET", path, params={"cursor": "not-a-cursor!!"})
        if r.status_code != 200:
            assert 400 <= r.status_code < 500
            error_of(r, r.status_code)


def test_since_accepts_an_rfc3339_offset(gw: Served) -> None:
    """since takes any RFC 3339 time, a numeric offset too."""
    c = gw.create_connection(None)
    r = gw.api(
        "GET",
        f"/api/v1/virtual-keys/{c['slug']}/audit",
        params={"since": "2020-01-01T00:00:00+02:00"},
    )
    assert r.status_code == 200
    assert r.json()["data"]


def test_expires_at_accepts_an_offset(gw: Served) -> None:
    """expiresAt takes an RFC 3339 time with an offset and reads back in UTC."""
    r = gw.api(
        "POST",
        "/api/v1/api-keys",
        json={"name": "o", "scopes": ["mcp"], "expiresAt": "2099-01-01T02:00:00+02:00"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["expiresAt"].startswith("2099-01-01T00:00:00")


def test_unknown_method_and_route_have_the_error_shape(gw: Served) -> None:
    """An unknown route or method under /api/v1 answers the JSON error shape."""
    r = gw.api("PUT", "/api/v1/virtual-keys")
    assert r.status_code in (404, 405)
    error_of(r, r.status_code)
    error_of(gw.api("GET", "/api/v1/nothing-here"), 404)


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"null", b"12"])
def test_non_object_body_is_a_client_error(gw: Served, body: bytes) -> None:
    """A JSON body that is not an object is 400 or 422 with the error shape."""
    r = gw.api(
        "POST", "/api/v1/virtual-keys", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422)
    error_of(r, r.status_code)


def test_rotate_basic_needs_user_password(gw: Served) -> None:
    """Rotating a basic connection to a credential without ':' is 422; nothing changes."""
    c = gw.create_connection(None, authType="basic", credential="u:p")
    path = f"/api/v1/virtual-keys/{c['slug']}"
    error_of(gw.api("POST", path + "/rotate", json={"credential": "no-colon"}), 422)
    assert gw.api("GET", path).json()["credentialVersion"] == c["credentialVersion"]


def test_errors_are_json(gw: Served) -> None:
    """Error answers are application/json."""
    r = gw.api("GET", "/api/v1/virtual-keys/no-such-slug")
    assert r.headers["content-type"].startswith("application/json")
