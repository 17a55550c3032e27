"""A throwaway ``redis-server`` for tests of the shared rate-limit store.

``with redis_server(binary) as url:`` starts the server on a free loopback
port with no persistence, waits until it answers ``PING``, yields its
``redis://127.0.0.1:<port>/0`` URL and stops it. The caller finds the binary
(``shutil.which("redis-server")``) and decides whether its absence skips or
fails; this helper needs no pytest.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

__all__ = ["redis_server"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(binary: str, *, timeout: float = 10.0) -> Iterator[str]:
    """Run ``binary`` as a throwaway server; yield its URL.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout``.
    """
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(  # noqa: S603 (the caller names the binary; no shell)
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            while not _answers_ping(port):
                if proc.poll() is not None:
                    raise RuntimeError("redis-server exited")
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)
