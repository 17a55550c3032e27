"""Contract, second part: the dashboard at /ui/ (sign-in, security headers, pages, escaping)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from contract_harness import Served, serve


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("contract-dash") / "home"
    with serve(home) as served:
        yield served


class Forms(HTMLParser):
    """Every <form> with its inputs, and every <label> text and button text."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.labels: list[str] = []
        self.buttons: list[str] = []
        self.links: list[tuple[str, str]] = []  # (text, href)
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(
                {"action": a.get("action", ""), "method": a.get("method", "get"), "inputs": []}
            )
        elif tag in ("input", "textarea", "select") and self.forms:
            self.forms[-1]["inputs"].append(a)
        if tag in ("label", "button"):
            self._in = tag
            (self.labels if tag == "label" else self.buttons).append("")
        if tag == "a":
            self._in = "a"
            self.links.append(("", a.get("href", "")))
        if tag == "input" and a.get("type") == "submit":
            self.buttons.append(a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "label":
            self.labels[-1] += data.strip()
        elif self._in == "button":
            self.buttons[-1] += data.strip()
        elif self._in == "a":
            text, href = self.links[-1]
            self.links[-1] = ((text + " " + data.strip()).strip(), href)


def _forms(html: str) -> Forms:
    parser = Forms()
    parser.feed(html)
    return parser


def _sign_in(gw: Served, key: str) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=gw.url, follow_redirects=True, timeout=15)
    try:
        page = client.get("/ui/")
        assert page.status_code == 200, page.text
        form = next(
            f
            for f in _forms(page.text).forms
            if any(i.get("type") in ("password", "text") for i in f["inputs"])
        )
        data = {}
        for i in form["inputs"]:
            if not i.get("name"):
                continue
            data[i["name"]] = key if i.get("type") in ("password", "text") else i.get("value", "")
        resp = client.post(
            urljoin(str(page.url), form["action"]), data=data, follow_redirects=False
        )
    except BaseException:
        client.close()  # a failing sign-in must not leave its socket to a later test's GC
        raise
    return client, resp


def test_ui_is_served_with_security_headers(gw: Served) -> None:
    """/ui/ answers HTML with a CSP without inline scripts and X-Frame-Options DENY."""
    r = httpx.get(gw.url + "/ui/", follow_redirects=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["x-frame-options"] == "DENY"
    csp = r.headers["content-security-policy"]
    script_src = next(
        (d for d in csp.split(";") if d.strip().startswith("script-src")),
        next(d for d in csp.split(";") if d.strip().startswith("default-src")),
    )
    assert "'unsafe-inline'" not in script_src
    assert "<script>" not in r.text.replace(" ", "")  # no inline script body


def test_sign_in_sets_a_strict_http_only_cookie(gw: Served) -> None:
    """Signing in with an admin key sets an HttpOnly SameSite=Strict session cookie."""
    client, resp = _sign_in(gw, gw.admin)
    with closing(client):
        assert resp.status_code in (200, 302, 303), resp.text
        cookie = resp.headers.get("set-cookie", "")
        assert "httponly" in cookie.lower()
        assert "samesite=strict" in cookie.lower()
        assert gw.admin not in cookie
        home = client.get("/ui/")
        for word in ("Governance", "Connections", "API keys", "Audit"):
            assert word in home.text


def test_mcp_key_or_bad_key_cannot_sign_in(gw: Served) -> None:
    """A key without the admin scope, or a wrong key, gets no session."""
    key, _ = gw.mcp_key()
    c = gw.create_connection(None)
    for bad in (key, "ig_" + "x" * 36):
        client, resp = _sign_in(gw, bad)
        with closing(client):
            assert resp.status_code not in (302, 303) or "login" in resp.headers["location"]
            assert c["slug"] not in client.get("/ui/connections").text


def test_sign_in_without_the_csrf_token_is_refused(gw: Served) -> None:
    """The sign-in form POSTed without its hidden CSRF field gives no session."""
    c = gw.create_connection(None)
    with httpx.Client(base_url=gw.url, follow_redirects=True, timeout=15) as client:
        page = client.get("/ui/")
        form = next(
            f
            for f in _forms(page.text).forms
            if any(i.get("type") in ("password", "text") for i in f["inputs"])
        )
        hidden = [i for i in form["inputs"] if i.get("type") == "hidden"]
        assert hidden, "the sign-in form carries no CSRF token"
        data = {
            i["name"]: gw.admin
            for i in form["inputs"]
            if i.get("name") and i.get("type") in ("password", "text")
        }
        resp = client.post(
            urljoin(str(page.url), form["action"]), data=data, follow_redirects=False
        )
        assert resp.status_code in (400, 403), resp.status_code
        assert c["slug"] not in client.get("/ui/connections").text


def test_new_connection_form_and_escaping(gw: Served) -> None:
    """New connection has the contract's labels and Create; client strings show as text."""
    gw.create_connection(None, name="<script>alert('x')</script><b>bold</b>")
    client, _ = _sign_in(gw, gw.admin)
    with closing(client):
        listing = client.get("/ui/connections")
        if listing.status_code == 404:
            listing = client.get("/ui/")
        assert "<script>alert('x')</script>" not in listing.text
        assert "<b>bold</b>" not in listing.text
        assert "&lt;script&gt;" in listing.text or "&lt;b&gt;" in listing.text
        new = [href for text, href in _forms(listing.text).links if text == "New connection"]
        assert new, "no New connection link"
        page = _forms(client.get(urljoin(str(listing.url), new[0])).text)
        for label in ("Slug", "Name", "Upstream URL", "Auth type", "Header name", "Credential"):
            assert any(label == lbl or lbl.startswith(label) for lbl in page.labels), (
                label,
                page.labels,
            )
        assert "Create" in page.buttons


def test_ui_does_not_leak_without_a_session(gw: Served) -> None:
    """Without a session, /ui/ pages never show connections or keys (here or once it lands)."""
    c = gw.create_connection(None, name="secret-name-71")
    r = httpx.get(gw.url + "/ui/connections", follow_redirects=True)
    assert "secret-name-71" not in r.text
    assert c["slug"] not in r.text
