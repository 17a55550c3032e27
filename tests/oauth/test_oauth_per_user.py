"""Per-user credentials: each end user's own credential or OAuth grant behind one connection."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2e_harness import Gateway, new_credential, new_slug, streamable_session
from oauth_harness import PUBLIC_CLIENT, AuthorizationServer, ResourceServer, drive_consent
from upstream import UpstreamServer, fingerprint


@pytest.fixture(scope="module")
def static_upstream() -> Iterator[UpstreamServer]:
    """An MCP upstream that accepts the static credentials a test allows."""
    server = UpstreamServer()
    server.start()
    yield server
    server.stop()


async def api(gateway: Gateway, method: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(
            method,
            f"{gateway.base_url}/api/v1{path}",
            headers={"Authorization": f"Bearer {gateway.admin_key}"},
            **kw,
        )


async def key_for(gateway: Gateway, user: str | None) -> str:
    body: dict[str, Any] = {"name": f"key {user}", "scopes": ["mcp"]}
    if user is not None:
        body["user"] = user
    resp = await api(gateway, "POST", "/api-keys", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["user"] == user
    return str(resp.json()["key"])


async def call(
    gateway: Gateway, slug: str, key: str, tool: str = "whoami", user: str | None = None
) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    if user is not None:
        headers["X-Igris-User"] = user
    async with streamable_session(gateway.url(slug), headers) as session:
        result = await session.call_tool(tool, {})
    return str(result.content[0].text)  # type: ignore[union-attr]


async def ping(gateway: Gateway, slug: str, key: str, user: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    if user is not None:
        headers["X-Igris-User"] = user
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            gateway.url(slug), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers
        )


async def test_static_credentials_per_user(
    gateway: Gateway, static_upstream: UpstreamServer
) -> None:
    """alice and bob behind one connection: the upstream sees each one's own credential."""
    slug = new_slug("peruser")
    alice_cred, bob_cred = new_credential("alice"), new_credential("bob")
    static_upstream.accept(alice_cred, bob_cred)
    created = await api(
        gateway,
        "POST",
        "/virtual-keys",
        json={
            "slug": slug,
            "name": "per user",
            "upstreamUrl": static_upstream.base_url + "/mcp",
            "authType": "bearer",
            "credentialScope": "per_user",
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["credentialScope"] == "per_user"
    for user, cred in (("alice", alice_cred), ("bob", bob_cred)):
        put = await api(
            gateway,
            "PUT",
            f"/virtual-keys/{slug}/users/{user}/credential",
            json={"credential": cred},
        )
        assert put.status_code == 200, put.text
        assert cred not in put.text
    alice_key, bob_key, shared_key = (
        await key_for(gateway, "alice"),
        await key_for(gateway, "bob"),
        await key_for(gateway, None),
    )

    assert await call(gateway, slug, alice_key) == fingerprint(alice_cred)
    assert await call(gateway, slug, bob_key) == fingerprint(bob_cred)
    assert await call(gateway, slug, shared_key, user="bob") == fingerprint(bob_cred)

    mismatch = await ping(gateway, slug, alice_key, user="bob")
    assert mismatch.status_code == 403
    assert mismatch.json()["error"]["code"] == "user_mismatch"
    same = await ping(gateway, slug, alice_key, user="alice")
    assert same.status_code not in (401, 403)
    nobody = await ping(gateway, slug, shared_key)
    assert nobody.status_code == 403
    assert nobody.json()["error"]["code"] == "user_credential_missing"
    carol = await ping(gateway, slug, shared_key, user="carol")
    assert carol.json()["error"]["code"] == "user_credential_missing"
    assert "authorizeUrl" not in carol.json()["error"]

    listed = await api(gateway, "GET", f"/virtual-keys/{slug}/users")
    assert [u["user"] for u in listed.json()["data"]] == ["alice", "bob"]
    assert {u["kind"] for u in listed.json()["data"]} == {"static"}

    # A new credential for alice is used at once; bob's removal too.
    alice_new = new_credential("alice2")
    static_upstream.accept(alice_new)
    await api(
        gateway,
        "PUT",
        f"/virtual-keys/{slug}/users/alice/credential",
        json={"credential": alice_new},
    )
    assert await call(gateway, slug, alice_key) == fingerprint(alice_new)
    removed = await api(gateway, "DELETE", f"/virtual-keys/{slug}/users/bob/credential")
    assert removed.status_code == 204
    gone = await ping(gateway, slug, bob_key)
    assert gone.json()["error"]["code"] == "user_credential_missing"
    again = await api(gateway, "DELETE", f"/virtual-keys/{slug}/users/bob/credential")
    assert again.status_code == 404

    # No credential in any answer or in the trail.
    audit = await api(gateway, "GET", f"/virtual-keys/{slug}/audit?limit=200")
    shown = await api(gateway, "GET", f"/virtual-keys/{slug}")
    for cred in (alice_cred, bob_cred, alice_new):
        for text in (audit.text, listed.text, shown.text, created.text):
            assert cred not in text
    actions = {e["action"] for e in audit.json()["data"]}
    assert {"user_credential_set", "user_credential_delete"} <= actions


async def test_oauth2_grants_per_user(
    gateway: Gateway, provider: AuthorizationServer, resource_server: ResourceServer
) -> None:
    """Each user consents for themselves; the upstream sees each one's own token."""
    slug = new_slug("peruseroauth")
    created = await api(
        gateway,
        "POST",
        "/virtual-keys",
        json={
            "slug": slug,
            "name": "per user oauth",
            "upstreamUrl": resource_server.resource,
            "authType": "oauth2",
            "credentialScope": "per_user",
            "oauth": {"clientId": PUBLIC_CLIENT, "scopes": ["mcp:tools"]},
        },
    )
    assert created.status_code == 201, created.text
    callback = f"{gateway.base_url}/api/v1/oauth/callback"
    for user in ("alice", "bob"):
        started = await api(gateway, "POST", f"/virtual-keys/{slug}/users/{user}/oauth/authorize")
        assert started.status_code == 200, started.text
        back = await drive_consent(
            started.json()["authorizeUrl"], account=user, redirect_prefix=callback
        )
        async with httpx.AsyncClient() as browser:
            page = await browser.get(back)
        assert page.status_code == 200
        assert user in page.text
    alice_key, bob_key = await key_for(gateway, "alice"), await key_for(gateway, "bob")
    assert json.loads(await call(gateway, slug, alice_key))["sub"] == "alice"
    assert json.loads(await call(gateway, slug, bob_key))["sub"] == "bob"

    # carol has not consented: 403 with the URL where she can.
    carol_key = await key_for(gateway, "carol")
    missing = await ping(gateway, slug, carol_key)
    assert missing.status_code == 403
    error = missing.json()["error"]
    assert error["code"] == "user_credential_missing"
    back = await drive_consent(error["authorizeUrl"], account="carol", redirect_prefix=callback)
    async with httpx.AsyncClient() as browser:
        assert (await browser.get(back)).status_code == 200
    assert json.loads(await call(gateway, slug, carol_key))["sub"] == "carol"

    listed = await api(gateway, "GET", f"/virtual-keys/{slug}/users")
    users = {u["user"]: u for u in listed.json()["data"]}
    assert set(users) == {"alice", "bob", "carol"}
    assert all(u["kind"] == "oauth2" and u["oauthStatus"] == "authorized" for u in users.values())
    # The connection-wide authorize is refused on a per-user connection.
    wide = await api(gateway, "POST", f"/virtual-keys/{slug}/oauth/authorize")
    assert wide.status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"authType": "bearer", "credentialScope": "per_user", "credential": "x"}, "credential"),
        ({"authType": "none", "credentialScope": "per_user"}, "credentialScope"),
        ({"authType": "bearer", "credentialScope": "everyone"}, "credentialScope"),
    ],
)
async def test_invalid_per_user_connections_are_422(
    gateway: Gateway, body: dict[str, Any], field: str
) -> None:
    """A connection-wide credential on a per-user connection, or a bad scope: 422."""
    resp = await api(
        gateway,
        "POST",
        "/virtual-keys",
        json={
            "slug": new_slug("bad"),
            "name": "b",
            "upstreamUrl": "http://127.0.0.1:1/mcp",
            **body,
        },
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


async def test_user_credential_on_a_shared_connection_is_422(
    gateway: Gateway, static_upstream: UpstreamServer
) -> None:
    """PUT .../users/{user}/credential needs a per_user connection."""
    slug = new_slug("shared")
    await api(
        gateway,
        "POST",
        "/virtual-keys",
        json={
            "slug": slug,
            "name": "s",
            "upstreamUrl": static_upstream.base_url + "/mcp",
            "credential": "shared-token",
        },
    )
    resp = await api(
        gateway, "PUT", f"/virtual-keys/{slug}/users/alice/credential", json={"credential": "x"}
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "credentialScope"


async def test_sdk_methods_for_oauth_and_per_user(
    gateway: Gateway,
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    static_upstream: UpstreamServer,
) -> None:
    """AsyncIgrisClient creates OAuth and per-user connections, sets users, gets consent URLs."""
    from igris_mw import ValidationError
    from igris_mw.client import AsyncIgrisClient

    async with AsyncIgrisClient(gateway.base_url, gateway.admin_key) as client:
        slug = new_slug("sdk")
        conn = await client.create_connection(
            slug, "sdk", static_upstream.base_url + "/mcp", credential_scope="per_user"
        )
        assert conn["credentialScope"] == "per_user"
        canary = new_credential("sdk-canary")
        shown = await client.set_user_credential(slug, "dana/ü", canary)
        assert shown["user"] == "dana/ü"
        assert canary not in json.dumps(shown)
        assert [u["user"] for u in await client.list_users(slug)] == ["dana/ü"]
        await client.delete_user_credential(slug, "dana/ü")
        assert await client.list_users(slug) == []

        oauth_slug = new_slug("sdkoauth")
        created = await client.create_connection(
            oauth_slug,
            "sdk oauth",
            resource_server.resource,
            auth_type="oauth2",
            oauth={"clientId": PUBLIC_CLIENT, "scopes": ["mcp:tools"]},
        )
        assert created["oauthStatus"] == "pending"
        url = await client.authorize_connection(oauth_slug)
        assert url.startswith(f"{provider.issuer}/auth?")
        with pytest.raises(ValidationError) as info:
            await client.authorize_connection(slug, user="dana")
        assert info.value.field == "authType"
        key = await client.create_api_key("bound", ["mcp"], user="dana")
        assert key.record["user"] == "dana"
