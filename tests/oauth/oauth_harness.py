"""A real authorization server and a real MCP resource server that checks its tokens.

``AuthorizationServer`` runs ``tests/oauth/provider/server.mjs`` (oidc-provider,
installed by ``scripts/test`` with ``npm ci``) as a node process on a free
loopback port. ``ResourceServer`` is an MCP server (the ``mcp`` SDK under
uvicorn, in its own thread) behind ``TokenGuard``, a pure ASGI guard that
accepts only ES256 JWT access tokens signed by that provider (keys from its
JWKS), issued for this resource (``aud``), unexpired, with the ``mcp:tools``
scope; anything else is a 401 with an RFC 9728 ``resource_metadata`` hint.
It serves its protected resource metadata at the RFC 9728 well-known URLs.
``drive_consent`` signs in and consents through the provider's own HTML forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import jwt
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

PROVIDER_DIR = Path(__file__).parent / "provider"

CONFIDENTIAL_CLIENT = "igris-confidential"
CONFIDENTIAL_SECRET = "test-client-secret-0123456789abcdef"
POST_CLIENT = "igris-confidential-post"
POST_SECRET = "test-client-secret-post-0123456789abcdef"
PUBLIC_CLIENT = "igris-public"
REQUIRED_SCOPE = "mcp:tools"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provider_unavailable() -> str | None:
    """Why the provider cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return "oidc-provider is not installed: run scripts/test (npm ci in tests/oauth/provider)"
    return None


class AuthorizationServer:
    """oidc-provider in a node process on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "NODE_NO_WARNINGS": "1"}
        self._process = subprocess.Popen(
            ["node", "server.mjs", str(self.port)],
            cwd=PROVIDER_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        url = f"{self.issuer}/.well-known/openid-configuration"
        while True:
            if self._process.poll() is not None:
                stderr = self._process.stderr
                err = stderr.read().decode(errors="replace") if stderr else ""
                raise RuntimeError(f"oidc-provider exited on start-up: {err[-2000:]}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("oidc-provider did not answer its discovery document")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        if self._process.stderr is not None:
            self._process.stderr.close()
        self._process = None

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def revocation_endpoint(self) -> str:
        return f"{self.issuer}/token/revocation"

    async def stats(self) -> Counter[str]:
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"{self.issuer}/_test/stats")
        return Counter(resp.json()["counts"])

    async def token_requests(self, client_id: str, grant: str) -> int:
        counts = await self.stats()
        return counts[f"{client_id} {grant} success"] + counts[f"{client_id} {grant} error"]

    async def reset(self) -> None:
        async with httpx.AsyncClient() as client:
            await client.post(f"{self.issuer}/_test/reset")

    async def set_ttl(self, seconds: int) -> None:
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{self.issuer}/_test/ttl", params={"seconds": seconds})
        resp.raise_for_status()

    async def fail_next(self, count: int) -> None:
        async with httpx.AsyncClient() as client:
            await client.post(f"{self.issuer}/_test/fail", params={"count": count})


_FORM = re.compile(r'<form[^>]*action="([^"]+)"[^>]*method="post"', re.IGNORECASE)
_PROMPT = re.compile(r'name="prompt" value="([a-z]+)"')


async def drive_consent(
    authorize_url: str, *, account: str, redirect_prefix: str, max_steps: int = 20
) -> str:
    """Open ``authorize_url`` as a browser would, sign in as ``account`` and consent.

    Returns the URL the provider redirects to under ``redirect_prefix`` (the
    callback, with ``code``, ``state`` and ``iss``), without requesting it.
    """
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as browser:
        resp = await browser.get(authorize_url)
        for _ in range(max_steps):
            if resp.is_redirect:
                location = urljoin(str(resp.url), resp.headers["location"])
                if location.startswith(redirect_prefix):
                    return location
                resp = await browser.get(location)
                continue
            form = _FORM.search(resp.text)
            prompt = _PROMPT.search(resp.text)
            if resp.status_code != 200 or form is None or prompt is None:
                raise AssertionError(f"unexpected page {resp.status_code}: {resp.text[:500]}")
            action = urljoin(str(resp.url), unescape(form.group(1)))
            if prompt.group(1) == "login":
                data = {"prompt": "login", "login": account, "password": "any"}
            else:
                data = {"prompt": prompt.group(1)}
            resp = await browser.post(action, data=data)
    raise AssertionError("the provider's interaction did not end in a redirect")


# ---------------------------------------------------------------------------
# The resource server


class TokenGuard:
    """Pure ASGI guard: a valid access token from the provider, for this resource."""

    def __init__(self, app: Any, *, issuer: str, jwks: dict[str, Any]) -> None:
        self.app = app
        self.issuer = issuer
        self.keys = jwt.PyJWKSet.from_dict(jwks)
        self.resource = ""  # set once the port is known
        self.metadata_url = ""
        self._lock = threading.Lock()
        self.accepted: list[dict[str, Any]] = []
        self.refused: list[str] = []  # reasons
        #: Token ids (jti) refused although valid, as if revoked at the resource.
        self.revoked: frozenset[str] = frozenset()

    def validate(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "at+jwt":  # RFC 9068 2.1
            raise jwt.InvalidTokenError("not an access token")
        key = next((k for k in self.keys.keys if k.key_id == header.get("kid")), None)
        if key is None:
            raise jwt.InvalidTokenError("unknown key")
        claims: dict[str, Any] = jwt.decode(
            token,
            key=key,
            algorithms=["ES256"],
            audience=self.resource,
            issuer=self.issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
        if REQUIRED_SCOPE not in str(claims.get("scope", "")).split():
            raise jwt.InvalidTokenError("scope missing")
        if claims.get("jti") in self.revoked:
            raise jwt.InvalidTokenError("revoked")
        return claims

    def revoke(self, token: str) -> None:
        """Refuse ``token`` from now on."""
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        self.revoked = self.revoked | {jti}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/.well-known/"):
            await self.app(scope, receive, send)
            return
        auth = ""
        for key, value in scope["headers"]:
            if key.lower() == b"authorization":
                auth = value.decode("latin-1")
        scheme, _, token = auth.partition(" ")
        challenge = f'Bearer resource_metadata="{self.metadata_url}"'
        reason = "no token"
        if scheme.lower() == "bearer" and token:
            try:
                claims = self.validate(token)
            except jwt.InvalidTokenError as exc:
                reason = type(exc).__name__
                challenge += ', error="invalid_token"'
            else:
                with self._lock:
                    self.accepted.append(claims)
                await self.app(scope, receive, send)
                return
        with self._lock:
            self.refused.append(reason)
        body = json.dumps({"error": "invalid_token"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", challenge.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def build_mcp() -> MCPServer:
    server: MCPServer = MCPServer("igris-oauth-upstream", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The subject and client of the (already validated) access token."""
        request = ctx.request_context.request
        auth = request.headers.get("authorization", "") if request is not None else ""
        claims = jwt.decode(auth.partition(" ")[2], options={"verify_signature": False})
        return json.dumps({"sub": claims.get("sub"), "client_id": claims.get("client_id")})

    return server


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class ResourceServer:
    """The guarded MCP server at ``<base>/mcp``, served in its own thread."""

    def __init__(self, provider: AuthorizationServer) -> None:
        jwks = httpx.get(f"{provider.issuer}/jwks", timeout=5).json()
        server = build_mcp()
        streamable = server.streamable_http_app(streamable_http_path="/mcp")

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            async with server.session_manager.run():
                yield

        async def metadata(_: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "resource": self.resource,
                    "authorization_servers": [provider.issuer],
                    "scopes_supported": [REQUIRED_SCOPE],
                    "bearer_methods_supported": ["header"],
                }
            )

        app = Starlette(
            routes=[
                Route("/.well-known/oauth-protected-resource/mcp", metadata),
                Mount("/", app=streamable),
            ],
            lifespan=lifespan,
        )
        self.guard = TokenGuard(app, issuer=provider.issuer, jwks=jwks)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.resource = f"{self.base_url}/mcp"
        self.guard.resource = self.resource
        self.guard.metadata_url = f"{self.base_url}/.well-known/oauth-protected-resource/mcp"
        config = uvicorn.Config(
            self.guard, log_config=None, lifespan="on", ws="none", timeout_graceful_shutdown=3
        )
        self._server = _QuietServer(config)
        self._thread = threading.Thread(target=self._run, name="oauth-upstream", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the resource server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


def require_backends() -> bool:
    return os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1"
