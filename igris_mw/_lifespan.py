"""Start-up and shutdown of the gateway: the ASGI lifespan protocol and the lazy start.

``Lifecycle`` runs one ``start`` and one ``stop`` (the gateway's: open the
store, the upstream session and the audit writer; flush and close them) in
whichever of these cases the server puts it:

1. **Wrapped app with a lifespan**: the app's lifespan runs with ours
   around it. Ours starts when the server's ``lifespan.startup`` passes
   through to the app, and stops when the app reports
   ``lifespan.shutdown.complete`` (or ``failed``), before the server hears it.
2. **Wrapped app without a lifespan** (it raises on, or returns at once from,
   a ``lifespan`` scope before completing start-up): ours finishes the
   protocol itself: ``startup.complete``, wait for ``shutdown``, stop,
   ``shutdown.complete``. An app that fails *after* completing start-up is
   not masked: its error propagates.
3. **Standalone** (no wrapped app): ours alone speaks the protocol; a start
   that fails is reported as ``lifespan.startup.failed`` with a message
   that holds no secret.
4. **No lifespan events at all** (``httpx.ASGITransport``, some hosts): the
   first request that needs the store starts everything (``ensure_started``);
   if that fails, that request gets 503 with ``Retry-After``, and a later
   one tries again.

``start`` runs at most once at a time (a lock) and is idempotent; ``stop``
is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._asgi import ASGIApp, Receive, Scope, Send
from ._errors import IgrisError, StoreUnavailable
from ._responses import for_anonymous, send_error

__all__ = ["Lifecycle"]

log = logging.getLogger("igris_mw.gateway")


class Lifecycle:
    """Runs ``start``/``stop`` once each, from the lifespan protocol or lazily."""

    __slots__ = ("_lock", "_start", "_stop", "started")

    def __init__(
        self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
    ) -> None:
        self._start = start
        self._stop = stop
        self._lock: asyncio.Lock | None = None
        self.started = False

    async def startup(self) -> None:
        """Run ``start`` unless it already ran (idempotent, one at a time)."""
        if self.started:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.started:
                return
            await self._start()
            self.started = True

    async def shutdown(self) -> None:
        """Run ``stop`` if ``start`` ran (idempotent)."""
        if not self.started:
            return
        self.started = False
        await self._stop()

    async def ensure_started(self, send: Send) -> bool:
        """Case 4: start lazily; when the store or crypto cannot start, answer 503."""
        if self.started:
            return True
        try:
            await self.startup()
        except IgrisError as exc:
            log.error("igris-mw cannot start: %s", exc.message)
            err = (
                exc
                if exc.status == 503
                else StoreUnavailable(
                    f"the gateway cannot start: {exc.message}", code=exc.code, retry_after=5
                )
            )
            known = getattr(err, "retry_after", None) is not None
            # Anyone may be asking: the details (paths, hosts) stay in the log.
            err = for_anonymous(err)
            await send_error(send, err, () if known else ((b"retry-after", b"5"),))
            return False
        return True

    async def run(self, app: ASGIApp | None, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ``lifespan`` scope (cases 1 to 3)."""
        if app is None:
            await self._standalone(receive, send)
        else:
            await self._around(app, scope, receive, send)

    async def _standalone(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await self.startup()
        except Exception as exc:
            log.error("igris-mw failed to start: %s", _safe(exc))
            await send({"type": "lifespan.startup.failed", "message": _safe(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        await _wait_shutdown(receive)
        await self.shutdown()
        await send({"type": "lifespan.shutdown.complete"})

    async def _around(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"startup_sent": False, "shutdown_sent": False, "got_shutdown": False}

        async def wrapped_receive() -> Any:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
            elif message["type"] == "lifespan.shutdown":
                state["got_shutdown"] = True
            return message

        async def wrapped_send(message: Any) -> None:
            if message["type"] == "lifespan.startup.complete":
                state["startup_sent"] = True
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.shutdown()
                state["shutdown_sent"] = True
            await send(message)

        try:
            await app(scope, wrapped_receive, wrapped_send)
        except Exception:
            if state["startup_sent"]:
                raise
            log.debug("the wrapped app has no lifespan; the gateway runs its own")
        if not state["startup_sent"]:
            # Case 2: the app has no lifespan; finish the protocol ourselves.
            try:
                await self.startup()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": _safe(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            if not state["got_shutdown"]:
                await _wait_shutdown(receive)
            await self.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
        elif not state["shutdown_sent"]:
            await self.shutdown()


async def _wait_shutdown(receive: Receive) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        pass


def _safe(exc: BaseException) -> str:
    """A start-up failure as the server may show it: our message, or only the type."""
    if isinstance(exc, IgrisError):
        return exc.message
    return type(exc).__name__
