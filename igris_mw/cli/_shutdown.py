"""uvicorn with a bounded shutdown (``serve --shutdown-timeout``).

The bound is split between the parts of a shutdown: open requests and
streams get half of it (uvicorn's graceful shutdown), the audit queue 3/10
(``AuditWriter.close_timeout``: what the sink has not taken by then is
spilled), and the rest is for closing the store and the crypto provider.
Those may wait on a server that does not answer (a frozen Postgres holds a
close for more than 10 s in psycopg's cancel and reconnect timeouts), so a
watchdog started by the first SIGTERM / SIGINT ends the process when the
bound is over; the audit events are on disk by then.
"""

from __future__ import annotations

import os
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn

from ._workers import inherited_socket

__all__ = ["run_bounded"]

# uvicorn's own exit status when the app fails to start.
_STARTUP_FAILURE = 3


class _BoundedServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown_timeout: float) -> None:
        super().__init__(config)
        self._shutdown_timeout = shutdown_timeout
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self._shutdown_timeout, _overdue, (sig,))
            self._watchdog.daemon = True
            self._watchdog.start()
        super().handle_exit(sig, frame)


def _overdue(sig: int) -> None:
    print(
        "igris-mw: shutdown took longer than --shutdown-timeout; exiting now "
        "(audit events the sink did not take are in the spill file)",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + sig)


def run_bounded(app: Any, *, shutdown_timeout: float, **options: Any) -> None:
    """``uvicorn.run(app, **options)``, finished within ``shutdown_timeout`` of a signal."""
    config = uvicorn.Config(app, timeout_graceful_shutdown=round(shutdown_timeout * 0.5), **options)
    server = _BoundedServer(config, shutdown_timeout)
    # A worker of serve --workers N serves on the socket its parent bound.
    sock = inherited_socket()
    server.run(sockets=None if sock is None else [sock])
    if not server.started:
        sys.exit(_STARTUP_FAILURE)
