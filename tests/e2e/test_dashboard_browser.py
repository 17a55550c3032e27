"""The dashboard in a real browser: the OS's headless Chromium driven by Playwright.

The gateway runs as a real uvicorn server with ``dashboard=True`` in front of
the real MCP upstream; MCP traffic goes through the real SDK. The browser is
started once per session and each test gets a fresh context (no cookies).
Screenshots land in a temporary directory, or in ``docs/images/`` with
``IGRIS_UPDATE_SCREENSHOTS=1``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from axe_playwright_python.async_playwright import Axe
from e2e_harness import (
    Gateway,
    client_headers,
    make_gateway,
    new_credential,
    new_slug,
    raw_post,
    serve,
    streamable_session,
)
from mcp.shared.exceptions import MCPError
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from upstream import UpstreamServer

from igris_mw._dashboard import policy

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_USER = "<script>alert(1)</script>"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "dashboard-test", "version": "1"},
    },
}


async def gateway_status(dash: Gateway, slug: str, key: str | None = None) -> int:
    """The status of one MCP initialize through the gateway."""
    return (await raw_post(dash.url(slug), key or dash.mcp_key, INIT)).status_code


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the session (the OS's, never a downloaded one)."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        message = f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)"
        if os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest.fixture(scope="session")
async def dash(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """A real gateway server with the dashboard on, and an admin and an mcp key."""
    store_dir = tmp_path_factory.mktemp("dashboard")
    gw = make_gateway(store_dir, dashboard=True)
    async with serve(gw) as base_url:
        service = gw.service
        mcp_record, mcp_key = await service.create_api_key({"name": "agent", "scopes": ["mcp"]})
        _, admin_key = await service.create_api_key({"name": "ops admin", "scopes": ["admin"]})
        yield Gateway(gw, base_url, store_dir / "igris.db", mcp_key, mcp_record.id, admin_key)


@attrs.define
class Tab:
    """A fresh browser context and page, and what the page raised."""

    context: BrowserContext
    page: Page
    dialogs: list[str]
    console_errors: list[str]


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    """A page in a fresh context (no cookies) at desktop width; records dialogs."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    found = Tab(context, page, [], [])

    async def on_dialog(dialog: Any) -> None:
        found.dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)

    def on_console(message: Any) -> None:
        # A refused form's 4xx is expected; script errors and CSP violations are not.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            found.console_errors.append(message.text)

    page.on("console", on_console)
    yield found
    await context.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: docs/images with IGRIS_UPDATE_SCREENSHOTS=1, else a temp dir."""
    if os.environ.get("IGRIS_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES
    return tmp_path_factory.mktemp("screenshots")


async def sign_in(page: Page, dash: Gateway) -> None:
    await page.goto(dash.base_url + "/ui/")
    await page.get_by_label("Admin key").fill(dash.admin_key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Connections")).to_be_visible()


async def create_via_form(
    page: Page, dash: Gateway, upstream: UpstreamServer, credential: str, *, name: str = ""
) -> str:
    """Fill New connection and press Create; returns the slug."""
    upstream.accept(credential)
    slug = new_slug("ui")
    await page.goto(dash.base_url + "/ui/connections")
    await page.get_by_role("link", name="New connection").click()
    await page.get_by_label("Slug", exact=True).fill(slug)
    await page.get_by_label("Name", exact=True).fill(name or f"Upstream {slug}")
    await page.get_by_label("Upstream URL", exact=True).fill(upstream.base_url + "/mcp")
    await page.get_by_label("Auth type", exact=True).select_option("bearer")
    await page.get_by_label("Credential", exact=True).fill(credential)
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator("h1 .slug")).to_have_text(slug)
    return slug


async def test_sign_in_with_an_admin_key_shows_the_governance_pages(
    tab: Tab, dash: Gateway
) -> None:
    """A wrong key is refused next to the field; the admin key opens Connections."""
    page = tab.page
    await page.goto(dash.base_url + "/ui/")
    assert page.url.endswith("/ui/login")
    await page.get_by_label("Admin key").fill(dash.mcp_key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#e-key")).to_contain_text("no admin scope")
    assert await page.get_by_label("Admin key").input_value() == ""
    await sign_in(page, dash)
    nav = page.get_by_role("navigation", name="Governance")
    for link in ("Connections", "API keys", "Audit"):
        await expect(nav.get_by_role("link", name=link)).to_be_visible()
    assert dash.admin_key not in await page.content()
    cookies = await tab.context.cookies()
    session = next(c for c in cookies if c["name"] == "igris_session")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["value"] != dash.admin_key
    assert not tab.console_errors


async def test_a_connection_created_through_the_form_is_listed(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """New connection: a bad slug is shown next to Slug without the credential; fixed, it lists."""
    page = tab.page
    await sign_in(page, dash)
    credential = new_credential("form")
    await page.get_by_role("link", name="New connection").click()
    await page.get_by_label("Slug", exact=True).fill("A")
    await page.get_by_label("Name", exact=True).fill("GitHub")
    await page.get_by_label("Upstream URL", exact=True).fill(upstream.base_url + "/mcp")
    await page.get_by_label("Credential", exact=True).fill(credential)
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator("#e-slug")).to_contain_text("3-64 characters")
    assert await page.get_by_label("Credential", exact=True).input_value() == ""
    assert credential not in await page.content()
    assert await page.get_by_label("Credential", exact=True).get_attribute("autocomplete") == "off"

    slug = await create_via_form(page, dash, upstream, credential, name="GitHub MCP")
    assert credential not in page.url
    await page.get_by_role("link", name="Connections").click()
    row = page.locator("table.list tbody tr", has_text=slug)
    await expect(row).to_contain_text("GitHub MCP")
    await expect(row).to_contain_text("bearer")
    await expect(row).to_contain_text("enabled")
    assert credential not in await page.content()
    assert (await dash.gw.service.get_connection(slug)).name == "GitHub MCP"


async def test_an_mcp_call_shows_up_in_the_connection_audit_without_a_reload(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """A real MCP SDK tools/call through the gateway appears in the open page by polling."""
    page = tab.page
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("live"))
    await page.evaluate("window.__stillSamePage = true")
    headers = client_headers(dash.mcp_key, {"X-Igris-User": "alice@example.com"})
    async with streamable_session(dash.url(slug), headers) as session:
        result = await session.call_tool("echo", {"text": "hello"})
    assert not result.is_error
    table = page.locator("table.audit tbody")
    await expect(table).to_contain_text("tools/call", timeout=10_000)
    row = table.locator("tr", has_text="tools/call")
    await expect(row).to_contain_text("echo")
    await expect(row).to_contain_text("alice@example.com")
    assert await page.evaluate("window.__stillSamePage") is True
    assert not tab.console_errors


async def test_the_copied_client_configuration_reaches_the_connection(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """Copy gatewayUrl / mcpServers JSON with the buttons; an MCP client using them works."""
    page = tab.page
    origin = dash.base_url
    await tab.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("copy"))
    await page.get_by_role("button", name="Copy gateway URL").click()
    await expect(page.get_by_role("button", name="Copied")).to_be_visible()
    url = await page.evaluate("navigator.clipboard.readText()")
    assert url == dash.url(slug)
    await page.get_by_role("button", name="Copy mcpServers JSON").click()
    block = json.loads(await page.evaluate("navigator.clipboard.readText()"))
    server = block["mcpServers"][slug]
    assert server["url"] == url
    headers = {**server["headers"], "Authorization": f"Bearer {dash.mcp_key}"}
    async with streamable_session(server["url"], headers) as session:
        assert (await session.call_tool("echo", {"text": "copied"})).content[0].text == "copied"


async def test_rotate_disable_and_enable_from_the_page_are_honoured_by_the_next_request(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """Rotate: the next request carries the new credential; Disable: 403; Enable: 200 again."""
    page = tab.page
    await sign_in(page, dash)
    old, new = new_credential("old"), new_credential("new")
    slug = await create_via_form(page, dash, upstream, old)
    assert await gateway_status(dash, slug) == 200

    upstream.accept(new)
    await page.get_by_label("Credential", exact=True).fill(new)
    await page.get_by_role("button", name="Rotate").click()
    await expect(page.locator(".notice")).to_contain_text("credential version 2")
    upstream.guard.refuse(old)
    before = len(upstream.guard.seen_with(new))
    assert await gateway_status(dash, slug) == 200
    assert len(upstream.guard.seen_with(new)) == before + 1

    await page.get_by_role("button", name="Disable").click()
    await expect(page.locator(".badge.off")).to_have_text("disabled")
    refused = await raw_post(dash.url(slug), dash.mcp_key, INIT)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "connection_disabled"

    await page.get_by_role("button", name="Enable").click()
    await expect(page.locator(".badge.ok")).to_have_text("enabled")
    assert await gateway_status(dash, slug) == 200
    await expect(page.locator("table.audit tbody")).to_contain_text("management: rotate")


async def test_a_policy_saved_in_the_page_is_enforced_and_its_refusals_show_live(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """Deny a tool and set a rate limit from the page: the gateway refuses both, audited live."""
    page = tab.page
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("policy"))
    await page.get_by_label("Denied tools", exact=True).fill("echo")
    await page.get_by_role("button", name="Save policy").click()
    await expect(page.locator(".notice")).to_contain_text("policy")
    async with streamable_session(dash.url(slug), client_headers(dash.mcp_key)) as session:
        with pytest.raises(MCPError, match="tool echo is not allowed"):
            await session.call_tool("echo", {"text": "no"})
    await expect(page.locator("table.audit tbody")).to_contain_text("tool_denied")

    await page.get_by_label("Requests per minute", exact=True).fill("1")
    await page.get_by_label("Burst", exact=True).fill("1")
    await page.get_by_label("Denied tools", exact=True).fill("")
    await page.get_by_role("button", name="Save policy").click()
    await expect(page.locator(".notice")).to_contain_text("policy")
    statuses = [await gateway_status(dash, slug) for _ in range(3)]
    assert statuses[0] == 200
    assert 429 in statuses
    await expect(page.locator("table.audit tbody")).to_contain_text("rate_limited")


async def test_delete_asks_to_confirm_then_the_gateway_forgets_the_connection(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """Delete leads to a confirm page (Cancel keeps it); its Delete removes it: then 404."""
    page = tab.page
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("del"))
    await page.get_by_role("button", name="Delete").click()
    await expect(page.get_by_role("heading", name=f"Delete connection {slug}?")).to_be_visible()
    await page.get_by_role("link", name="Cancel").click()
    await expect(page.locator("h1 .slug")).to_have_text(slug)
    await dash.gw.service.get_connection(slug)
    await page.get_by_role("button", name="Delete").click()
    await page.get_by_role("button", name="Delete").click()
    await expect(page.locator(".notice")).to_contain_text(f"{slug} deleted")
    assert await gateway_status(dash, slug) == 404


async def test_a_key_created_in_the_page_works_for_an_mcp_client_until_revoked_there(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """New API key is shown once, serves a real MCP session, and Revoke ends it (401)."""
    page = tab.page
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("key"))
    name = f"agent {slug}"
    await page.get_by_role("link", name="API keys").click()
    await page.get_by_role("link", name="New API key").click()
    await page.get_by_label("Name", exact=True).fill(name)
    await page.get_by_label("Scope", exact=True).select_option("mcp")
    await page.get_by_label(slug, exact=True).check()
    await page.get_by_role("button", name="Create").click()
    key = (await page.locator("#new-key").inner_text()).strip()
    assert key.startswith("ig_")
    await page.reload()
    assert key not in await page.content()  # shown once only

    async with streamable_session(dash.url(slug), client_headers(key)) as session:
        assert (await session.call_tool("echo", {"text": "ok"})).content[0].text == "ok"

    await page.goto(dash.base_url + "/ui/api-keys")
    row = page.locator("table.list tbody tr", has_text=name)
    await expect(row).to_contain_text(slug)
    await row.get_by_role("button", name="Revoke").click()
    await expect(row).to_contain_text("revoked")
    refused = await raw_post(dash.url(slug), key, INIT)
    assert refused.status_code == 401


async def test_hostile_names_and_users_render_as_text_and_open_no_dialog(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """A connection named <img onerror> and an X-Igris-User <script> show as text everywhere."""
    page = tab.page
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("xss"), name=HOSTILE_NAME)
    headers = client_headers(dash.mcp_key, {"X-Igris-User": HOSTILE_USER})
    async with streamable_session(dash.url(slug), headers) as session:
        await session.call_tool("echo", {"text": "<b>bold</b>"})
    await expect(page.locator("table.audit tbody")).to_contain_text(HOSTILE_USER)
    await expect(page.locator("h1")).to_contain_text(HOSTILE_NAME)
    for path in ("/ui/connections", f"/ui/connections/{slug}", f"/ui/audit?slug={slug}"):
        await page.goto(dash.base_url + path)
        await expect(page.locator("main")).to_contain_text(
            HOSTILE_USER if "audit" in path else HOSTILE_NAME
        )
        assert await page.locator("main img").count() == 0
        assert await page.locator("main script").count() == 0
    await page.wait_for_timeout(500)
    assert tab.dialogs == []


async def test_a_form_posted_without_its_csrf_token_is_refused(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """Disable with the CSRF field removed: 403, and the connection stays enabled."""
    page = tab.page
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("csrf"))
    await page.evaluate(
        "document.querySelectorAll('input[name=csrf]').forEach(function (e) { e.remove(); })"
    )
    async with page.expect_navigation() as nav:
        await page.get_by_role("button", name="Disable").click()
    response = await nav.value
    assert response is not None
    assert response.status == 403
    await expect(page.locator("main")).to_contain_text("CSRF")
    assert (await dash.gw.service.get_connection(slug)).enabled is True


async def test_after_sign_out_the_pages_show_nothing_of_the_data(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """Sign out ends the session: back, reload and direct URLs land on the empty sign-in form."""
    page = tab.page
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("out"))
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Admin key")).to_be_visible()
    assert slug not in await page.content()
    await page.go_back()
    assert slug not in await page.content()
    for path in (f"/ui/connections/{slug}", "/ui/connections", "/ui/audit", "/ui/api-keys"):
        await page.goto(dash.base_url + path)
        await expect(page.get_by_label("Admin key")).to_be_visible()
        assert slug not in await page.content()
        assert "agent" not in await page.content()
    response = await page.request.get(dash.base_url + f"/ui/connections/{slug}/audit.json")
    assert response.status == 401


async def focus_by_tab(page: Page, predicate: str, limit: int = 40) -> None:
    """Press Tab until ``predicate`` (a JS expression on ``el``) holds for the focused element."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate(
            f"(function (el) {{ return !!({predicate}); }})(document.activeElement)"
        ):
            return
    raise AssertionError(f"Tab never reached {predicate}")


async def test_keyboard_only_sign_in_and_create(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """Sign in, open New connection and create one with Tab, typing and Enter only."""
    page = tab.page
    credential = new_credential("kbd")
    upstream.accept(credential)
    slug = new_slug("kbd")
    await page.goto(dash.base_url + "/ui/login")
    await focus_by_tab(page, "el.id === 'f-key'")
    await page.keyboard.type(dash.admin_key)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Connections")).to_be_visible()
    await focus_by_tab(page, "el.textContent.trim() === 'New connection'")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="New connection")).to_be_visible()
    await focus_by_tab(page, "el.id === 'f-slug'")
    for text in (slug, "Keyboard made", upstream.base_url + "/mcp"):
        await page.keyboard.type(text)
        await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "f-authType"
    await page.keyboard.press("Tab")  # bearer stays selected
    await page.keyboard.press("Tab")  # Header name stays empty
    assert await page.evaluate("document.activeElement.id") == "f-credential"
    await page.keyboard.type(credential)
    await page.keyboard.press("Enter")
    await expect(page.locator("h1 .slug")).to_have_text(slug)
    assert (await dash.gw.service.get_connection(slug)).name == "Keyboard made"


async def test_pages_fit_a_phone_width(tab: Tab, dash: Gateway, upstream: UpstreamServer) -> None:
    """At 390 px no page scrolls sideways as a whole (wide tables scroll in their own box)."""
    page = tab.page
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("phone"))
    await page.set_viewport_size({"width": 390, "height": 844})
    for path in (
        "/ui/connections",
        f"/ui/connections/{slug}",
        "/ui/api-keys",
        "/ui/audit",
        "/ui/new/connection",
        "/ui/new/api-key",
    ):
        await page.goto(dash.base_url + path)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)


async def test_every_page_passes_axe_accessibility_checks(
    tab: Tab, dash: Gateway, upstream: UpstreamServer
) -> None:
    """axe-core (WCAG 2 A/AA rules) finds no violation on any page, errors shown included."""
    page = tab.page
    axe = Axe()
    await page.goto(dash.base_url + "/ui/login")
    await page.get_by_label("Admin key").fill("ig_wrong")
    await page.get_by_role("button", name="Sign in").click()
    found = {"/ui/login (refused)": (await axe.run(page)).response["violations"]}
    await sign_in(page, dash)
    slug = await create_via_form(page, dash, upstream, new_credential("axe"))
    await page.get_by_label("Credential", exact=True).fill("")
    await page.get_by_role("button", name="Rotate").click()  # an error next to Credential
    found["connection page (error)"] = (await axe.run(page)).response["violations"]
    for path in (
        "/ui/connections",
        "/ui/new/connection",
        f"/ui/connections/{slug}/delete",
        f"/ui/connections/{slug}/edit",
        "/ui/api-keys",
        "/ui/new/api-key",
        "/ui/audit",
        "/ui/audit?since=never",
    ):
        await page.goto(dash.base_url + path)
        found[path] = (await axe.run(page)).response["violations"]
    problems = {
        where: [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in vs]
        for where, vs in found.items()
        if vs
    }
    assert problems == {}


async def test_screenshots_of_the_main_pages(
    browser: Browser,
    upstream: UpstreamServer,
    shots: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A fresh gateway with a few connections, keys and calls; each main page is pictured."""
    store_dir = tmp_path_factory.mktemp("tour")
    gw = make_gateway(store_dir, dashboard=True)
    async with serve(gw) as base_url:
        service = gw.service
        _, admin_key = await service.create_api_key({"name": "platform admin", "scopes": ["admin"]})
        credential, rotated = new_credential("gh"), new_credential("gh2")
        upstream.accept(credential, rotated)
        github: dict[str, Any] = {
            "slug": "github",
            "name": "GitHub MCP",
            "upstreamUrl": upstream.base_url + "/mcp",
            "credential": credential,
        }
        if policy.FEATURES.connection_policy:
            github.update(
                rateLimit={"requestsPerMinute": 120, "burst": 20},
                tools={"allow": [], "deny": ["whoami", "delete_*"]},
            )
        await service.create_connection(github)
        await service.create_connection(
            {
                "slug": "slack",
                "name": "Slack MCP",
                "upstreamUrl": "https://mcp.slack.example/mcp",
                "authType": "header",
                "headerName": "X-Slack-Token",
                "credential": "xoxb-demo",
            }
        )
        await service.create_connection(
            {
                "slug": "internal-docs",
                "name": "Docs search (internal)",
                "upstreamUrl": "https://docs.internal.example/mcp",
                "authType": "none",
                "enabled": False,
            }
        )
        agent: dict[str, Any] = {"name": "ci agent", "scopes": ["mcp"], "connections": ["github"]}
        if policy.FEATURES.key_rate_limit:
            agent["rateLimit"] = {"requestsPerMinute": 60}
        _, agent_key = await service.create_api_key(agent)
        bot, _ = await service.create_api_key({"name": "support bot", "scopes": ["mcp"]})
        await service.revoke_api_key(bot.id)
        gateway_url = f"{base_url}/v1/mcp/github"
        for user, role in (("alice@company.com", "developer"), ("bob@company.com", "sre")):
            headers = client_headers(
                agent_key, {"X-Igris-User": user, "X-Igris-Metadata": f'{{"role": "{role}"}}'}
            )
            async with streamable_session(gateway_url, headers) as session:
                await session.call_tool("echo", {"text": "hi"})
                if policy.FEATURES.connection_tools and role == "sre":
                    with pytest.raises(MCPError):
                        await session.call_tool("whoami", {})
        await service.rotate_credential("github", rotated)
        await raw_post(gateway_url, "ig_" + "0" * 40, INIT)  # refused: audited as denied

        context = await browser.new_context(viewport={"width": 1280, "height": 860})
        page = await context.new_page()
        page.set_default_timeout(10_000)
        await page.goto(base_url + "/ui/login")
        await page.screenshot(path=shots / "sign-in.png")
        await page.get_by_label("Admin key").fill(admin_key)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Connections")).to_be_visible()
        await page.screenshot(path=shots / "connections.png")

        await page.get_by_role("link", name="github", exact=True).click()
        await expect(page.locator("table.audit tbody")).to_contain_text("tools/call")
        await page.wait_for_timeout(2500)  # the live table's highlight fades
        await page.screenshot(path=shots / "connection.png", full_page=True)

        await page.get_by_role("link", name="Connections").click()
        await page.get_by_role("link", name="New connection").click()
        await page.get_by_label("Slug", exact=True).fill("Jira Cloud")
        await page.get_by_label("Name", exact=True).fill("Jira Cloud")
        await page.get_by_label("Upstream URL", exact=True).fill(
            "https://mcp.atlassian.example/v1/sse"
        )
        await page.get_by_label("Credential", exact=True).fill("secret")
        await page.get_by_role("button", name="Create").click()
        await expect(page.locator("#e-slug")).to_be_visible()
        await page.screenshot(path=shots / "new-connection.png", full_page=True)

        await page.get_by_role("link", name="API keys").click()
        await page.screenshot(path=shots / "api-keys.png")
        await page.get_by_role("link", name="New API key").click()
        await page.get_by_label("Name", exact=True).fill("notebook agent")
        await page.get_by_label("github", exact=True).check()
        await page.get_by_role("button", name="Create").click()
        # The picture is committed: it shows dots, never the key.
        await page.locator("#new-key").evaluate(
            "e => { e.textContent = 'ig_' + '\u2022'.repeat(36); }"
        )
        await page.screenshot(path=shots / "api-key-created.png")

        await page.get_by_role("link", name="Audit").click()
        await expect(page.locator("table.audit tbody")).to_contain_text("denied")
        await page.wait_for_timeout(2500)
        await page.screenshot(path=shots / "audit.png", full_page=True)

        await page.set_viewport_size({"width": 390, "height": 844})
        await page.goto(base_url + "/ui/connections/github")
        await page.wait_for_timeout(2500)
        await page.screenshot(path=shots / "connection-phone.png")
        await context.close()
    for name in (
        "sign-in",
        "connections",
        "connection",
        "new-connection",
        "api-keys",
        "api-key-created",
        "audit",
        "connection-phone",
    ):
        assert (shots / f"{name}.png").stat().st_size > 5000
