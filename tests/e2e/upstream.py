"""A real upstream MCP server for the end-to-end tests.

One ``MCPServer`` with three tools, served both as Streamable HTTP (``/mcp``)
and as the legacy HTTP+SSE transport (``/legacy/sse`` + ``/legacy/messages/``),
behind ``CredentialGuard``: a pure ASGI guard that accepts only the
credentials a test allows and records the headers of every request, so a test
can assert what the gateway injected and what it stripped.

``whoami`` answers with a fingerprint of the credential, never the credential
itself, so that the canary test can demand that no response carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Mount

__all__ = ["CredentialGuard", "SeenRequest", "UpstreamServer", "fingerprint", "free_socket"]


def fingerprint(credential: str) -> str:
    """What ``whoami`` reports for a credential: a short SHA-256 prefix."""
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


@attrs.frozen(eq=False)
class SeenRequest:
    """One request as the upstream received it."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def all_header_bytes(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.headers)


class CredentialGuard:
    """Pure ASGI guard: ``Authorization: Bearer <credential>`` must be accepted.

    ``accepted`` is replaced (never mutated in place) by tests, which the
    upstream's thread then reads atomically.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.accepted: frozenset[str] = frozenset()
        self.seen: list[SeenRequest] = []
        self.open: list[SeenRequest] = []
        self._lock = threading.Lock()

    def accept(self, *credentials: str) -> None:
        self.accepted = self.accepted | frozenset(credentials)

    def refuse(self, *credentials: str) -> None:
        self.accepted = self.accepted - frozenset(credentials)

    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self.seen)

    def open_requests(self) -> list[SeenRequest]:
        """Requests the upstream is still serving (an SSE stream stays open)."""
        with self._lock:
            return list(self.open)

    def seen_with(self, credential: str) -> list[SeenRequest]:
        want = f"Bearer {credential}"
        return [r for r in self.requests() if r.header("authorization") == want]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = tuple(
            (bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1"))
            for k, v in scope["headers"]
        )
        seen = SeenRequest(
            scope["method"], scope["path"], bytes(scope["query_string"]).decode(), headers
        )
        with self._lock:
            self.seen.append(seen)
        auth = seen.header("authorization") or ""
        scheme, _, credential = auth.partition(" ")
        if scheme != "Bearer" or credential not in self.accepted:
            body = json.dumps({"error": "upstream refused the credential"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        # What a real OAuth-protected MCP server answers (RFC 9728).
                        (
                            b"www-authenticate",
                            b'Bearer resource_metadata="http://127.0.0.1/.well-known/'
                            b'oauth-protected-resource"',
                        ),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        with self._lock:
            self.open.append(seen)
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.open.remove(seen)


def build_mcp() -> MCPServer:
    """The upstream MCP server and its tools."""
    server: MCPServer = MCPServer("igris-e2e-upstream", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def whoami(ctx: Context) -> str:
        """Fingerprint of the credential this request carried."""
        request = ctx.request_context.request
        auth = request.headers.get("authorization", "") if request is not None else ""
        return fingerprint(auth.removeprefix("Bearer "))

    @server.tool()
    async def slow_progress(steps: int, delay: float, ctx: Context) -> str:
        """Report progress ``steps`` times, ``delay`` seconds apart, then finish."""
        for step in range(steps):
            await ctx.report_progress(step + 1, steps, f"step {step + 1}")
            await asyncio.sleep(delay)
        return f"done after {steps} steps"

    return server


def build_app(extra_hosts: tuple[str, ...] = ()) -> tuple[Any, CredentialGuard]:
    """The guarded ASGI app: ``/mcp`` (Streamable HTTP) and ``/legacy`` (HTTP+SSE).

    ``extra_hosts`` are more ``Host`` values (``name:*``) the SDK's DNS-rebinding
    guard accepts besides loopback, for an upstream reached by another name.
    """
    server = build_mcp()
    security = None
    if extra_hosts:
        security = TransportSecuritySettings(
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", *extra_hosts]
        )
    streamable = server.streamable_http_app(
        streamable_http_path="/mcp", transport_security=security
    )
    legacy = server.sse_app()

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # A mounted app's lifespan does not run: start the session manager here.
        async with server.session_manager.run():
            yield

    app = Starlette(
        routes=[Mount("/legacy", app=legacy), Mount("/", app=streamable)],
        lifespan=lifespan,
    )
    guard = CredentialGuard(app)
    return guard, guard


def free_socket() -> socket.socket:
    """A listening-ready TCP socket bound to a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class QuietServer(uvicorn.Server):
    """uvicorn without signal handlers: the test runner owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class UpstreamServer:
    """The upstream app served by uvicorn in a thread with its own event loop."""

    def __init__(self, extra_hosts: tuple[str, ...] = ()) -> None:
        self.app, self.guard = build_app(extra_hosts)
        self._sock = free_socket()
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            log_config=None,
            lifespan="on",
            access_log=True,
            ws="none",
            timeout_graceful_shutdown=3,
        )
        self._server = QuietServer(config)
        self._thread = threading.Thread(target=self._run, name="e2e-upstream", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the upstream server died on start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("the upstream server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def accept(self, *credentials: str) -> None:
        self.guard.accept(*credentials)

    def requests(self) -> list[SeenRequest]:
        return self.guard.requests()
