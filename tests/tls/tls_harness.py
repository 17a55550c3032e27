"""Real TLS parts for the tests: a throwaway CA, TLS upstreams, a forward proxy.

- ``trustme`` makes the CA and the leaf certificates (never a real CA).
- ``TlsUpstreamServer`` is the end-to-end upstream (``tests/e2e/upstream.py``:
  the MCP server behind ``CredentialGuard``) served by uvicorn over TLS with a
  context built here, so a test can require client certificates and see the
  SNI name each handshake asked for.
- ``ForwardProxy`` runs ``proxy.py`` (from PyPI) as a child process on a free
  loopback port with basic auth, its log captured to a file so a test can
  see the ``CONNECT``.
- ``StaticResolver`` is an aiohttp resolver that maps made-up names to
  loopback, the way the egress policy's resolver pins the checked address.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import trustme
import uvicorn
from aiohttp.abc import AbstractResolver, ResolveResult
from e2e_harness import Gateway, make_gateway, serve
from upstream import QuietServer, UpstreamServer

from igris_mw._proxy import Forwarder

__all__ = [
    "INTERNAL_NAME",
    "ForwardProxy",
    "StaticResolver",
    "TlsFront",
    "TlsUpstreamServer",
    "running",
    "tls_gateway",
]

# A made-up internal name that only StaticResolver knows (the .test TLD is reserved).
INTERNAL_NAME = "mcp.internal.test"


class TlsUpstreamServer(UpstreamServer):
    """The e2e upstream over TLS with ``cert``, recording each handshake's SNI name.

    ``host`` is the name put in ``base_url`` (the socket is 127.0.0.1 either way).
    """

    def __init__(self, cert: trustme.LeafCert, *, host: str = "localhost") -> None:
        super().__init__(extra_hosts=(f"{INTERNAL_NAME}:*",))
        self.sni_names: list[str | None] = []
        self._sni_lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        context.set_alpn_protocols(["http/1.1"])
        context.sni_callback = self._record_sni
        self.ssl_context = context
        config = uvicorn.Config(
            self.app,
            log_config=None,
            lifespan="on",
            access_log=True,
            ws="none",
            timeout_graceful_shutdown=3,
            ssl_context_factory=lambda _config, _default: context,
        )
        self._server = QuietServer(config)
        self.host = host
        self.base_url = f"https://{host}:{self.port}"

    def _record_sni(self, _sock: Any, name: str | None, _context: Any) -> None:
        with self._sni_lock:
            self.sni_names.append(name)

    def url(self, path: str = "/mcp", host: str | None = None) -> str:
        return f"https://{host or self.host}:{self.port}{path}"


class TlsFront:
    """A blocking TLS terminator (as nginx would be) in front of a plain upstream.

    asyncio's server side aborts a failed handshake without flushing OpenSSL's
    alert, so a client of a uvicorn TLS server never learns *why* (it sees a
    reset). A blocking ``SSLSocket`` writes the alert (e.g. TLS 1.3
    ``certificate required``) before closing, as real servers do; this front
    exists so the mTLS tests see what production upstreams send.
    """

    def __init__(self, cert: trustme.LeafCert, client_ca: trustme.CA, host: str = "localhost"):
        self.backend = UpstreamServer()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        context.sni_callback = self._record_sni
        self.ssl_context = context
        self.sni_names: list[str | None] = []
        self.handshake_errors: list[str] = []
        self.client_names: list[str] = []  # the CN of each accepted client certificate
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port: int = self._listener.getsockname()[1]
        self.host = host
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tls-front", daemon=True)

    def _record_sni(self, _sock: Any, name: str | None, _context: Any) -> None:
        self.sni_names.append(name)

    def url(self, path: str = "/mcp", host: str | None = None) -> str:
        return f"https://{host or self.host}:{self.port}{path}"

    def requests(self) -> list[Any]:
        return self.backend.requests()

    def accept(self, *credentials: str) -> None:
        self.backend.accept(*credentials)

    def start(self) -> None:
        self.backend.start()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        self.backend.stop()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        tls = self.ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(type(exc).__name__ + ": " + str(exc))
            # Drain before closing: closing with unread data sends an RST, which
            # can make the client drop the alert still in its receive buffer.
            # (shutdown() drops the SSL object; recv then reads the raw socket.)
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_WR)
                while tls.recv(65536):
                    pass
            tls.close()
            return
        peer = tls.getpeercert() or {}
        for rdn in peer.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    self.client_names.append(value)
        with (
            tls,
            socket.create_connection(("127.0.0.1", self.backend.port)) as backend,
            selectors.DefaultSelector() as selector,
        ):
            selector.register(tls, selectors.EVENT_READ)
            selector.register(backend, selectors.EVENT_READ)
            while not self._stopping.is_set():
                ready = [key.fileobj for key, _ in selector.select(timeout=0.5)]
                if tls.pending() and tls not in ready:
                    ready.append(tls)
                try:
                    for source in ready:
                        sink = backend if source is tls else tls
                        data = source.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        sink.sendall(data)
                except (ssl.SSLError, OSError):
                    return


class StaticResolver(AbstractResolver):
    """Resolves the names it was given to fixed addresses; every other name fails."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = dict(names)
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"StaticResolver does not know {host}")
        return [
            ResolveResult(
                hostname=host,
                host=self.names[host],
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


class ForwardProxy:
    """``proxy.py`` in a child process on a free loopback port, with basic auth."""

    def __init__(self, directory: Path, *, username: str, password: str) -> None:
        self.directory = directory
        self.username = username
        self.password = password
        self.log_path = directory / "proxy.log"
        self.port_path = directory / "proxy.port"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy URL without credentials."""
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, password: str | None = None) -> str:
        """The proxy URL with the user name and ``password`` (default: the right one)."""
        secret = self.password if password is None else password
        return f"http://{self.username}:{secret}@127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        # proxy.py makes ~/.proxy/cache on import: give it the session's tmp as home.
        env["HOME"] = str(self.directory)
        command = [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(self.port_path),
            "--num-workers",
            "1",
            "--num-acceptors",
            "1",
            "--basic-auth",
            f"{self.username}:{self.password}",
            "--log-file",
            str(self.log_path),
            "--log-level",
            "INFO",
            "--data-dir",
            str(self.directory / "data"),
        ]
        stderr = (self.directory / "proxy.stderr").open("wb")
        with stderr:
            self._process = subprocess.Popen(  # the command is fixed above
                command, stdout=stderr, stderr=stderr, env=env, cwd=self.directory
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"proxy.py exited on start-up:\n{self.output()}")
            with contextlib.suppress(OSError, ValueError):
                port = int(self.port_path.read_text().split()[0])
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    self.port = port
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"proxy.py did not start:\n{self.output()}")

    def output(self) -> str:
        texts = []
        for path in (self.log_path, self.directory / "proxy.stderr"):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def log(self) -> str:
        """What the proxy logged so far (access lines include ``CONNECT host:port``)."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        """The log once it contains ``needle`` (proxy.py writes access lines on close)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def running(server: Any) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def tls_gateway(
    store_dir: Path, *, resolver: AbstractResolver | None = None, **options: Any
) -> AsyncIterator[Gateway]:
    """A running gateway on a fresh store with the given options (and its keys)."""
    gw = make_gateway(store_dir, **options)
    if resolver is not None:
        # What the egress policy's connector does: the socket goes where the resolver says.
        fwd = gw.forwarder
        gw.forwarder = Forwarder(
            timeout=fwd.timeout, ssl=fwd._ssl, proxy=fwd.proxy, resolver=resolver
        )
    async with serve(gw) as base_url:
        mcp_record, mcp_key = await gw.service.create_api_key(
            {"name": "tls mcp", "scopes": ["mcp"]}
        )
        _, admin_key = await gw.service.create_api_key({"name": "tls admin", "scopes": ["admin"]})
        yield Gateway(gw, base_url, store_dir / "igris.db", mcp_key, mcp_record.id, admin_key)
