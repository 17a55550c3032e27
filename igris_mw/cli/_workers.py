"""``serve --workers N``: N gateway processes accepting on one listening socket.

A pre-fork server. The parent does what must happen once (the master key
file, the first-start admin key, binding the port), then forks N workers
(``fork_workers``) and only supervises. Each worker carries on with
``run_serve`` from that point: it builds its own gateway (own store
connection, caches, upstream session, audit writer) and runs uvicorn on the
inherited socket (``inherited_socket``, picked up by ``run_bounded``). The
kernel hands each new TCP connection to whichever worker calls ``accept``
first, so an idle worker takes the next one.

Why one shared socket and not ``SO_REUSEPORT`` (a socket per worker): with
reuseport the kernel picks the worker by a hash of the connection's
addresses, blind to load, and connections queued on the socket of a worker
that dies are reset. Why fork and not uvicorn's ``workers=``
(``multiprocessing`` spawn): spawn rebuilds the app in each child from an
import string, so every ``serve`` option would travel through the
environment; a fork carries on with the parsed options as they are.

The parent passes SIGTERM / SIGINT on to every worker as SIGTERM (each
shuts down within ``--shutdown-timeout`` by itself); a worker that dies is
replaced by a fresh fork of the parent (which holds no open store, thread
or loop), unless it failed to start or died within a second of starting:
then the whole server stops (no crash loop). Changes made through one
worker reach the others through the store (``SQLiteStore``'s change poll,
Postgres NOTIFY): see docs/workers.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from .._errors import ConfigurationError

__all__ = ["fork_workers", "inherited_socket", "worker_path", "worker_slot"]

# A worker that dies sooner than this after its start is not replaced.
_MIN_LIFETIME = 1.0
# uvicorn's exit status when the app fails to start.
_STARTUP_FAILURE = 3

_socket: socket.socket | None = None
_slot = 0


def inherited_socket() -> socket.socket | None:
    """In a worker, the listening socket it shares; ``None`` in a single process."""
    return _socket


def worker_slot() -> int | None:
    """This worker's number (0 .. N-1) under ``--workers N``; ``None`` in a single process.

    For what one worker does for all: e.g. only worker 0 listens on the
    metrics port (with ``PROMETHEUS_MULTIPROC_DIR``, any worker's scrape
    returns the sum over all of them)."""
    return None if _socket is None else _slot


def worker_path(path: Path) -> Path:
    """``path`` for this worker: unchanged for worker 0 (and a single process),
    ``name.wK.suffix`` for worker K. Files with one reader and one writer
    (the audit spill and its cursor) need one per worker."""
    if _slot == 0:
        return path
    return path.with_name(f"{path.stem}.w{_slot}{path.suffix}")


def _say(message: str) -> None:
    print(f"igris-mw: {message}", file=sys.stderr, flush=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def fork_workers(
    host: str,
    port: int,
    workers: int,
    *,
    shutdown_timeout: float,
    on_exit: Callable[[int], None] | None = None,
) -> int | None:
    """Bind ``host:port`` and fork ``workers`` workers.

    Returns ``None`` in each worker (which goes on to serve on
    ``inherited_socket()``), and in the parent, once every worker has
    stopped, the exit status of the server. ``on_exit(pid)`` runs in the
    parent after each worker exits (e.g. ``prometheus_client.multiprocess.
    mark_process_dead``).

    Raises:
        ConfigurationError: the address cannot be bound.
    """
    global _socket, _slot
    sock = _bind(host, port)
    slots: dict[int, tuple[int, float]] = {}  # pid -> (slot, started at)
    stopping = False

    def fork(slot: int) -> bool:
        """True in the new worker."""
        global _socket, _slot
        # Blocked across the fork, so the parent's handler never runs in a worker.
        signals = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
            _socket, _slot = sock, slot
            return True
        slots[pid] = (slot, time.monotonic())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        return False

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(slots):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(workers):
        if fork(slot):
            return None
    _say(f"{workers} workers share {host}:{port} (pids {', '.join(map(str, slots))})")
    status = 0
    deadline: float | None = None
    while slots:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if stopping and deadline is None:
                deadline = time.monotonic() + shutdown_timeout + 1.0
            if deadline is not None and time.monotonic() > deadline:
                # Each worker has its own shutdown watchdog; this is the last resort.
                for left in list(slots):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(left, signal.SIGKILL)
            time.sleep(0.05)
            continue
        slot, born = slots.pop(pid, (0, 0.0))
        code = os.waitstatus_to_exitcode(wait_status)
        if on_exit is not None:
            try:
                on_exit(pid)
            except Exception as exc:  # a bookkeeping hook must not stop the supervisor
                _say(f"after worker {pid} exited: {type(exc).__name__}: {exc}")
        if stopping:
            continue
        if code == _STARTUP_FAILURE or time.monotonic() - born < _MIN_LIFETIME:
            _say(f"worker {pid} exited ({code}) while starting; stopping the server")
            status = _STARTUP_FAILURE if code == _STARTUP_FAILURE else 1
            stop(signal.SIGTERM, None)
            continue
        _say(f"worker {pid} exited ({code}); starting another")
        if fork(slot):
            return None
    sock.close()
    return status
