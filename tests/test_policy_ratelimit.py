"""Rate limits: token buckets in process and in a real Redis, and the auth-failure throttle."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as redis_asyncio
from hypothesis import given
from hypothesis import strategies as st

from igris_mw._errors import ConfigurationError, ValidationError
from igris_mw._policy.ratelimit import (
    AuthFailureThrottle,
    LocalRateLimitStore,
    RateLimit,
    RedisRateLimitStore,
    open_rate_limit_store,
)
from igris_mw.testing.redis_server import redis_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the shape


def test_rate_limit_from_json_defaults_burst_to_rpm() -> None:
    """burst is optional and defaults to requestsPerMinute; null means no limit."""
    assert RateLimit.from_json({"requestsPerMinute": 30}) == RateLimit(30, 30)
    assert RateLimit.from_json({"requestsPerMinute": 30, "burst": 5}) == RateLimit(30, 5)
    assert RateLimit.from_json(None) is None
    assert RateLimit(30, 5).to_json() == {"requestsPerMinute": 30, "burst": 5}


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"burst": 5},
        {"requestsPerMinute": 0},
        {"requestsPerMinute": -1},
        {"requestsPerMinute": 1.5},
        {"requestsPerMinute": True},
        {"requestsPerMinute": "30"},
        {"requestsPerMinute": 10**9},
        {"requestsPerMinute": 30, "burst": 0},
        {"requestsPerMinute": 30, "extra": 1},
        [30],
        "30/min",
    ],
)
def test_rate_limit_bad_shapes_are_422_on_rate_limit(value: object) -> None:
    """Every malformed rateLimit is a 422 naming the field."""
    with pytest.raises(ValidationError) as info:
        RateLimit.from_json(value)
    assert info.value.field == "rateLimit"
    assert info.value.status == 422


# --------------------------------------------------------- per-process buckets


def test_local_bucket_admits_burst_then_refuses_with_retry_after() -> None:
    """burst 5 at 30/min: five pass, the sixth waits 2 s (one token per 2 s)."""
    clock = FakeClock()
    store = LocalRateLimitStore(clock=clock)
    limit = RateLimit(30, 5)
    assert [store.take("k", limit).allowed for _ in range(5)] == [True] * 5
    refused = store.take("k", limit)
    assert not refused.allowed
    assert refused.retry_after == 2
    clock.now += 1.0
    assert store.take("k", limit).retry_after == 1
    clock.now += 1.0
    assert store.take("k", limit).allowed
    assert not store.take("k", limit).allowed
    assert store.take("other", limit).allowed  # buckets are per key


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    """A fast bucket still says Retry-After 1, never 0."""
    clock = FakeClock()
    store = LocalRateLimitStore(clock=clock)
    limit = RateLimit(6000, 1)  # 100 tokens a second
    assert store.take("k", limit).allowed
    refused = store.take("k", limit)
    assert (refused.allowed, refused.retry_after) == (False, 1)


def test_lowered_limit_takes_effect_at_once() -> None:
    """A burst lowered by PATCH caps tokens already saved up."""
    clock = FakeClock()
    store = LocalRateLimitStore(clock=clock)
    assert store.take("k", RateLimit(60, 100)).allowed
    lowered = RateLimit(60, 2)
    assert [store.take("k", lowered).allowed for _ in range(3)] == [True, True, False]


def test_local_store_memory_is_bounded() -> None:
    """More keys than max_keys: the least recently used buckets go."""
    store = LocalRateLimitStore(clock=FakeClock(), max_keys=100)
    for i in range(1000):
        store.take(f"k{i}", RateLimit(60, 1))
    assert len(store) == 100


@given(
    rpm=st.integers(1, 600),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=300),
)
def test_bucket_never_admits_more_than_burst_plus_refill(
    rpm: int, burst: int, gaps: list[float]
) -> None:
    """Over any arrival pattern, admitted <= burst + rate * elapsed; refusals name a wait >= 1."""
    clock = FakeClock()
    store = LocalRateLimitStore(clock=clock)
    limit = RateLimit(rpm, burst)
    start = clock.now
    admitted = 0
    for gap in gaps:
        clock.now += gap
        decision = store.take("k", limit)
        if decision.allowed:
            admitted += 1
        else:
            assert isinstance(decision.retry_after, int)
            assert decision.retry_after >= 1
    assert admitted <= burst + (clock.now - start) * rpm / 60 + 1e-6


@given(st.integers(1, 120), st.integers(1, 20))
def test_waiting_retry_after_is_enough(rpm: int, burst: int) -> None:
    """A client that waits exactly Retry-After seconds is admitted."""
    clock = FakeClock()
    store = LocalRateLimitStore(clock=clock)
    limit = RateLimit(rpm, burst)
    for _ in range(burst):
        assert store.take("k", limit).allowed
    refused = store.take("k", limit)
    assert not refused.allowed
    clock.now += refused.retry_after
    assert store.take("k", limit).allowed


# ------------------------------------------------------------------ real Redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "no redis-server on PATH (scripts/test installs it)"
        if os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        with redis_server(binary) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


async def test_two_redis_stores_share_one_bucket(redis_url: str) -> None:
    """Two replicas on one Redis admit no more than one bucket's worth together."""
    a = RedisRateLimitStore(redis_url, prefix="igris:test-share:")
    b = RedisRateLimitStore(redis_url, prefix="igris:test-share:")
    limit = RateLimit(30, 5)
    try:
        decisions = []
        for i in range(100):
            decisions.append(await (a if i % 2 else b).acquire("key:shared", limit))
        admitted = sum(d.allowed for d in decisions)
        assert 5 <= admitted <= 6  # 5 of burst, +1 if a 2-second refill happened
        refused = [d for d in decisions if not d.allowed]
        assert all(d.retry_after >= 1 and not d.degraded for d in refused)
    finally:
        await a.close()
        await b.close()


async def test_concurrent_redis_acquires_are_atomic(redis_url: str) -> None:
    """100 concurrent acquires across two stores admit exactly the burst (the script is atomic)."""
    a = RedisRateLimitStore(redis_url, prefix="igris:test-atomic:")
    b = RedisRateLimitStore(redis_url, prefix="igris:test-atomic:")
    limit = RateLimit(1, 20)  # refill one a minute: nothing refills during the test
    try:
        results = await asyncio.gather(
            *((a if i % 2 else b).acquire("k", limit) for i in range(100))
        )
        assert not any(d.degraded for d in results)
        assert sum(d.allowed for d in results) == 20
    finally:
        await a.close()
        await b.close()


async def test_redis_keys_are_namespaced_and_expire(redis_url: str) -> None:
    """Bucket keys carry the prefix and a TTL of about one full refill."""
    store = RedisRateLimitStore(redis_url)
    client = redis_asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        await store.acquire("conn:github", RateLimit(60, 10))
        keys = {k.decode() if isinstance(k, bytes) else str(k) for k in await client.keys("*")}
        assert "igris:rl:conn:github" in keys
        assert all(k.startswith("igris:") for k in keys)
        ttl = await client.pttl("igris:rl:conn:github")
        assert 0 < ttl <= 11_000
    finally:
        await client.delete("igris:rl:conn:github")
        await client.aclose()
        await store.close()


async def test_redis_script_reloads_after_script_flush(redis_url: str) -> None:
    """EVALSHA falls back to loading the script when Redis forgot it."""
    store = RedisRateLimitStore(redis_url, prefix="igris:test-flush:")
    client = redis_asyncio.Redis.from_url(redis_url)
    limit = RateLimit(1, 2)
    try:
        assert (await store.acquire("k", limit)).allowed
        await client.script_flush()
        second = await store.acquire("k", limit)
        assert second.allowed
        assert not second.degraded
        third = await store.acquire("k", limit)
        assert not third.allowed
        assert not third.degraded
        assert third.retry_after == 60
    finally:
        await client.aclose()
        await store.close()


async def test_redis_down_falls_back_to_process_buckets_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis unreachable: the limit still holds per process, one warning, no password logged."""
    url = f"redis://:hunter2-redis-canary@127.0.0.1:{_free_port()}/0"
    store = RedisRateLimitStore(url)
    limit = RateLimit(30, 3)
    try:
        with caplog.at_level(logging.WARNING, logger="igris_mw.ratelimit"):
            started = time.monotonic()
            decisions = [await store.acquire("k", limit) for _ in range(10)]
            elapsed = time.monotonic() - started
    finally:
        await store.close()
    assert [d.allowed for d in decisions] == [True] * 3 + [False] * 7
    assert all(d.degraded for d in decisions)
    assert elapsed < 2.0  # one failed connect, then the fallback answers without retrying
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = caplog.text
    assert "per-process" in text
    assert "hunter2-redis-canary" not in text


def test_open_rate_limit_store_by_url() -> None:
    """No URL is per process; redis:// is Redis; another scheme is a configuration error."""
    assert isinstance(open_rate_limit_store(None), LocalRateLimitStore)
    assert isinstance(open_rate_limit_store("redis://127.0.0.1:1/0"), RedisRateLimitStore)
    with pytest.raises(ConfigurationError) as info:
        open_rate_limit_store("memcached://user:s3cret-canary@host:11211")
    assert "s3cret-canary" not in info.value.message


# --------------------------------------------------------- auth-failure throttle


def test_auth_failures_block_the_address_until_the_minute_is_over() -> None:
    """30 failures pass; the address is then blocked with Retry-After until its minute ends."""
    clock = FakeClock()
    throttle = AuthFailureThrottle(30, clock=clock)
    for _ in range(30):
        assert throttle.retry_after("203.0.113.9") == 0
        throttle.record_failure("203.0.113.9")
    assert throttle.retry_after("203.0.113.9") == 60
    assert throttle.retry_after("203.0.113.10") == 0
    clock.now += 45.5
    assert throttle.retry_after("203.0.113.9") == 15
    clock.now += 14.5
    assert throttle.retry_after("203.0.113.9") == 0
    throttle.record_failure("203.0.113.9")
    assert throttle.retry_after("203.0.113.9") == 0


def test_auth_failures_from_one_ipv6_64_count_together() -> None:
    """Addresses of one IPv6 /64 share a window; IPv4-mapped counts as the IPv4 address."""
    throttle = AuthFailureThrottle(3, clock=FakeClock())
    for i in range(3):
        throttle.record_failure(f"2001:db8:1:2::{i + 1:x}")
    assert throttle.retry_after("2001:db8:1:2::ffff") > 0
    assert throttle.retry_after("2001:db8:1:3::1") == 0
    for _ in range(3):
        throttle.record_failure("::ffff:192.0.2.1")
    assert throttle.retry_after("192.0.2.1") > 0


def test_auth_failure_flood_of_distinct_addresses_stays_bounded() -> None:
    """A flood of distinct addresses cannot grow the throttle past its cap."""
    clock = FakeClock()
    throttle = AuthFailureThrottle(30, clock=clock, max_addresses=1000)
    for i in range(50_000):
        throttle.record_failure(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        clock.now += 0.0001
    assert len(throttle) == 1000
    clock.now += 61
    throttle.record_failure("198.51.100.1")
    assert len(throttle) == 1  # expired windows leave first


@given(st.lists(st.one_of(st.none(), st.text(max_size=80)), max_size=50))
def test_auth_throttle_takes_any_client_string(addresses: list[str | None]) -> None:
    """Whatever the ASGI server reports as the client (None, junk, NUL) is handled."""
    throttle = AuthFailureThrottle(2, clock=FakeClock(), max_addresses=10)
    for address in addresses:
        throttle.record_failure(address)
        assert throttle.retry_after(address) >= 0
    assert len(throttle) <= 10
