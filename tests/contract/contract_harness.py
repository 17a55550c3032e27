"""Black-box harness for the contract tests: a real ``igris-mw serve``
subprocess on a free loopback port and a real upstream MCP server.

These tests know the product only through /work/shared/CONTRACT.md: HTTP,
the MCP SDK and the ``igris-mw`` command line. One serve process per module.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import attrs
import httpx

# The upstream MCP server lives with the e2e tests; importlib mode puts nothing on sys.path.
sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))

from upstream import UpstreamServer

KEY_RE = re.compile(r"ig_[0-9A-Za-z]{20,}")
LOOPBACK = "127.0.0.0/8"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def igris_command() -> list[str]:
    """The installed ``igris-mw`` console script next to this interpreter."""
    script = Path(sys.executable).parent / "igris-mw"
    if script.exists():
        return [str(script)]
    found = shutil.which("igris-mw")
    assert found, "igris-mw is not installed"
    return [found]


def clean_env(home: Path, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The process environment without IGRIS_*, loopback upstreams allowed; None unsets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env.pop("HTTP_PROXY", None)
    env.pop("HTTPS_PROXY", None)
    env["IGRIS_HOME"] = str(home)
    env["IGRIS_ALLOW_UPSTREAM_NETWORKS"] = LOOPBACK
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def new_slug(prefix: str = "ct") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@attrs.define
class Served:
    """One running ``igris-mw serve``."""

    url: str
    admin: str
    home: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes]

    def h(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin}", **extra}

    def api(self, method: str, path: str, *, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = {**self.h(key), **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=20, **kw)

    def create_connection(self, upstream: UpstreamServer | None, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "slug": new_slug(),
            "name": "contract",
            "upstreamUrl": (upstream.base_url + "/mcp") if upstream else "http://127.0.0.1:9/mcp",
            "credential": "cred-" + secrets.token_hex(8),
        }
        body.update(fields)
        r = self.api("POST", "/api/v1/virtual-keys", json=body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        out["_credential"] = body.get("credential")
        return out

    def mcp_key(self, **fields: Any) -> tuple[str, str]:
        r = self.api("POST", "/api/v1/api-keys", json={"name": "mcp", "scopes": ["mcp"], **fields})
        assert r.status_code == 201, r.text
        return r.json()["key"], r.json()["id"]

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*igris_command(), *args],
            env=self.env,
            cwd=self.home.parent,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(
    home: Path,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    port: int | None = None,
    admin: str | None = None,
) -> Iterator[Served]:
    """Start ``igris-mw serve`` and wait for /healthz; its first-start admin key comes back."""
    port = port or free_port()
    full_env = clean_env(home, env)
    log = home.parent / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*igris_command(), "serve", "--port", str(port), *args],
            env=full_env,
            cwd=home.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        key = admin
        if key is None:
            found = KEY_RE.findall(log.read_text())
            assert found, log.read_text()
            key = found[0]
        yield Served(url, key, home, full_env, log, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def error_of(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert the contract's error shape and return its ``error`` object."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert isinstance(err.get("code"), str), err
    assert re.fullmatch(r"[a-z][a-z0-9_]*", err["code"]), err
    assert isinstance(err.get("message"), str), err
    assert err["message"], err
    if code is not None:
        assert err["code"] == code, err
    return err


# -- a scripted upstream: plain HTTP answers a test chooses by path -------------


class ScriptedUpstream:
    """A tiny ASGI upstream in its own thread; the first path segment picks the answer.

    ``/echo``: 200 JSON of the request (method, path, query, headers);
    ``/status/<n>``: status n with ``WWW-Authenticate`` and the headers of
    ``/leaky``; ``/leaky``: 200 with headers the gateway must never relay;
    ``/reflect``: 400 whose body and a header repeat the request's Authorization;
    ``/idle``: an SSE stream with one event, then silence for a minute.
    """

    def __init__(self) -> None:
        import asyncio
        import threading

        import uvicorn
        from upstream import QuietServer, free_socket

        self.seen: list[dict[str, Any]] = []
        self._sock = free_socket()
        self.port = int(self._sock.getsockname()[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            log_config=None,
            lifespan="off",
            ws="none",
            interface="asgi3",
            timeout_graceful_shutdown=1,
        )
        self._server = QuietServer(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[self._sock])), daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "scripted upstream did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        self._sock.close()

    token_requests: ClassVar[list[dict[str, str]]] = []

    async def _token(self, mode: str, body: bytes, send: Any) -> None:
        """An OAuth token endpoint: ``ok`` (1 h tokens), ``short`` (2 s tokens whose
        refresh answers invalid_grant)."""
        import asyncio
        import json
        from urllib.parse import parse_qsl

        form = dict(parse_qsl(body.decode()))
        self.token_requests.append({"mode": mode, **form})
        await asyncio.sleep(0.2)  # a slow provider: concurrent renewals would overlap
        n = len(self.token_requests)
        status, out = (
            200,
            {
                "access_token": f"at-{mode}-{n}",
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": f"rt-{n}",
            },
        )
        if mode == "short":
            if form.get("grant_type") == "refresh_token":
                status, out = 400, {"error": "invalid_grant"}
            else:
                out["expires_in"] = 2
        data = json.dumps(out).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    LEAKY: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"set-cookie", b"sid=upstream; Path=/"),
        (b"alt-svc", b'h3=":443"'),
        (b"strict-transport-security", b"max-age=31536000"),
        (b"clear-site-data", b'"*"'),
        (b"x-upstream-ok", b"1"),
    ]

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        import asyncio
        import json

        assert scope["type"] == "http"
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {
            bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
            for k, v in scope["headers"]
        }
        seen = {
            "method": scope["method"],
            "path": scope["path"],
            "query": bytes(scope["query_string"]).decode(),
            "headers": headers,
            "bodyLength": len(body),
        }
        self.seen.append(seen)
        parts = scope["path"].strip("/").split("/")
        kind = parts[0]
        if kind == "token":
            await self._token(parts[1] if len(parts) > 1 else "ok", body, send)
            return
        if kind == "idle":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            await send(
                {"type": "http.response.body", "body": b"data: first\n\n", "more_body": True}
            )
            await asyncio.sleep(60)
            await send({"type": "http.response.body", "body": b""})
            return
        if kind in ("legacy-abs", "legacy-rel") and scope["method"] == "GET":
            # a legacy HTTP+SSE server's stream: the endpoint event, absolute or relative
            target = f"/{kind}/messages/?session_id=s123"
            if kind == "legacy-abs":
                target = f"http://127.0.0.1:{self.port}{target}"
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": f"event: endpoint\ndata: {target}\n\n".encode(),
                }
            )
            await asyncio.sleep(2)
            await send({"type": "http.response.body", "body": b""})
            return
        status, extra, out = 200, [], json.dumps(seen).encode()
        if kind == "status":
            status = int(parts[1])
            extra = [
                (b"www-authenticate", b'Bearer resource_metadata="https://x/.well-known"'),
                *self.LEAKY,
            ]
            out = b'{"error": "no"}'
        elif kind == "leaky":
            extra = list(self.LEAKY)
        elif kind == "reflect":
            status = 400
            auth = headers.get("authorization", "")
            extra = [(b"x-echo-auth", auth.encode("latin-1"))]
            out = json.dumps({"error": f"bad token {auth}"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(out)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})
