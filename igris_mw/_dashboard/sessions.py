"""Dashboard sessions and the failed-sign-in throttle, in process memory.

A session maps a random id (the cookie) to the id of the admin key that
signed in; the key itself is never kept or sent back. Sessions expire after
``idle`` seconds without a request and ``lifetime`` seconds in all; both
tables are bounded so that a flood of sign-ins cannot grow them without end.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import attrs

__all__ = ["Session", "SessionStore", "SignInThrottle"]


@attrs.define(kw_only=True)
class Session:
    """One signed-in browser. ``flash_key`` holds a new API key until shown once."""

    id: str = attrs.field(repr=False)
    key_id: str
    csrf: str = attrs.field(repr=False)
    created: float
    seen: float
    flash_key: str | None = attrs.field(default=None, repr=False)
    flash_key_id: str | None = None
    notice: str | None = None

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionStore:
    """Sessions by id, oldest first, with idle and absolute expiry."""

    def __init__(
        self,
        *,
        idle: float = 30 * 60,
        lifetime: float = 12 * 3600,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, key_id: str) -> Session:
        now = self._clock()
        self._expire(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session = Session(
            id=secrets.token_urlsafe(32),
            key_id=key_id,
            csrf=secrets.token_urlsafe(32),
            created=now,
            seen=now,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for a cookie value (its idle clock restarts), else None."""
        if not session_id:
            return None
        now = self._clock()
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if now - session.seen > self.idle or now - session.created > self.lifetime:
            del self._sessions[session_id]
            return None
        session.seen = now
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def drop_key(self, key_id: str) -> None:
        """End every session of a key (it was revoked)."""
        for sid in [s.id for s in self._sessions.values() if s.key_id == key_id]:
            del self._sessions[sid]

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        for sid, session in list(self._sessions.items()):
            if now - session.created > self.lifetime or now - session.seen > self.idle:
                del self._sessions[sid]


class SignInThrottle:
    """At most ``limit`` failed sign-ins per client address in a sliding minute."""

    def __init__(
        self,
        limit: int = 5,
        *,
        window: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int:
        """Seconds until ``address`` may try again; 0 when it may now."""
        now = self._clock()
        times = self._failures.get(address)
        if times is None:
            return 0
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[address]
            return 0
        if len(times) < self.limit:
            return 0
        return max(1, int(self.window - (now - times[0]) + 0.999))

    def fail(self, address: str) -> None:
        times = self._failures.get(address)
        if times is None:
            while len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
            times = self._failures[address] = deque()
        else:
            self._failures.move_to_end(address)
        times.append(self._clock())
