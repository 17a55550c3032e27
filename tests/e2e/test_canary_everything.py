"""End to end, out of process: no secret leaves a real ``igris-mw serve``.

``test_canary.py`` drives an in-process gateway; this one runs the command a
deployment runs (``igris-mw serve --log-format json --log-level debug
--access-log --metrics-port``), with every upstream call going through a
forward proxy whose password is a canary, and connections of every
``authType`` (bearer, header, basic, a client certificate,
``oauth2_client_credentials`` with a canary client secret and access token,
a ``per_user`` credential) holding canaries.
It drives the official MCP client, a denied tool, a rate-limited request,
rotation, disabling, an upstream 401 that echoes the credential back and a
dead upstream, then searches every place a secret could land: each HTTP
response (status, headers, body), serve's stdout and stderr, the metrics
scrape, the audit trail (API and ``igris-mw audit``) and every byte of every
file in the data directory, for each secret in raw, base64 and URL-encoded
form.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from e2e_harness import client_headers, legacy_session, streamable_session
from mcp.shared.exceptions import MCPError

sys.path.insert(0, str(Path(__file__).parents[1] / "tls"))
from tls_harness import ForwardProxy, TlsFront, TlsUpstreamServer, running

KEY_RE = re.compile(r"ig_[0-9A-Za-z]{36}")


def _canary(tag: str) -> str:
    return f"canary-{tag}-{secrets.token_hex(12)}"


def _forms(secret: str) -> set[str]:
    """The forms a secret could take on its way out: raw, base64, URL-encoded."""
    raw = secret.encode()
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    # base64 of the secret alone and as the tail of "user:secret" (Basic auth).
    for data in (raw, b"igris:" + raw, b"user:" + raw, b"canary-client:" + raw):
        encoded = base64.b64encode(data).decode()
        forms |= {encoded, encoded.rstrip("="), base64.urlsafe_b64encode(data).decode()}
    return forms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EchoingUpstream:
    """A TLS upstream that echoes the request's credential back in its headers
    and (but for ``/ok``) its body, as 401, 400 (``/bad...``) or 200 (``/ok...``):
    the worst upstream there is."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.context)
        self.hits = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            echoed = head.replace(b"\r\n", b" | ")
            body = b'{"error": "refused", "youSent": "' + echoed.replace(b'"', b"'") + b'"}'
            auth = next(
                (
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"authorization:")
                ),
                b"none",
            )
            path = head.split(b" ", 2)[1]
            status = b"401 Unauthorized"
            if path.startswith(b"/ok"):  # a success that echoes it in its headers only
                status, body = b"200 OK", b'{"jsonrpc": "2.0", "id": 1, "result": {}}'
            elif path.startswith(b"/bad"):
                status = b"400 Bad Request"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                b'www-authenticate: Bearer error="' + auth + b'"\r\n'
                b"x-echo: " + auth + b"\r\n"
                b"location: https://elsewhere.example/?t=" + auth.partition(b" ")[2] + b"\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + body
            )
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> EchoingUpstream:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


class TokenEndpoint:
    """A plain-HTTP OAuth token endpoint that hands out one canary access token."""

    def __init__(self, access_token: str) -> None:
        self.access_token = access_token
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            self.requests.append(head + await reader.readexactly(length))
            body = json.dumps(
                {"access_token": self.access_token, "token_type": "Bearer", "expires_in": 3600}
            ).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: no-store\r\n"
                b"content-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        writer.close()

    async def __aenter__(self) -> TokenEndpoint:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


@contextlib.contextmanager
def _serve(home: Path, env_extra: dict[str, str], *args: str) -> Iterator[tuple[str, Path, Path]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IGRIS_", "OTEL_"))}
    env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
    env["IGRIS_HOME"] = str(home)
    env["IGRIS_ALLOW_UPSTREAM_NETWORKS"] = "127.0.0.0/8"
    env.update(env_extra)
    out_path = home.parent / "serve.out"
    err_path = home.parent / "serve.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "igris_mw.cli", "serve", "--port", str(port), *args],
            env=env,
            cwd=home.parent,
            stdout=out,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, out_path.read_text() + err_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text() + err_path.read_text()
            time.sleep(0.1)
        yield url, out_path, err_path
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="module")
def canary_ca() -> trustme.CA:
    return trustme.CA(organization_name="igris-mw canary CA")


@pytest.fixture(scope="module")
def canary_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(
        tmp_path_factory.mktemp("canary-proxy"), username="igris", password=_canary("proxy")
    )
    proxy.start()
    yield proxy
    proxy.stop()


@contextlib.asynccontextmanager
async def _http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as http:
        yield http


def _text(response: httpx.Response) -> str:
    head = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
    return f"{response.status_code} {response.url}\n{head}\n\n{response.text}"


async def test_no_secret_leaves_a_served_gateway(
    tmp_path: Path, canary_ca: trustme.CA, canary_proxy: ForwardProxy
) -> None:
    """Canaries of every kind appear in no response, output line, metric, audit
    record (API or CLI) or file of a real ``igris-mw serve``."""
    leaf = canary_ca.issue_cert("localhost", "127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    canary_ca.cert_pem.write_to_path(str(ca_file))
    client_leaf = canary_ca.issue_cert(common_name="igris-canary-client")
    client_key_pem = client_leaf.private_key_pem.bytes().decode()
    key_lines = [ln for ln in client_key_pem.splitlines() if ln and "-----" not in ln]

    bearer, rotated, header_cred, basic_pw, mtls_cred, echoed, dead_cred = (
        _canary(t) for t in ("bearer", "rotated", "header", "basic", "mtls", "echoed", "dead")
    )
    client_secret, access_token = _canary("client-secret"), _canary("access-token")
    alice_cred = _canary("per-user")
    canaries = [bearer, rotated, header_cred, basic_pw, mtls_cred, echoed, dead_cred]
    canaries += [client_secret, access_token, alice_cred]
    canaries.append(canary_proxy.password)

    home = tmp_path / "data"
    metrics_port = _free_port()
    responses: list[str] = []
    # Responses that must carry one secret by design (the create of an API key).
    key_issuers: list[str] = []

    with (
        running(TlsUpstreamServer(leaf)) as upstream,
        running(TlsFront(leaf, canary_ca)) as mtls,
    ):
        upstream.accept(bearer, rotated, access_token, alice_cred)
        mtls.accept(mtls_cred)
        async with EchoingUpstream(leaf) as echo, TokenEndpoint(access_token) as tokens:
            with _serve(
                home,
                {"IGRIS_UPSTREAM_PROXY": canary_proxy.url_with()},
                "--log-format",
                "json",
                "--log-level",
                "debug",
                "--access-log",
                "--metrics-port",
                str(metrics_port),
                "--upstream-ca-file",
                str(ca_file),
            ) as (url, out_path, err_path):
                admin = KEY_RE.findall(out_path.read_text() + err_path.read_text())[0]
                admin_h = {"Authorization": f"Bearer {admin}"}
                async with _http() as http:

                    async def call(
                        method: str, path: str, body: Any = None, status: int = 200
                    ) -> httpx.Response:
                        r = await http.request(
                            method, url + "/api/v1" + path, json=body, headers=admin_h
                        )
                        responses.append(_text(r))
                        assert r.status_code == status, r.text
                        return r

                    created = await call(
                        "POST", "/api-keys", {"name": "canary mcp", "scopes": ["mcp"]}, 201
                    )
                    key_issuers.append(responses.pop())
                    mcp_key = created.json()["key"]

                    def conn(slug: str, upstream_url: str, **extra: Any) -> dict[str, Any]:
                        return {"slug": slug, "name": slug, "upstreamUrl": upstream_url, **extra}

                    await call(
                        "POST",
                        "/virtual-keys",
                        conn(
                            "c-bearer",
                            upstream.url("/mcp"),
                            credential=bearer,
                            tools={"deny": ["whoami"]},
                        ),
                        201,
                    )
                    await call(
                        "POST",
                        "/virtual-keys",
                        conn(
                            "c-limited",
                            upstream.url("/mcp"),
                            credential=bearer,
                            rateLimit={"requestsPerMinute": 1, "burst": 1},
                        ),
                        201,
                    )
                    await call(
                        "POST",
                        "/virtual-keys",
                        conn(
                            "c-header",
                            upstream.url("/mcp"),
                            authType="header",
                            headerName="X-Api-Key",
                            credential=header_cred,
                        ),
                        201,
                    )
                    await call(
                        "POST",
                        "/virtual-keys",
                        conn(
                            "c-basic",
                            upstream.url("/mcp"),
                            authType="basic",
                            credential=f"user:{basic_pw}",
                        ),
                        201,
                    )
                    await call(
                        "POST",
                        "/virtual-keys",
                        conn(
                            "c-mtls",
                            mtls.url("/mcp"),
                            credential=mtls_cred,
                            clientCertificate="".join(
                                b.bytes().decode() for b in client_leaf.cert_chain_pems
                            ),
                            clientKey=client_key_pem,
                        ),
                        201,
                    )
                    await call(
                        "POST",
                        "/virtual-keys",
                        conn("c-echo", f"https://127.0.0.1:{echo.port}/mcp", credential=echoed),
                        201,
                    )
                    await call(
                        "POST",
                        "/virtual-keys",
                        conn(
                            "c-oauth",
                            upstream.url("/mcp"),
                            authType="oauth2_client_credentials",
                            credential=client_secret,
                            oauth={
                                "tokenUrl": f"http://127.0.0.1:{tokens.port}/token",
                                "clientId": "canary-client",
                                "scopes": ["mcp"],
                            },
                        ),
                        201,
                    )
                    dead_port = _free_port()
                    await call(
                        "POST",
                        "/virtual-keys",
                        conn("c-dead", f"https://127.0.0.1:{dead_port}/mcp", credential=dead_cred),
                        201,
                    )
                    await call("GET", "/virtual-keys?limit=200")
                    await call("GET", "/virtual-keys/c-mtls")
                    await call("PATCH", "/virtual-keys/c-header", {"name": "renamed"})

                    sdk_heads: list[str] = []

                    async def keep(response: Any) -> None:
                        sdk_heads.append(
                            "\n".join(f"{k}: {v}" for k, v in response.headers.items())
                        )

                    gw = url + "/v1/mcp/"
                    async with streamable_session(
                        gw + "c-bearer", client_headers(mcp_key), on_response=keep
                    ) as session:
                        listed = await session.list_tools()
                        responses.append(listed.model_dump_json())
                        assert "whoami" not in {t.name for t in listed.tools}
                        echoed_back = await session.call_tool("echo", {"text": "hi"})
                        responses.append(echoed_back.model_dump_json())
                        with pytest.raises(MCPError, match="not allowed") as denied:
                            await session.call_tool("whoami", {})
                        responses.append(repr(denied.value) + str(denied.value.error))
                    async with streamable_session(
                        gw + "c-mtls", client_headers(mcp_key), on_response=keep
                    ) as session:
                        responses.append((await session.call_tool("whoami", {})).model_dump_json())
                    assert mtls.client_names, "the mTLS upstream saw no client certificate"
                    async with streamable_session(
                        gw + "c-oauth", client_headers(mcp_key), on_response=keep
                    ) as session:
                        responses.append((await session.call_tool("whoami", {})).model_dump_json())
                    assert tokens.requests, "the token endpoint was never asked"
                    assert upstream.guard.seen_with(access_token)
                    await call("GET", "/virtual-keys/c-oauth")

                    await call(
                        "POST",
                        "/virtual-keys",
                        conn("c-peruser", upstream.url("/mcp"), credentialScope="per_user"),
                        201,
                    )
                    await call(
                        "PUT",
                        "/virtual-keys/c-peruser/users/alice/credential",
                        {"credential": alice_cred},
                    )
                    await call("GET", "/virtual-keys/c-peruser/users")
                    alice = client_headers(mcp_key, {"X-Igris-User": "alice"})
                    async with streamable_session(
                        gw + "c-peruser", alice, on_response=keep
                    ) as session:
                        responses.append((await session.call_tool("whoami", {})).model_dump_json())
                    assert upstream.guard.seen_with(alice_cred)
                    bob = await http.post(
                        gw + "c-peruser",
                        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                        headers={
                            "Authorization": f"Bearer {mcp_key}",
                            "X-Igris-User": "bob",
                            "Accept": "application/json, text/event-stream",
                        },
                    )
                    responses.append(_text(bob))
                    assert bob.status_code == 403

                    init = {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2025-06-18",
                            "capabilities": {},
                            "clientInfo": {"name": "canary", "version": "1"},
                        },
                    }
                    mcp_h = {
                        "Authorization": f"Bearer {mcp_key}",
                        "Accept": "application/json, text/event-stream",
                    }

                    async def mcp(slug: str, key: str | None = None) -> httpx.Response:
                        headers = dict(mcp_h)
                        if key is not None:
                            headers["Authorization"] = f"Bearer {key}"
                        r = await http.post(gw + slug, json=init, headers=headers)
                        responses.append(_text(r))
                        return r

                    for slug in ("c-header", "c-basic"):
                        assert (await mcp(slug)).status_code == 502  # upstream refuses
                    r = await mcp("c-echo")
                    assert r.status_code == 502
                    assert r.json()["error"]["code"] == "upstream_auth_failed"
                    assert echo.hits >= 1, "the echoing upstream was never reached"
                    echo_cases = (("c-echo-ok", "/ok", 200), ("c-echo-bad", "/bad", 502))
                    for slug, sub, status in echo_cases:
                        await call(
                            "POST",
                            "/virtual-keys",
                            conn(slug, f"https://127.0.0.1:{echo.port}{sub}", credential=echoed),
                            201,
                        )
                        assert (await mcp(slug)).status_code == status
                    assert (await mcp("c-dead")).status_code in (502, 503, 504)
                    assert (await mcp("c-bearer", "ig_" + "x" * 36)).status_code == 401
                    assert (await mcp("c-nope")).status_code == 404
                    assert (await mcp("c-limited")).status_code == 200
                    limited = await mcp("c-limited")
                    assert limited.status_code == 429
                    assert limited.json()["error"]["code"] == "rate_limited"

                    await call("POST", "/virtual-keys/c-bearer/rotate", {"credential": rotated})
                    await call(
                        "POST",
                        "/virtual-keys/c-bearer/rotate",
                        {"credential": f"{dead_cred}\r\nX-Evil: 1"},
                        422,
                    )
                    await call(
                        "POST",
                        "/virtual-keys/c-mtls/rotate",
                        {
                            "credential": mtls_cred,
                            "clientKey": "-----BEGIN PRIVATE KEY-----\n"
                            + key_lines[0]
                            + "\n-----END PRIVATE KEY-----",
                        },
                        422,
                    )
                    async with streamable_session(
                        gw + "c-bearer", client_headers(mcp_key), on_response=keep
                    ) as session:
                        again = await session.call_tool("echo", {"text": "r"})
                        responses.append(again.model_dump_json())
                    assert upstream.guard.seen_with(rotated), "rotation not in effect"
                    await call(
                        "POST",
                        "/virtual-keys",
                        conn("c-legacy", upstream.url("/legacy"), credential=rotated),
                        201,
                    )
                    legacy_url = gw + "c-legacy/sse"
                    async with legacy_session(legacy_url, client_headers(mcp_key)) as s:
                        legacy = await s.call_tool("echo", {"text": "l"})
                        responses.append(legacy.model_dump_json())
                    await call("POST", "/virtual-keys/c-header/disable")
                    assert (await mcp("c-header")).status_code == 403
                    await call("POST", "/virtual-keys/c-header/enable")
                    revoked = await call(
                        "POST", "/api-keys", {"name": "short-lived", "scopes": ["mcp"]}, 201
                    )
                    key_issuers.append(responses.pop())
                    short_key = revoked.json()["key"]
                    await call("DELETE", f"/api-keys/{revoked.json()['id']}", status=204)
                    assert (await mcp("c-bearer", short_key)).status_code == 401

                    for slug in (
                        "c-bearer",
                        "c-limited",
                        "c-legacy",
                        "c-header",
                        "c-basic",
                        "c-mtls",
                        "c-echo",
                        "c-dead",
                        "c-oauth",
                        "c-peruser",
                    ):
                        await call("GET", f"/virtual-keys/{slug}/audit?limit=200")
                    await call("GET", "/audit?limit=200")
                    await call("GET", "/api-keys")
                    metrics = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
                    assert metrics.status_code == 200
                    responses.append(_text(metrics))

                cli_env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
                cli_env["IGRIS_HOME"] = str(home)
                cli_out = []
                for argv in (
                    ["audit", "--json", "--limit", "200"],
                    ["audit"],
                    ["audit", "verify"],
                    ["audit", "c-echo", "--json"],
                ):
                    done = subprocess.run(
                        [sys.executable, "-m", "igris_mw.cli", *argv],
                        env=cli_env,
                        cwd=tmp_path,
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                    assert done.returncode == 0, done.stderr
                    cli_out.append(done.stdout + done.stderr)
            proxy_log = canary_proxy.log()
            assert "127.0.0.1" in proxy_log, "no upstream call went through the proxy"

    # serve has stopped: the data directory is complete, the WAL checkpointed or not.
    master_key = (home / "master.key").read_text().strip()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert stdout.strip() or stderr.strip()
    files = {
        p: p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file() and p.name != "master.key"
    }
    assert any(p.name.startswith("igris.db") for p in files)

    places = {
        "responses": "\n".join(responses + sdk_heads),
        "serve output": stdout + stderr,
        "cli": "\n".join(cli_out),
    }
    secrets_ = [*canaries, *key_lines, master_key, mcp_key, short_key]
    for secret in secrets_:
        for form in _forms(secret):
            for where, text in places.items():
                assert form not in text, f"a secret leaked to {where}"
            for path, data in files.items():
                assert form.encode() not in data, f"a secret leaked to {path.name}"
    # The bootstrap admin key is printed once, by design; nowhere else.
    assert stderr.count(admin) + stdout.count(admin) == 1
    for form in _forms(admin):
        assert form not in places["responses"]
        assert form not in places["cli"]
        for path, data in files.items():
            assert form.encode() not in data, f"the admin key leaked to {path.name}"
    # Each issued key is shown only in the one response that created it.
    assert sum(mcp_key in text for text in key_issuers) == 1
