"""``GET /readyz``: is this process fit to take traffic?

Ready (200 ``{"status": "ready"}``) when

* the store answers: one cheap read (an API key lookup by a hash no key
  has, which every backend answers from an index), bounded by ``timeout``
  seconds; its result is kept ``cache_seconds`` and concurrent probes share
  one read, so probing ``/readyz`` in a loop cannot hammer the store;
* the audit keeps up: fewer than ``audit_threshold`` events wait for the
  sink, the sink took the last batch (or had nothing to take), and the
  writer is not refusing requests (fail-closed; read from its
  ``refusing`` attribute when it has one).

Otherwise 503 ``{"status": "not_ready", "reasons": [{"check", "message"}]}``
with ``Retry-After: 1``. The reasons name no store address, path or secret.
``/healthz`` stays the liveness check: it never touches the store.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from .._asgi import Send
from .._responses import send_json

__all__ = ["Readiness"]

_NO_SUCH_KEY: Final = b"\x00" * 32


class Readiness:
    """The readiness check of one gateway.

    Args:
        store: the gateway's store.
        audit: the audit writer (``pending``, ``stats.written``, ``stats.failures``).
        timeout: seconds the store read may take before it counts as down.
        cache_seconds: how long one store result is reused.
        audit_threshold: queued audit events at which the audit no longer keeps up.
    """

    def __init__(
        self,
        store: Any,
        audit: Any,
        *,
        timeout: float = 2.0,
        cache_seconds: float = 1.0,
        audit_threshold: int = 10_000,
    ) -> None:
        self._store = store
        self._audit = audit
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._audit_threshold = audit_threshold
        self._store_ok: bool | None = None
        self._store_checked = -1e9
        self._inflight: asyncio.Future[bool] | None = None
        stats = audit.stats
        self._last_written = int(stats.written)
        self._last_failures = int(stats.failures)
        self._sink_failing = False

    async def store_ok(self) -> bool:
        """Whether the store answered, from a read at most ``cache_seconds`` old."""
        now = time.monotonic()
        if self._store_ok is not None and now - self._store_checked < self._cache_seconds:
            return self._store_ok
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._check_store())
        inflight = self._inflight
        try:
            return await asyncio.shield(inflight)
        finally:
            if inflight.done() and self._inflight is inflight:
                self._inflight = None

    async def _check_store(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._store.get_api_key_by_hash(_NO_SUCH_KEY)
            ok = True
        except Exception:
            ok = False
        self._store_ok = ok
        self._store_checked = time.monotonic()
        return ok

    def audit_reasons(self) -> list[dict[str, str]]:
        reasons = []
        pending = int(self._audit.pending)
        if getattr(self._audit, "refusing", False):
            reasons.append(
                {
                    "check": "audit",
                    "message": "the audit sink and spill are unavailable; "
                    "gateway requests are refused (fail closed)",
                }
            )
        if pending >= self._audit_threshold:
            reasons.append(
                {"check": "audit", "message": f"{pending} audit events are waiting for the sink"}
            )
        # The writer counts failed and written batches; whichever moved last
        # (as seen by the probes) says whether the sink works now.
        stats = self._audit.stats
        written, failures = int(stats.written), int(stats.failures)
        if written != self._last_written:
            self._last_written, self._sink_failing = written, False
        if failures != self._last_failures:
            self._last_failures, self._sink_failing = failures, True
        if pending and self._sink_failing:
            reasons.append({"check": "audit", "message": "the audit sink is failing"})
        return reasons

    async def check(self) -> list[dict[str, str]]:
        """The reasons this process is not ready; empty when it is."""
        reasons = []
        if not await self.store_ok():
            reasons.append({"check": "store", "message": "the store did not answer"})
        reasons.extend(self.audit_reasons())
        return reasons

    async def respond(self, send: Send) -> None:
        reasons = await self.check()
        if not reasons:
            await send_json(send, 200, {"status": "ready"})
        else:
            await send_json(
                send,
                503,
                {"status": "not_ready", "reasons": reasons},
                ((b"retry-after", b"1"),),
            )
