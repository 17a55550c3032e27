"""In-process caches for the gateway's hot path, and their invalidation.

Once warm, a proxied request reads nothing from the store and unwraps no
key: the gateway key record and the connection (with its decrypted,
ready-to-send credential headers) come from here.

Freshness, in order of speed:

1. every write made through this process's store object invalidates the
   entry before the write's caller returns (so before the API's 200);
2. a store with ``capabilities.notifies_remote`` (Postgres LISTEN/NOTIFY)
   invalidates writes made by other replicas as soon as the notice lands;
3. the backstop: an entry older than ``ttl`` is revalidated in the
   background (stale-while-revalidate), so a missed notice, or a write by a
   process with no notification channel (the CLI on a shared SQLite file),
   is honoured at most ``ttl`` plus one store round trip later.

A fill that started before an invalidation is never stored: each entry
carries the generation it was read at, and an invalidation bumps it.

Stale-if-error has an end: an entry is served while the store cannot be
reached for at most ``max_stale`` seconds after its last successful check;
past that, ``get`` must load it again and raises what the load raises (the
store's ``StoreUnavailable``: fail closed). After such a failure the key is
not tried again for ``retry_interval`` seconds, so an outage costs one store
attempt per key per interval, not one per request.

Negative entries (``negative(value)`` true: an unknown key or slug) have
their own budget, ``max_negative``: a flood of random keys evicts only other
negative entries, never the real ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import attrs

from ._errors import StoreUnavailable

__all__ = ["RefreshingCache"]

log = logging.getLogger("igris_mw.cache")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@attrs.define
class _Entry(Generic[V]):
    value: V
    fetched_at: float  # last check attempt (the TTL clock)
    checked_at: float  # last successful check (the max-stale clock)
    refreshing: bool = False
    failed_until: float = 0.0  # no synchronous reload before this, after a failed one


def _past_max_stale() -> StoreUnavailable:
    return StoreUnavailable(
        "the store cannot be reached and the cached entry is past its max-stale bound",
        retry_after=1,
    )


class RefreshingCache(Generic[K, V]):
    """A map filled by ``load(key)``; entries older than ``ttl`` are served
    while one background task reloads them. ``load`` may return a "missing"
    sentinel value: negative results are cached too (invalidated the same way).

    ``revalidate(key, old)`` may return ``old`` itself when nothing changed,
    which is how a connection avoids a second key unwrap.
    """

    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        *,
        ttl: float,
        revalidate: Callable[[K, V], Awaitable[V]] | None = None,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        max_stale: float = 60.0,
        negative: Callable[[V], bool] | None = None,
        max_negative: int = 10_000,
        retry_interval: float = 1.0,
    ) -> None:
        if max_stale <= 0:
            raise ValueError("max_stale must be positive")
        self._max_stale = max_stale
        self._is_negative = negative
        self._max_negative = max_negative
        self._negatives: dict[K, None] = {}  # insertion-ordered: oldest first
        self._retry_interval = retry_interval
        self._load = load
        self._revalidate = revalidate
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._generation: dict[K, int] = {}
        self._global_generation = 0
        self._inflight: dict[K, asyncio.Future[V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def _gen(self, key: K) -> tuple[int, int]:
        return (self._global_generation, self._generation.get(key, 0))

    def invalidate(self, key: K) -> None:
        self._entries.pop(key, None)
        self._negatives.pop(key, None)
        self._generation[key] = self._generation.get(key, 0) + 1
        if len(self._generation) > self._max:
            self._generation.clear()
            self._global_generation += 1

    def clear(self) -> None:
        self._entries.clear()
        self._negatives.clear()
        self._generation.clear()
        self._global_generation += 1

    async def get(self, key: K) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            now = self._clock()
            if now - entry.fetched_at > self._ttl:
                if now - entry.checked_at > self._max_stale:
                    return await self._reload_stale(key, entry, now)
                if not entry.refreshing:
                    self._refresh_in_background(key, entry)
            return entry.value
        return await self._fill(key)

    async def _reload_stale(self, key: K, entry: _Entry[V], now: float) -> V:
        """An entry past ``max_stale``: load it now or fail (closed), never serve it."""
        if now < entry.failed_until:
            raise _past_max_stale()
        try:
            return await self._fill(key)
        except Exception as exc:
            entry.failed_until = self._clock() + self._retry_interval
            raise _past_max_stale() from exc

    async def _fill(self, key: K) -> V:
        # Concurrent misses for one key share one load.
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        started = self._gen(key)
        try:
            value = await self._load(key)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(value)
        self._store(key, value, started)
        return value

    def _store(self, key: K, value: V, started: tuple[int, int]) -> None:
        if self._gen(key) != started:
            return  # invalidated while loading: the value may be stale
        if self._is_negative is not None and self._is_negative(value):
            self._negatives.pop(key, None)
            if len(self._negatives) >= self._max_negative:
                oldest = next(iter(self._negatives))
                del self._negatives[oldest]
                self._entries.pop(oldest, None)
            self._negatives[key] = None
        else:
            self._negatives.pop(key, None)
        if len(self._entries) >= self._max and key not in self._entries:
            evicted = next(iter(self._entries))
            self._entries.pop(evicted)
            self._negatives.pop(evicted, None)
        now = self._clock()
        self._entries[key] = _Entry(value, now, now)

    def _refresh_in_background(self, key: K, entry: _Entry[V]) -> None:
        entry.refreshing = True
        started = self._gen(key)

        async def refresh() -> None:
            try:
                if self._revalidate is not None:
                    value = await self._revalidate(key, entry.value)
                else:
                    value = await self._load(key)
            except Exception as exc:
                # Keep serving what we have (e.g. the store is down); try again next TTL.
                log.warning("cache refresh failed for an entry: %s", type(exc).__name__)
                entry.fetched_at = self._clock()
                entry.refreshing = False
                return
            if self._entries.get(key) is entry:
                self._store(key, value, started)
            entry.refreshing = False

        task = asyncio.get_running_loop().create_task(refresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
