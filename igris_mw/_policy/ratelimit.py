"""Rate limits: token buckets per API key and per connection, and the throttle
on failed authentications per client address.

A bucket holds up to ``burst`` tokens and refills at ``requestsPerMinute / 60``
tokens a second; a request takes one token or is refused with a
``retry_after`` in whole seconds (at least 1). Buckets live in this process by
default (:class:`LocalRateLimitStore`, O(1) per request, bounded LRU) or in
Redis (:class:`RedisRateLimitStore`, one atomic Lua script per request, the
Redis server's clock) so that several replicas share one bucket.

When Redis cannot be reached the store falls back to per-process buckets for a
short while and logs a warning (at most every 30 s): every replica then
enforces the limit on its own, so the total is at most one bucket per replica;
it neither fails open (no limit at all) nor fails closed (an outage of an
optional cache would take the data plane down).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import attrs

from igris_mw._errors import ConfigurationError, ValidationError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "AuthFailureThrottle",
    "Decision",
    "LocalRateLimitStore",
    "RateLimit",
    "RateLimitStore",
    "RedisRateLimitStore",
    "open_rate_limit_store",
]

log = logging.getLogger("igris_mw.ratelimit")

Clock = Callable[[], float]
_MAX_RATE = 1_000_000


@attrs.frozen
class RateLimit:
    """``{"requestsPerMinute": N, "burst": B}``; ``burst`` defaults to N."""

    requests_per_minute: int
    burst: int

    @property
    def per_second(self) -> float:
        return self.requests_per_minute / 60.0

    @classmethod
    def from_json(cls, value: object, *, field: str = "rateLimit") -> RateLimit | None:
        """Validate the API shape; ``None`` (JSON null) means no limit.

        Raises:
            ValidationError: not an object, unknown member, or a count outside
                1..1000000 (the message names the member).
        """
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValidationError(
                field, 'must be an object {"requestsPerMinute": N, "burst": B} or null'
            )
        unknown = [k for k in value if k not in ("requestsPerMinute", "burst")]
        if unknown:
            raise ValidationError(field, "accepts only requestsPerMinute and burst")
        rpm = _count(value.get("requestsPerMinute"), field, "requestsPerMinute")
        burst = None if value.get("burst") is None else _count(value["burst"], field, "burst")
        return cls(rpm, burst if burst is not None else rpm)

    def to_json(self) -> dict[str, int]:
        return {"requestsPerMinute": self.requests_per_minute, "burst": self.burst}


def _count(value: object, field: str, member: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_RATE:
        raise ValidationError(field, f"{member} must be an integer from 1 to {_MAX_RATE}")
    return value


@attrs.frozen
class Decision:
    """The outcome of one request against a bucket."""

    allowed: bool
    retry_after: int = 0  # whole seconds >= 1 when refused
    degraded: bool = False  # decided by the per-process fallback (Redis unreachable)


ALLOWED = Decision(True)


def _retry_after(missing: float, per_second: float) -> int:
    return max(1, math.ceil(missing / per_second - 1e-9))


class RateLimitStore(Protocol):
    """Where buckets live. ``key`` is the caller's (e.g. ``key:<id>``, ``conn:<id>``)."""

    async def acquire(self, key: str, limit: RateLimit) -> Decision: ...

    async def close(self) -> None: ...


class LocalRateLimitStore:
    """Per-process token buckets: a dict of ``[tokens, stamp]``, LRU-bounded.

    Dropping the least recently used bucket when full only hands that key a
    fresh bucket; with ``max_keys`` well above the number of keys and
    connections that carry a limit, it never happens in practice.
    """

    def __init__(self, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, limit: RateLimit) -> Decision:
        """The synchronous core: O(1), no I/O."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [float(limit.burst), now]
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(float(limit.burst), bucket[0] + elapsed * limit.per_second)
                bucket[1] = now
            # A limit lowered by PATCH takes effect at once.
            bucket[0] = min(bucket[0], float(limit.burst))
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return ALLOWED
        return Decision(False, _retry_after(1.0 - bucket[0], limit.per_second))

    async def acquire(self, key: str, limit: RateLimit) -> Decision:
        return self.take(key, limit)

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV: tokens per second, burst. Redis' own clock (TIME), so
# replicas with skewed clocks still share one refill rate. Numbers go back as
# strings: Redis truncates Lua numbers to integers.
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
tokens = math.min(tokens, burst)
local allowed = 0
local missing = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  missing = 1 - tokens
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(missing)}
"""


def _redacted(url: str) -> str:
    """scheme://host:port/db without user-info (a Redis password must never be logged)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:
        return "redis://<unparsable>"


class RedisRateLimitStore:
    """Token buckets shared through Redis: one EVALSHA per request, atomic.

    redis-py's ``Script`` sends EVALSHA and loads the script on NOSCRIPT (after
    a Redis restart or ``SCRIPT FLUSH``). Keys are ``<prefix><key>`` and
    expire once a bucket would be full again.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "igris:rl:",
        timeout: float = 0.5,
        retry_interval: float = 1.0,
        clock: Clock = time.monotonic,
        client: Redis | None = None,
    ) -> None:
        try:
            import redis.asyncio as redis_asyncio
        except ImportError as exc:  # pragma: no cover - redis is a dependency
            raise ConfigurationError(
                "a redis:// rate-limit store needs the redis package (pip install redis)"
            ) from exc
        self._where = _redacted(url)
        if client is None:
            try:
                client = redis_asyncio.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    retry_on_timeout=False,
                )
            except ValueError as exc:
                raise ConfigurationError(
                    f"rate-limit store {self._where} is not a valid Redis URL"
                ) from exc
        self._redis: Redis = client
        self._script: AsyncScript = client.register_script(_BUCKET_LUA)
        self._prefix = prefix
        self._clock = clock
        self._retry_interval = retry_interval
        self._fallback = LocalRateLimitStore(clock=clock)
        self._down_until = 0.0
        self._warned_at = -math.inf

    async def acquire(self, key: str, limit: RateLimit) -> Decision:
        now = self._clock()
        if now < self._down_until:
            return self._degraded(key, limit)
        try:
            raw: Any = await self._script(
                keys=[self._prefix + key], args=[repr(limit.per_second), limit.burst]
            )
        except Exception as exc:  # redis.RedisError, OSError, timeouts: one decision for all
            self._down_until = now + self._retry_interval
            if now - self._warned_at >= 30.0:
                self._warned_at = now
                log.warning(
                    "rate-limit store %s unreachable (%s); using per-process buckets "
                    "until it answers again",
                    self._where,
                    type(exc).__name__,
                )
            return self._degraded(key, limit)
        allowed, missing = int(raw[0]), float(raw[1])
        if allowed:
            return ALLOWED
        return Decision(False, _retry_after(missing, limit.per_second))

    def _degraded(self, key: str, limit: RateLimit) -> Decision:
        decision = self._fallback.take(key, limit)
        return Decision(decision.allowed, decision.retry_after, degraded=True)

    async def close(self) -> None:
        await self._redis.aclose()


def open_rate_limit_store(url: str | None, **options: Any) -> RateLimitStore:
    """The store a setting names: none -> per process; ``redis://``, ``rediss://``, ``unix://``.

    Raises:
        ConfigurationError: another scheme.
    """
    if not url:
        return LocalRateLimitStore()
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisRateLimitStore(url, **options)
    raise ConfigurationError(
        f"rate-limit store {_redacted(url)} has an unknown scheme; "
        "use redis://host:port/db (or rediss://)"
    )


class AuthFailureThrottle:
    """Failed authentications per client address: more than ``limit`` in a minute
    blocks the address until its minute is over.

    A fixed window per address, in an insertion-ordered dict capped at
    ``max_addresses``: expired windows leave from the front, and when a flood
    of distinct addresses fills it, the oldest windows go first, so memory
    stays bounded whatever arrives. IPv6 clients count per /64 (one host
    usually owns a whole /64).
    """

    def __init__(
        self,
        limit: int = 30,
        *,
        window: float = 60.0,
        max_addresses: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ConfigurationError("auth failures per minute must be at least 1")
        self.limit = limit
        self._window = window
        self._max = max_addresses
        self._clock = clock
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # [start, count]

    def __len__(self) -> int:
        return len(self._windows)

    @staticmethod
    def _bucket(address: str | None) -> str:
        if not address:
            return "-"
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return address[:64]
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
        return str(ip)

    def _expire(self, now: float) -> None:
        windows = self._windows
        while windows:
            start = next(iter(windows.values()))[0]
            if now - start < self._window:
                break
            windows.popitem(last=False)

    def retry_after(self, address: str | None) -> int:
        """Seconds until ``address`` may try again; 0 when it is not blocked."""
        entry = self._windows.get(self._bucket(address))
        if entry is None or entry[1] < self.limit:
            return 0
        left = entry[0] + self._window - self._clock()
        return max(1, math.ceil(left)) if left > 0 else 0

    def record_failure(self, address: str | None) -> None:
        """Count one failed authentication from ``address``."""
        now = self._clock()
        self._expire(now)
        key = self._bucket(address)
        entry = self._windows.get(key)
        if entry is None or now - entry[0] >= self._window:
            self._windows.pop(key, None)
            self._windows[key] = [now, 1.0]
            while len(self._windows) > self._max:
                self._windows.popitem(last=False)
        else:
            entry[1] += 1
