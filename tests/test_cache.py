"""Tests for igris_mw._cache.RefreshingCache."""

from __future__ import annotations

import asyncio

import pytest

from igris_mw._cache import RefreshingCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Source:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.loads = 0
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def load(self, key: str) -> int:
        self.loads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("down")
        return self.values[key]


async def test_hit_does_not_load_again() -> None:
    """A warm entry is served without calling the loader."""
    src = Source()
    src.values["a"] = 1
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=10, clock=Clock())
    assert await cache.get("a") == 1
    for _ in range(100):
        assert await cache.get("a") == 1
    assert src.loads == 1


async def test_invalidate_forces_reload() -> None:
    """After invalidate the next get sees the new value."""
    src = Source()
    src.values["a"] = 1
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=10, clock=Clock())
    await cache.get("a")
    src.values["a"] = 2
    cache.invalidate("a")
    assert await cache.get("a") == 2


async def test_fill_racing_an_invalidation_is_not_stored() -> None:
    """A load that started before an invalidation does not poison the cache."""
    src = Source()
    src.values["a"] = 1
    src.gate = asyncio.Event()
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=10, clock=Clock())
    pending = asyncio.create_task(cache.get("a"))
    await asyncio.sleep(0)
    src.values["a"] = 2
    cache.invalidate("a")  # a write lands while the old value is being read
    src.gate.set()
    await pending
    src.gate = None
    assert await cache.get("a") == 2
    assert len(cache) == 1


async def test_concurrent_misses_share_one_load() -> None:
    """Many requests for a cold key cause one load."""
    src = Source()
    src.values["a"] = 7
    src.gate = asyncio.Event()
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=10, clock=Clock())
    tasks = [asyncio.create_task(cache.get("a")) for _ in range(20)]
    await asyncio.sleep(0)
    src.gate.set()
    assert await asyncio.gather(*tasks) == [7] * 20
    assert src.loads == 1


async def test_expired_entry_is_served_while_refreshed_in_background() -> None:
    """Past the TTL the old value is served at once and one refresh runs."""
    src = Source()
    src.values["a"] = 1
    clock = Clock()
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=5, clock=clock)
    await cache.get("a")
    src.values["a"] = 2
    clock.now = 6
    assert await cache.get("a") == 1
    assert await cache.get("a") == 1
    await asyncio.sleep(0.01)
    assert await cache.get("a") == 2
    assert src.loads == 2


async def test_refresh_failure_keeps_serving_the_cached_value() -> None:
    """A store outage does not evict what the cache holds."""
    src = Source()
    src.values["a"] = 1
    clock = Clock()
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=5, clock=clock)
    await cache.get("a")
    src.fail = True
    clock.now = 6
    assert await cache.get("a") == 1
    await asyncio.sleep(0.01)
    assert await cache.get("a") == 1
    await cache.aclose()


async def test_revalidate_can_keep_the_old_object() -> None:
    """revalidate returning the old value keeps the same object (no rebuild)."""
    src = Source()
    src.values["a"] = 1
    clock = Clock()
    revalidations = []

    async def revalidate(key: str, old: object) -> object:
        revalidations.append(key)
        return old

    cache: RefreshingCache[str, object] = RefreshingCache(
        src.load, ttl=1, clock=clock, revalidate=revalidate
    )
    first = await cache.get("a")
    clock.now = 2
    await cache.get("a")
    await asyncio.sleep(0.01)
    assert await cache.get("a") is first
    assert revalidations == ["a"]
    assert src.loads == 1


async def test_load_errors_propagate_and_are_not_cached() -> None:
    """A failed cold load raises to the caller and the next get retries."""
    src = Source()
    src.fail = True
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=5, clock=Clock())
    with pytest.raises(ConnectionError):
        await cache.get("a")
    src.fail = False
    src.values["a"] = 3
    assert await cache.get("a") == 3


async def test_clear_drops_everything() -> None:
    """clear() forgets every entry."""
    src = Source()
    src.values.update(a=1, b=2)
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=5, clock=Clock())
    await cache.get("a")
    await cache.get("b")
    cache.clear()
    assert len(cache) == 0
    src.values["a"] = 10
    assert await cache.get("a") == 10


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_stale_entry_served_until_max_stale_then_fails_closed() -> None:
    """Store down: the entry serves until max_stale after its last good check, then 503."""
    from igris_mw._errors import StoreUnavailable

    src = Source()
    src.values["a"] = 1
    clock = Clock()
    cache: RefreshingCache[str, int] = RefreshingCache(
        src.load, ttl=1, clock=clock, max_stale=10, retry_interval=1
    )
    assert await cache.get("a") == 1
    src.fail = True
    for step in range(1, 10):
        clock.now = float(step)
        assert await cache.get("a") == 1  # stale-if-error, background refresh fails
        await _settle()
    clock.now = 10.5
    with pytest.raises(StoreUnavailable) as caught:
        await cache.get("a")
    assert caught.value.retry_after == 1
    loads = src.loads
    for _ in range(20):  # within retry_interval: refused without touching the store
        with pytest.raises(StoreUnavailable):
            await cache.get("a")
    assert src.loads == loads
    src.fail = False
    clock.now = 12.0
    assert await cache.get("a") == 1  # the store is back: recovered


async def test_successful_refresh_restarts_the_max_stale_clock() -> None:
    """A background refresh that succeeds counts as a check: no 503 while the store answers."""
    src = Source()
    src.values["a"] = 1
    clock = Clock()
    cache: RefreshingCache[str, int] = RefreshingCache(src.load, ttl=1, clock=clock, max_stale=3)
    await cache.get("a")
    for step in range(1, 30):
        clock.now = float(step)
        assert await cache.get("a") == 1
        await _settle()


async def test_negative_entries_have_their_own_budget() -> None:
    """A flood of unknown keys evicts only other negative entries, never the real ones."""
    src = Source()
    real = {f"real{i}": i for i in range(50)}
    src.values.update(real)

    async def load(key: str) -> int:
        return src.values.get(key, -1)

    cache: RefreshingCache[str, int] = RefreshingCache(
        load,
        ttl=100,
        clock=Clock(),
        max_entries=100,
        max_negative=20,
        negative=lambda v: v < 0,
    )
    for key in real:
        await cache.get(key)
    for i in range(10_000):
        assert await cache.get(f"random{i}") == -1
    assert len(cache) <= 70
    calls = 0

    async def counting(key: str) -> int:
        nonlocal calls
        calls += 1
        return await load(key)

    cache._load = counting
    for key, value in real.items():
        assert await cache.get(key) == value
    assert calls == 0
