"""The dashboard in-process (httpx.ASGITransport): headers, sessions, CSRF, escaping, forms."""

from __future__ import annotations

import asyncio
import html
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import markupsafe
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from igris_mw import IgrisGateway
from igris_mw._dashboard import Dashboard, policy
from igris_mw._dashboard import connections as dashboard_connections
from igris_mw._dashboard import http as dashboard_http
from igris_mw._dashboard import keys as dashboard_keys
from igris_mw._dashboard.policy import Features, input_for, policy_body, policy_values
from igris_mw._dashboard.sessions import SessionStore, SignInThrottle
from igris_mw.errors import StoreUnavailable
from igris_mw.models import AuditEvent, utcnow
from igris_mw.testing import FixedKeyring, MemoryStore

BASE = "http://gw.test"
CANARY = "canary-Qx81Zp-credential"
HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(1)</script>"
TEMPLATES = Path(__file__).resolve().parents[1] / "igris_mw" / "_dashboard" / "templates"
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@attrs.define
class Env:
    gw: IgrisGateway
    admin_key: str
    admin_id: str
    mcp_key: str
    http: httpx.AsyncClient

    async def sign_in(self, key: str | None = None) -> httpx.Response:
        form = await self.http.get("/ui/login")
        token = CSRF_RE.search(form.text)
        assert token is not None
        return await self.http.post(
            "/ui/login", data={"csrf": token.group(1), "key": key or self.admin_key}
        )

    async def csrf(self, path: str = "/ui/connections") -> str:
        page = await self.http.get(path)
        token = CSRF_RE.search(page.text)
        assert token is not None, page.text
        return token.group(1)

    async def create(self, slug: str = "github", **over: str) -> httpx.Response:
        data = {
            "csrf": await self.csrf(),
            "slug": slug,
            "name": "GitHub",
            "upstreamUrl": "https://up.test/mcp",
            "authType": "bearer",
            "credential": CANARY,
            "enabled": "on",
            **over,
        }
        return await self.http.post("/ui/connections", data=data)


async def make_env(
    *, base: str = BASE, client: tuple[str, int] = ("127.0.0.1", 5000), **options: Any
) -> tuple[IgrisGateway, httpx.AsyncClient, str, str, str]:
    gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring(), dashboard=True, **options)
    await gw.startup()
    admin, admin_key = await gw.service.create_api_key({"name": "admin", "scopes": ["admin"]})
    _, mcp_key = await gw.service.create_api_key({"name": "agent", "scopes": ["mcp"]})
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw, client=client), base_url=base)
    return gw, http, admin_key, admin.id, mcp_key


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    gw, http, admin_key, admin_id, mcp_key = await make_env()
    async with http:
        yield Env(gw, admin_key, admin_id, mcp_key, http)
    await gw.aclose()


@pytest.fixture
async def signed_in(env: Env) -> Env:
    response = await env.sign_in()
    assert response.status_code == 303
    return env


def assert_page_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


async def test_every_page_carries_the_security_headers(signed_in: Env) -> None:
    """CSP without inline script, DENY framing, no referrer, no-store on pages and errors."""
    env = signed_in
    await env.create()
    paths = [
        "/ui/connections",
        "/ui/new/connection",
        "/ui/connections/github",
        "/ui/connections/github/delete",
        "/ui/connections/github/edit",
        "/ui/api-keys",
        "/ui/new/api-key",
        "/ui/audit",
        "/ui/connections/nope",
        "/ui/connections/github/audit.json",
        "/ui/no-such-page",
    ]
    for path in paths:
        response = await env.http.get(path)
        assert response.status_code in (200, 404), path
        assert_page_headers(response)
    await env.http.post("/ui/logout", data={"csrf": await env.csrf()})
    assert_page_headers(await env.http.get("/ui/login"))


async def test_pages_need_a_session(env: Env) -> None:
    """Without signing in, pages redirect to the sign-in form and JSON answers 401."""
    for path in ("/ui/connections", "/ui/api-keys", "/ui/audit", "/ui/connections/x1y"):
        response = await env.http.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login"
    assert (await env.http.get("/ui/audit.json")).status_code == 401
    response = await env.http.post("/ui/connections", data={"slug": "abc"})
    assert response.status_code == 401
    assert await env.gw.service.list_connections() == type(await env.gw.service.list_connections())(
        [], None
    )


async def test_the_session_cookie_is_httponly_strict_and_never_the_key(env: Env) -> None:
    """Sign-in sets an HttpOnly, SameSite=Strict cookie on /ui/ that is not the key."""
    response = await env.sign_in()
    assert response.status_code == 303
    cookies = response.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("igris_session="))
    parts = [p.strip() for p in session.split(";")]
    assert "HttpOnly" in parts
    assert "SameSite=Strict" in parts
    assert "Path=/ui/" in parts
    assert "Secure" not in parts  # plain http here
    value = parts[0].split("=", 1)[1]
    assert len(value) >= 40
    assert env.admin_key not in session
    for header in response.headers.values():
        assert env.admin_key not in header


async def test_the_cookie_is_secure_on_https() -> None:
    """On https (or behind an https public_url) the cookies carry Secure."""
    for base, options in (
        ("https://gw.test", {}),
        ("http://gw.test", {"public_url": "https://gw.example"}),
    ):
        gw, http, admin_key, _, _ = await make_env(base=base, **options)
        async with http:
            form = await http.get("/ui/login")
            assert "Secure" in form.headers["set-cookie"]
            token = CSRF_RE.search(form.text)
            assert token is not None
            response = await http.post("/ui/login", data={"csrf": token.group(1), "key": admin_key})
            assert all("Secure" in c for c in response.headers.get_list("set-cookie"))
        await gw.aclose()


async def test_sign_out_ends_the_session_on_the_server(signed_in: Env) -> None:
    """After sign-out the old cookie is worthless even if a browser replays it."""
    env = signed_in
    old = env.http.cookies.get("igris_session")
    response = await env.http.post("/ui/logout", data={"csrf": await env.csrf()})
    assert response.status_code == 303
    assert "Max-Age=0" in response.headers["set-cookie"]
    env.http.cookies.set("igris_session", old or "", domain="gw.test", path="/ui/")
    assert (await env.http.get("/ui/connections")).status_code == 303
    assert len(env.gw.dashboard.sessions) == 0


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    signed_in: Env,
) -> None:
    """No token, a wrong token, or another session's token: 403 and nothing stored."""
    env = signed_in
    await env.create()
    other_gw_session = env.gw.dashboard.sessions.create(env.admin_id)
    for token in (None, "", "x" * 43, other_gw_session.csrf):
        data = {
            "slug": "second",
            "name": "n",
            "upstreamUrl": "https://u.test/",
            "credential": CANARY,
        }
        if token is not None:
            data["csrf"] = token
        response = await env.http.post("/ui/connections", data=data)
        assert response.status_code == 403
        assert "CSRF" in response.text
        disable = await env.http.post(
            "/ui/connections/github/disable", data={} if token is None else {"csrf": token}
        )
        assert disable.status_code == 403
    assert [c.slug for c in (await env.gw.service.list_connections()).items] == ["github"]
    assert (await env.gw.service.get_connection("github")).enabled is True


async def test_sign_in_needs_its_form_token(env: Env) -> None:
    """A sign-in POST without the login form's token (cookie + field) is 403."""
    response = await env.http.post("/ui/login", data={"key": env.admin_key})
    assert response.status_code == 403
    assert "igris_session" not in response.headers.get("set-cookie", "")


async def test_a_post_from_another_origin_is_refused(signed_in: Env) -> None:
    """Origin of another site, or Sec-Fetch-Site cross-site: 403 even with the token."""
    env = signed_in
    token = await env.csrf()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = await env.http.post(
            "/ui/connections",
            data={
                "csrf": token,
                "slug": "abc",
                "name": "n",
                "upstreamUrl": "https://u.test/",
                "credential": CANARY,
            },
            headers=headers,
        )
        assert response.status_code == 403
    same = await env.http.post(
        "/ui/connections",
        data={
            "csrf": token,
            "slug": "abc",
            "name": "n",
            "upstreamUrl": "https://u.test/",
            "credential": CANARY,
        },
        headers={"Origin": "http://gw.test", "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 303


async def test_failed_sign_ins_are_throttled_per_client_address(env: Env) -> None:
    """Five failures in a minute: the sixth try is 429 even with the right key; others pass."""
    for _ in range(5):
        response = await env.sign_in("ig_wrong")
        assert response.status_code == 401
        assert "ig_wrong" not in response.text
    blocked = await env.sign_in()
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1
    assert "igris_session" not in blocked.headers.get("set-cookie", "")
    gw2_http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=env.gw, client=("10.9.9.9", 1)), base_url=BASE
    )
    async with gw2_http:
        form = await gw2_http.get("/ui/login")
        token = CSRF_RE.search(form.text)
        assert token is not None
        other = await gw2_http.post(
            "/ui/login", data={"csrf": token.group(1), "key": env.admin_key}
        )
    assert other.status_code == 303


async def test_an_mcp_key_cannot_sign_in(env: Env) -> None:
    """A key without the admin scope is refused (403) and no session is made."""
    response = await env.sign_in(env.mcp_key)
    assert response.status_code == 403
    assert "admin scope" in response.text
    assert env.mcp_key not in response.text
    assert len(env.gw.dashboard.sessions) == 0


async def test_revoking_the_admin_key_ends_its_sessions(signed_in: Env) -> None:
    """A session whose key is revoked (through the API's service) is over at once."""
    env = signed_in
    assert (await env.http.get("/ui/connections")).status_code == 200
    await env.gw.service.revoke_api_key(env.admin_id)
    response = await env.http.get("/ui/connections")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"


async def test_admin_and_client_strings_render_as_text(signed_in: Env) -> None:
    """A hostile name, user, path and metadata appear escaped in every page and never as tags."""
    env = signed_in
    assert (await env.create(name=HOSTILE)).status_code == 303
    event = AuditEvent(
        id="evt_hostile",
        timestamp=utcnow(),
        connection="github",
        user=SCRIPT,
        metadata={"note": SCRIPT},
        method="POST",
        path="/v1/mcp/github/" + HOSTILE,
        rpc_method="tools/call",
        tool=SCRIPT,
        status=200,
    )
    await env.gw.service.audit.append_audit_events([event])
    for path in (
        "/ui/connections",
        "/ui/connections/github",
        "/ui/audit",
        "/ui/audit?user=" + SCRIPT,
        "/ui/connections/github/delete",
    ):
        page = await env.http.get(path)
        assert page.status_code == 200
        assert "<img src=x" not in page.text
        assert "<script>alert" not in page.text
        assert html.escape(HOSTILE, quote=False) in page.text.replace("&#34;", '"').replace(
            "&#39;", "'"
        )
    audit = await env.http.get("/ui/audit")
    assert html.escape(SCRIPT) in audit.text
    live = await env.http.get("/ui/connections/github/audit.json")
    assert live.headers["content-type"] == "application/json"
    assert live.headers["x-content-type-options"] == "nosniff"
    assert any(SCRIPT in row["cells"] for row in live.json()["rows"])


@given(st.text(min_size=1, max_size=40).filter(lambda t: not any(c in t for c in "\r\n\x00")))
def test_any_connection_name_is_escaped(name: str) -> None:
    """Whatever the name, the connections page shows it escaped, never as markup."""

    async def run() -> str:
        gw, http, admin_key, _, _ = await make_env()
        async with http:
            env = Env(gw, admin_key, "", "", http)
            await env.sign_in()
            created = await env.create(name=name)
            assert created.status_code == 303, created.text
            page = (await http.get("/ui/connections")).text
        await gw.aclose()
        return page

    page = asyncio.run(run())
    assert f"<td>{markupsafe.escape(name)}</td>" in page
    if any(c in name for c in "<>&\"'"):
        assert f"<td>{name}</td>" not in page


async def test_a_bad_field_is_shown_next_to_it_and_the_credential_is_not_echoed(
    signed_in: Env,
) -> None:
    """The API's 422 field decides where the message goes; the credential never comes back."""
    env = signed_in
    cases = {
        "slug": {"slug": "A"},
        "upstreamUrl": {"upstreamUrl": "ftp://nope"},
        "upstreamUrl ": {"upstreamUrl": "http://169.254.169.254/latest"},  # egress policy
        "headerName": {"authType": "header", "headerName": "bad header"},
        "credential": {"authType": "basic", "credential": CANARY},  # basic needs user:password
    }
    for field, over in cases.items():
        response = await env.create(**over)
        assert response.status_code == 422, field
        assert f'id="e-{field.strip()}"' in response.text, field
        assert CANARY not in response.text
        assert 'value="GitHub"' in response.text  # other fields are kept
    taken = await env.create()
    assert taken.status_code == 303
    again = await env.create()
    assert again.status_code == 409
    assert 'id="e-slug"' in again.text
    assert CANARY not in again.text
    rotate = await env.http.post(
        "/ui/connections/github/rotate", data={"csrf": await env.csrf(), "credential": ""}
    )
    assert rotate.status_code == 422
    assert 'id="e-credential"' in rotate.text


async def test_password_fields_are_write_only_and_forms_post(signed_in: Env) -> None:
    """Every credential or key input is a password field with autocomplete=off and no value."""
    env = signed_in
    await env.create()
    await env.http.post("/ui/logout", data={"csrf": await env.csrf()})
    pages = [(await env.http.get("/ui/login")).text]
    await env.sign_in()
    for path in ("/ui/new/connection", "/ui/connections/github"):
        pages.append((await env.http.get(path)).text)
    for page in pages:
        inputs = re.findall(r"<input[^>]*type=\"password\"[^>]*>", page)
        assert inputs
        for tag in inputs:
            assert 'autocomplete="off"' in tag
            assert 'value=""' in tag
        assert not re.search(
            r'<form[^>]*method="get"[^>]*>(?:(?!</form>).)*type="password"', page, re.S
        )


async def test_templates_have_no_inline_script_or_handlers() -> None:
    """CSP forbids inline script, so no template carries one (or an on* handler)."""
    for path in TEMPLATES.glob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\ssrc=)", text), path.name
        assert not re.search(r"\son[a-z]+\s*=", text), path.name
        assert "style=" not in text, path.name
        assert "|safe" not in text, path.name


async def test_a_new_api_key_is_shown_once(signed_in: Env) -> None:
    """New API key redirects to a page that shows the key once; a reload shows it no more."""
    env = signed_in
    response = await env.http.post(
        "/ui/api-keys", data={"csrf": await env.csrf(), "name": "bot", "scope": "mcp"}
    )
    assert response.status_code == 303
    assert "ig_" not in response.headers["location"]
    shown = await env.http.get("/ui/api-keys/created")
    keys = re.findall(r"ig_[A-Za-z0-9]+", shown.text)
    assert len(keys) == 1
    record = await env.gw.service.authenticate(keys[0])
    assert record.name == "bot"
    again = await env.http.get("/ui/api-keys/created")
    assert again.status_code == 303
    listing = await env.http.get("/ui/api-keys")
    assert keys[0] not in listing.text
    revoke = await env.http.post(
        f"/ui/api-keys/{record.id}/revoke", data={"csrf": await env.csrf()}
    )
    assert revoke.status_code == 303
    keys_now = {k.id: k for k in await env.gw.service.list_api_keys()}
    assert keys_now[record.id].revoked_at is not None


async def test_api_key_form_errors_are_shown_next_to_the_field(signed_in: Env) -> None:
    """An empty name, an unknown connection or a past expiry are 422 next to their field."""
    env = signed_in
    for data, field in (
        ({"name": ""}, "name"),
        ({"expiresAt": "2001-01-01T00:00"}, "expiresAt"),
        ({"expiresAt": "yesterday"}, "expiresAt"),
    ):
        body = {"csrf": await env.csrf(), "name": "bot", "scope": "mcp", **data}
        response = await env.http.post("/ui/api-keys", data=body)
        assert response.status_code == 422, data
        assert f'id="e-{field}"' in response.text, (data, response.text)


async def test_the_audit_page_filters(signed_in: Env) -> None:
    """Slug, outcome, user and since narrow the global trail; a bad since is shown at its field."""
    env = signed_in
    await env.create("alpha")
    await env.create("bravo")
    now = utcnow()
    events = [
        AuditEvent(
            id=f"evt_{i}",
            timestamp=now,
            connection=slug,
            user=user,
            outcome=outcome,
            method="POST",
            path=f"/v1/mcp/{slug}",
            status=200,
        )
        for i, (slug, user, outcome) in enumerate(
            [("alpha", "alice", "ok"), ("alpha", "bob", "denied"), ("bravo", "alice", "ok")]
        )
    ]
    await env.gw.service.audit.append_audit_events(events)

    async def rows(query: str) -> list[list[str]]:
        response = await env.http.get("/ui/audit.json" + query)
        assert response.status_code == 200
        return [
            r["cells"]
            for r in response.json()["rows"]
            if r["id"].startswith("evt_") and r["id"][4:].isdigit()
        ]

    assert len(await rows("")) == 3
    assert {r[1] for r in await rows("?slug=alpha")} == {"alpha"}
    assert [r[3] for r in await rows("?outcome=denied")] == ["bob"]
    assert {r[1] for r in await rows("?user=alice")} == {"alpha", "bravo"}
    assert await rows("?since=2999-01-01T00:00") == []
    bad = await env.http.get("/ui/audit?since=tomorrow")
    assert bad.status_code == 200
    assert 'id="e-since"' in bad.text
    assert await rows("?slug=zzz-none") == []
    malformed = await env.http.get("/ui/audit?slug=%3Cx%3E")
    assert 'id="e-slug"' in malformed.text
    created = await env.http.get("/ui/audit.json?kind=management&action=create")
    slugs = sorted(r["cells"][1] for r in created.json()["rows"])
    assert slugs == ["(global)", "(global)", "alpha", "bravo"]  # two API keys, two connections


async def test_sign_in_and_sign_out_are_audited_on_the_global_chain(env: Env) -> None:
    """Refused and accepted sign-ins and the sign-out are events with connection null."""
    assert (await env.sign_in("ig_wrong")).status_code == 401
    assert (await env.sign_in(env.mcp_key)).status_code == 403
    assert (await env.sign_in()).status_code == 303
    await env.http.post("/ui/logout", data={"csrf": await env.csrf()})
    page = await env.gw.service.list_all_audit(kind="dashboard")
    seen = [(e.connection, e.action, e.outcome, e.api_key_id) for e in page.items]
    assert seen[0] == (None, "sign_out", "ok", env.admin_id)
    assert seen[1] == (None, "sign_in", "ok", env.admin_id)
    assert [s[2] for s in seen[2:]] == ["denied", "denied"]
    assert all(e.metadata == {"client": "127.0.0.1"} for e in page.items)
    assert env.admin_key not in str([e.to_json() for e in page.items])
    assert env.mcp_key not in str([e.to_json() for e in page.items])
    assert await env.gw.service.verify_audit() == {
        k: [] for k in (await env.gw.service.verify_audit())
    }
    await env.sign_in()
    shown = await env.http.get("/ui/audit.json?kind=dashboard")
    assert {r["cells"][1] for r in shown.json()["rows"]} == {"(global)"}


async def test_a_sign_in_that_cannot_be_audited_starts_no_session(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the audit sink refuses the sign-in event, there is no session (503)."""

    async def refuse(event: AuditEvent) -> None:
        raise StoreUnavailable("the audit sink is down", retry_after=1)

    monkeypatch.setattr(env.gw.service, "record_event", refuse)
    response = await env.sign_in()
    assert response.status_code == 503
    assert "igris_session" not in response.headers.get("set-cookie", "")
    assert len(env.gw.dashboard.sessions) == 0


async def test_client_configuration_uses_the_public_url() -> None:
    """gatewayUrl and the mcpServers JSON point at public_url when it is set."""
    gw, http, admin_key, _, _ = await make_env(
        base="https://gw.test", public_url="https://gw.example/base"
    )
    async with http:
        env = Env(gw, admin_key, "", "", http)
        await env.sign_in()
        await env.create()
        page = (await http.get("/ui/connections/github")).text
    await gw.aclose()
    assert "https://gw.example/base/v1/mcp/github" in page
    assert "mcpServers" in page
    assert CANARY not in page


async def test_delete_needs_the_confirm_field(signed_in: Env) -> None:
    """A delete POST without the confirm page's field keeps the connection; with it, deletes."""
    env = signed_in
    await env.create()
    token = await env.csrf()
    refused = await env.http.post("/ui/connections/github/delete", data={"csrf": token})
    assert refused.status_code == 422
    await env.gw.service.get_connection("github")
    done = await env.http.post(
        "/ui/connections/github/delete", data={"csrf": token, "confirm": "github"}
    )
    assert done.status_code == 303
    assert (await env.gw.service.list_connections()).items == []


async def test_static_files_have_their_content_types(env: Env) -> None:
    """CSS and JS are served with their types (nosniff); anything else is 404."""
    css = await env.http.get("/ui/static/dashboard.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    js = await env.http.get("/ui/static/dashboard.js")
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "innerHTML" not in js.text
    for path in (
        "/ui/static/app.py",
        "/ui/static/..%2Fapp.py",
        "/ui/static/../app.py",
        "/ui/static/",
    ):
        assert (await env.http.get(path)).status_code == 404


async def test_wrong_methods_and_big_forms_are_refused(signed_in: Env) -> None:
    """DELETE on a page is 405 with Allow; a form over the limit is refused; HEAD has no body."""
    env = signed_in
    response = await env.http.delete("/ui/connections")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]
    big = await env.http.post(
        "/ui/connections", data={"csrf": await env.csrf(), "name": "x" * 100_000}
    )
    assert big.status_code == 413
    head = await env.http.head("/ui/connections")
    assert head.status_code == 200
    assert head.content == b""


async def test_the_dashboard_is_off_unless_asked_for() -> None:
    """Without dashboard=True, /ui/ is not served (standalone 404; middleware passes it on)."""
    gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw), base_url=BASE) as http:
        assert (await http.get("/ui/")).status_code == 404
    await gw.aclose()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"host app"})

    wrapped = IgrisGateway(app, store=MemoryStore(), crypto=FixedKeyring())
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        assert (await http.get("/ui/")).text == "host app"
    await wrapped.aclose()


async def test_under_a_root_path_links_and_cookies_carry_it() -> None:
    """Mounted at /gw, redirects, links and the cookie path all start with /gw/ui/."""
    gw, http, _admin_key, _, _ = await make_env()
    await http.aclose()
    transport = httpx.ASGITransport(app=gw, root_path="/gw")
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        first = await http.get("/gw/ui/connections")
        assert first.headers["location"] == "/gw/ui/login"
        form = await http.get("/gw/ui/login")
        assert "Path=/gw/ui/" in form.headers["set-cookie"]
        assert 'action="/gw/ui/login"' in form.text
        assert 'href="/gw/ui/static/dashboard.css"' in form.text
    await gw.aclose()


def test_sessions_expire_when_idle_and_at_their_lifetime() -> None:
    """Idle past ``idle`` or older than ``lifetime``: the session is gone."""
    now = [0.0]
    store = SessionStore(idle=10, lifetime=100, clock=lambda: now[0])
    session = store.create("key_1")
    for _ in range(9):
        now[0] += 9
        assert store.get(session.id) is session
    now[0] += 11
    assert store.get(session.id) is None
    other = store.create("key_1")
    now[0] += 101
    assert store.get(other.id) is None
    assert store.get(None) is None
    assert store.get("") is None


def test_session_and_throttle_tables_are_bounded() -> None:
    """A flood of sign-ins or failing addresses cannot grow the tables past their bound."""
    store = SessionStore(max_sessions=3)
    made = [store.create(f"key_{i}") for i in range(10)]
    assert len(store) == 3
    assert store.get(made[-1].id) is not None
    throttle = SignInThrottle(2, max_addresses=5)
    for i in range(50):
        throttle.fail(f"10.0.0.{i}")
    assert len(throttle._failures) == 5


def test_the_throttle_releases_after_the_window() -> None:
    """Past the minute, the address may try again."""
    now = [0.0]
    throttle = SignInThrottle(2, clock=lambda: now[0])
    throttle.fail("a")
    throttle.fail("a")
    assert throttle.retry_after("a") == 60
    now[0] += 30
    assert throttle.retry_after("a") == 30
    now[0] += 31
    assert throttle.retry_after("a") == 0


def test_the_dashboard_refuses_a_zero_throttle() -> None:
    """sign_in_failures_per_minute below 1 is a ValueError."""
    from igris_mw._service import Service

    with pytest.raises(ValueError, match="sign_in_failures_per_minute"):
        Dashboard(Service(MemoryStore(), FixedKeyring()), sign_in_failures_per_minute=0)


def test_serve_turns_the_dashboard_on(tmp_path: Path) -> None:
    """`igris-mw serve` (a real process) serves /ui/; its first admin key signs in."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env["IGRIS_HOME"] = str(tmp_path / "data")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "igris_mw.cli", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        admin = re.findall(r"ig_[0-9A-Za-z]{36}", log.read_text())[0]
        with httpx.Client(base_url=url) as http:
            form = http.get("/ui/login")
            assert form.status_code == 200
            token = CSRF_RE.search(form.text)
            assert token is not None
            signed_in = http.post("/ui/login", data={"csrf": token.group(1), "key": admin})
            assert signed_in.status_code == 303
            page = http.get("/ui/connections")
            assert page.status_code == 200
            assert "New connection" in page.text
    finally:
        proc.terminate()
        proc.wait(10)


async def test_the_form_creates_every_auth_type(signed_in: Env) -> None:
    """header (with its name), basic and none (no credential) are created as the API would."""
    env = signed_in
    header = await env.create("hdr", authType="header", headerName="X-Api-Key")
    assert header.status_code == 303
    basic = await env.create("bsc", authType="basic", credential="user:" + CANARY)
    assert basic.status_code == 303
    none = await env.create("non", authType="none", credential="")
    assert none.status_code == 303
    conns = {c.slug: c for c in (await env.gw.service.list_connections()).items}
    assert conns["hdr"].header_name == "X-Api-Key"
    assert conns["bsc"].auth_type.value == "basic"
    assert conns["non"].ciphertext is None
    secret = await env.gw.service.open_credential(conns["hdr"])
    assert secret is not None
    assert secret.reveal() == CANARY.encode()
    page = await env.http.get("/ui/connections")
    assert CANARY not in page.text


async def test_management_changes_from_the_page_are_audited_with_the_admin_key(
    signed_in: Env,
) -> None:
    """Create, rotate, disable, enable and delete record the signed-in key's id as actor."""
    env = signed_in
    await env.create()
    for action, data in (
        ("rotate", {"credential": "new-" + CANARY}),
        ("disable", {}),
        ("enable", {}),
    ):
        response = await env.http.post(
            f"/ui/connections/github/{action}", data={"csrf": await env.csrf(), **data}
        )
        assert response.status_code == 303, action
    await env.http.post(
        "/ui/connections/github/delete", data={"csrf": await env.csrf(), "confirm": "github"}
    )
    trail = (await env.gw.service.list_audit("github")).items
    assert [e.action for e in trail] == ["delete", "enable", "disable", "rotate", "create"]
    assert {e.api_key_id for e in trail} == {env.admin_id}
    assert trail[1].credential_version == 2


def test_policy_inputs_become_the_api_json() -> None:
    """Per-minute, burst, globs and max concurrent map to rateLimit / tools / maxConcurrent."""
    form = {
        "rateLimitRpm": "60",
        "rateLimitBurst": "10",
        "toolsAllow": "search_*, get_issue",
        "toolsDeny": "delete_*\nadmin_*",
        "maxConcurrent": "4",
    }
    assert policy_body(form, rate_limit=True, tools=True, max_concurrent=True) == {
        "rateLimit": {"requestsPerMinute": 60, "burst": 10},
        "tools": {"allow": ["search_*", "get_issue"], "deny": ["delete_*", "admin_*"]},
        "maxConcurrent": 4,
    }
    assert policy_body(form, rate_limit=False, tools=False) == {}
    assert policy_body({}, rate_limit=True, tools=True, max_concurrent=True) == {}
    assert policy_body({}, rate_limit=True, tools=True, max_concurrent=True, clear=True) == {
        "rateLimit": None,
        "tools": None,
        "maxConcurrent": None,
    }
    # Not a number: passed on as text for the service to refuse, naming the field.
    assert policy_body({"rateLimitRpm": "lots"}, rate_limit=True, tools=False) == {
        "rateLimit": {"requestsPerMinute": "lots"},
    }
    record = {
        "rateLimit": {"requestsPerMinute": 60, "burst": 10},
        "tools": {"allow": ["a*"], "deny": []},
        "maxConcurrent": 4,
    }
    values = policy_values(record)
    assert values["rateLimitRpm"] == "60"
    assert values["toolsAllow"] == "a*"
    assert values["maxConcurrent"] == "4"
    assert policy_values({})["rateLimitRpm"] == ""
    assert input_for("rateLimit.burst") == "rateLimitBurst"
    assert input_for("rateLimit") == "rateLimitRpm"
    assert input_for("tools.deny") == "toolsDeny"
    assert input_for("slug") is None


async def test_policy_fields_show_when_the_service_takes_them(
    signed_in: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the features on, the forms carry the policy inputs and a 422 lands at its input."""
    env = signed_in
    on = Features(
        connection_rate_limit=True,
        connection_tools=True,
        key_rate_limit=True,
        key_tools=True,
        key_max_concurrent=True,
    )
    for module in (dashboard_connections, dashboard_keys, dashboard_http):
        monkeypatch.setattr(module, "FEATURES", on)
    page = await env.http.get("/ui/new/connection")
    for label in ("Requests per minute", "Burst", "Allowed tools", "Denied tools"):
        assert f">{label}</label>" in page.text
    keys = await env.http.get("/ui/new/api-key")
    assert ">Max concurrent requests</label>" in keys.text
    response = await env.create(rateLimitRpm="lots")
    assert response.status_code == 422
    assert 'id="e-rateLimitRpm"' in response.text
    if not policy.FEATURES.connection_rate_limit:  # the service names the field it lacks
        assert "not a known field" in response.text


async def test_policy_round_trips_where_the_service_supports_it(signed_in: Env) -> None:
    """Created with a rate limit and tool globs, the connection shows them; Save policy clears."""
    if not policy.FEATURES.connection_policy:
        pytest.skip("this service has no rateLimit / tools on connections yet")
    env = signed_in
    over = {}
    if policy.FEATURES.connection_rate_limit:
        over.update(rateLimitRpm="60", rateLimitBurst="5")
    if policy.FEATURES.connection_tools:
        over.update(toolsAllow="echo, search_*", toolsDeny="delete_*")
    assert (await env.create(**over)).status_code == 303
    record = (await env.gw.service.get_connection("github")).to_json()
    if policy.FEATURES.connection_rate_limit:
        assert record["rateLimit"]["requestsPerMinute"] == 60
    if policy.FEATURES.connection_tools:
        assert record["tools"]["deny"] == ["delete_*"]
    page = await env.http.get("/ui/connections/github")
    assert 'value="60"' in page.text or 'value="echo, search_*"' in page.text
    saved = await env.http.post("/ui/connections/github/policy", data={"csrf": await env.csrf()})
    assert saved.status_code == 303
    record = (await env.gw.service.get_connection("github")).to_json()
    assert record.get("rateLimit") is None
    assert record.get("tools") is None


def test_a_gateway_without_the_dashboard_loads_none_of_it() -> None:
    """dashboard=False (the middleware default) imports neither the dashboard nor Jinja2."""
    code = (
        "import sys\n"
        "from igris_mw import IgrisGateway\n"
        "from igris_mw.testing import FixedKeyring, MemoryStore\n"
        "IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring())\n"
        "print('igris_mw._dashboard' in sys.modules, 'jinja2' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


async def test_edit_changes_what_changed_and_shows_errors_at_their_field(signed_in: Env) -> None:
    """Edit sends only the changed fields (audited as one update) or names the bad field."""
    env = signed_in
    await env.create()
    form = (await env.http.get("/ui/connections/github/edit")).text
    assert 'value="GitHub"' in form
    assert CANARY not in form
    bad = await env.http.post(
        "/ui/connections/github/edit",
        data={
            "csrf": await env.csrf(),
            "name": "GitHub",
            "upstreamUrl": "not a url",
            "authType": "bearer",
            "headerName": "",
        },
    )
    assert bad.status_code == 422
    assert 'id="e-upstreamUrl"' in bad.text
    ok = await env.http.post(
        "/ui/connections/github/edit",
        data={
            "csrf": await env.csrf(),
            "name": "GitHub prod",
            "upstreamUrl": "https://up.test/mcp",
            "authType": "header",
            "headerName": "X-Token",
        },
    )
    assert ok.status_code == 303
    conn = await env.gw.service.get_connection("github")
    assert (conn.name, conn.auth_type.value, conn.header_name) == (
        "GitHub prod",
        "header",
        "X-Token",
    )
    secret = await env.gw.service.open_credential(conn)
    assert secret is not None
    assert secret.reveal() == CANARY.encode()  # re-sealed under the new binding
    update = (await env.gw.service.list_audit("github")).items[0]
    assert update.action == "update"
    assert update.metadata == {"fields": ["authType", "headerName", "name"]}


def _crlf(pem_bytes: bytes) -> str:
    return pem_bytes.decode().replace("\n", "\r\n")  # as a browser submits a textarea


async def test_tls_fields_through_the_forms_and_the_client_key_stays_write_only(
    signed_in: Env,
) -> None:
    """CA and client certificate are set, shown and edited; the client key is never echoed."""
    env = signed_in
    if not policy.FEATURES.tls:
        pytest.skip("this service has no TLS fields on connections")
    ca = trustme.CA()
    leaf = ca.issue_cert("client.example")
    key_pem = leaf.private_key_pem.bytes().decode()
    key_body = key_pem.splitlines()[1]
    cert = _crlf(leaf.cert_chain_pems[0].bytes())
    bad = await env.create(
        "A",
        caCertificate=_crlf(ca.cert_pem.bytes()),
        clientCertificate=cert,
        clientKey=key_pem.replace("\n", "\r\n"),
    )
    assert bad.status_code == 422
    assert key_body not in bad.text
    assert "BEGIN CERTIFICATE" in bad.text  # the public certificates are kept in the form
    created = await env.create(
        caCertificate=_crlf(ca.cert_pem.bytes()),
        clientCertificate=cert,
        clientKey=key_pem.replace("\n", "\r\n"),
    )
    assert created.status_code == 303, created.text
    record = (await env.gw.service.get_connection("github")).to_json()
    assert record["caCertificate"].startswith("-----BEGIN CERTIFICATE-----\n")
    assert record["clientCertificate"] is not None
    page = await env.http.get("/ui/connections/github")
    assert "private CA; client certificate" in page.text
    assert key_body not in page.text
    edit = await env.http.get("/ui/connections/github/edit")
    assert "BEGIN CERTIFICATE" in edit.text
    assert key_body not in edit.text
    cleared = await env.http.post(
        "/ui/connections/github/edit",
        data={
            "csrf": await env.csrf(),
            "name": "GitHub",
            "upstreamUrl": "https://up.test/mcp",
            "authType": "bearer",
            "headerName": "",
            "caCertificate": "",
            "clientCertificate": cert,
        },
    )
    assert cleared.status_code == 303
    assert (await env.gw.service.get_connection("github")).to_json()["caCertificate"] is None
    new_leaf = ca.issue_cert("client2.example")
    rotated = await env.http.post(
        "/ui/connections/github/rotate",
        data={
            "csrf": await env.csrf(),
            "credential": "",
            "clientCertificate": _crlf(new_leaf.cert_chain_pems[0].bytes()),
            "clientKey": _crlf(new_leaf.private_key_pem.bytes()),
        },
    )
    assert rotated.status_code == 303
    assert (await env.gw.service.get_connection("github")).credential_version == 2
    lonely = await env.http.post(
        "/ui/connections/github/rotate",
        data={"csrf": await env.csrf(), "credential": "", "clientKey": key_pem},
    )
    assert lonely.status_code == 422
    assert 'id="e-clientKey"' in lonely.text or 'id="e-clientCertificate"' in lonely.text
    assert key_body not in lonely.text


@settings(max_examples=40)  # each example builds a gateway and signs in: keep it bounded
@given(
    st.binary(max_size=300),
    st.sampled_from(
        [
            "/ui/connections",
            "/ui/api-keys",
            "/ui/connections/github/rotate",
            "/ui/connections/github/edit",
        ]
    ),
)
def test_any_form_body_gets_a_clear_answer_never_a_500(body: bytes, path: str) -> None:
    """Random bytes as a form (with a valid token in front) are refused or handled, never a 500."""

    async def run() -> tuple[int, str]:
        gw, http, admin_key, _, _ = await make_env()
        async with http:
            env = Env(gw, admin_key, "", "", http)
            await env.sign_in()
            await env.create()
            token = await env.csrf()
            response = await http.post(
                path,
                content=b"csrf=" + token.encode() + b"&" + body,
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
        await gw.aclose()
        return response.status_code, response.text

    status, text = asyncio.run(run())
    assert status in (200, 303, 400, 409, 413, 422), (status, text[:300])


async def test_an_api_key_policy_is_edited_through_the_service(signed_in: Env) -> None:
    """Edit a key: name, connections, rate limit, tools, max concurrent; errors at their field."""
    env = signed_in
    if not policy.FEATURES.key_policy:
        pytest.skip("this service cannot change an API key's policy")
    await env.create()
    record, _ = await env.gw.service.create_api_key({"name": "bot", "scopes": ["mcp"]})
    form = await env.http.get(f"/ui/api-keys/{record.id}/edit")
    assert form.status_code == 200
    assert 'value="bot"' in form.text
    bad = await env.http.post(
        f"/ui/api-keys/{record.id}/edit",
        data={"csrf": await env.csrf(), "name": "bot", "maxConcurrent": "-3"},
    )
    assert bad.status_code == 422
    assert 'id="e-maxConcurrent"' in bad.text
    saved = await env.http.post(
        f"/ui/api-keys/{record.id}/edit",
        data={
            "csrf": await env.csrf(),
            "name": "bot two",
            "connections": "github",
            "rateLimitRpm": "30",
            "toolsDeny": "delete_*",
            "maxConcurrent": "2",
        },
    )
    assert saved.status_code == 303
    now = {k.id: k for k in await env.gw.service.list_api_keys()}[record.id].to_json()
    assert now["name"] == "bot two"
    assert now["connections"] == ["github"]
    assert now["rateLimit"]["requestsPerMinute"] == 30
    assert now["tools"]["deny"] == ["delete_*"]
    assert now["maxConcurrent"] == 2
    listing = await env.http.get("/ui/api-keys")
    assert "30/min" in listing.text
    cleared = await env.http.post(
        f"/ui/api-keys/{record.id}/edit",
        data={"csrf": await env.csrf(), "name": "bot two", "connections": "github"},
    )
    assert cleared.status_code == 303
    now = {k.id: k for k in await env.gw.service.list_api_keys()}[record.id].to_json()
    assert (now["rateLimit"], now["tools"], now["maxConcurrent"]) == (None, None, None)
    assert (await env.http.get("/ui/api-keys/nope/edit")).status_code == 404


async def test_an_oauth2_connection_shows_its_status_and_authorize_gives_the_consent_link(
    signed_in: Env,
) -> None:
    """oauth2: status pending, Authorize answers a page linking the provider's consent URL."""
    env = signed_in
    await env.gw.service.create_connection(
        {
            "slug": "drive",
            "name": "Drive",
            "upstreamUrl": "https://mcp.drive.example/mcp",
            "authType": "oauth2",
            "credential": "client-secret-" + CANARY,
            "oauth": {
                "clientId": "igris-test",
                "scopes": ["files.read"],
                "authorizationUrl": "https://auth.drive.example/authorize",
                "tokenUrl": "https://auth.drive.example/token",
            },
        }
    )
    page = await env.http.get("/ui/connections/drive")
    assert "pending" in page.text
    assert ">Authorize</button>" in page.text
    consent = await env.http.post(
        "/ui/connections/drive/authorize", data={"csrf": await env.csrf()}
    )
    assert consent.status_code == 200
    link = re.search(r'href="(https://auth\.drive\.example/authorize\?[^"]+)"', consent.text)
    assert link is not None
    assert "client_id=igris-test" in link.group(1)
    assert CANARY not in consent.text
    plain = await env.create()
    assert plain.status_code == 303
    assert ">Authorize</button>" not in (await env.http.get("/ui/connections/github")).text
    refused = await env.http.post(
        "/ui/connections/github/authorize", data={"csrf": await env.csrf()}
    )
    assert refused.status_code == 404
