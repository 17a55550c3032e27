"""The open-work registry: which gateway requests and streams are open under
each API key and each connection, so that revoking either ends them.

Each proxied request holds a ``Ticket`` from ``OpenWork.open`` while it is
forwarded; ``close`` (in a ``finally``) gives it back. ``end_key`` and
``end_connection`` revoke every ticket of a key or a connection: the
request's task is cancelled the way ``asyncio.timeout`` does it (``cancel``,
then the gateway ``uncancel``s it once it has seen ``ticket.revoked``), which
closes the upstream request and lets the gateway end the client's response.

The registry does not decide *whether* a change revokes: the resolver
re-reads the key or connection behind a change notice and calls ``end_*``
(see ``Resolver.recheck``). A key's expiry needs no notice: a timer per key
with open work ends it at ``expires_at``.

Cost per request: one small object, a set insertion and removal, and a
counter step (about half a microsecond).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime

from .models import utcnow

__all__ = ["OpenWork", "Ticket"]

log = logging.getLogger("igris_mw.gateway")


class Ticket:
    """One open request or stream: its task, key id and connection."""

    __slots__ = ("conn_created", "key_id", "revoked", "slug", "task")

    def __init__(
        self, task: asyncio.Task[object] | None, key_id: str, slug: str, conn_created: datetime
    ) -> None:
        self.task = task
        self.key_id = key_id
        self.slug = slug
        # The connection's identity: a connection deleted and created again
        # under the same slug is another connection (its created_at differs).
        self.conn_created = conn_created
        self.revoked = False

    def revoke(self) -> None:
        """End this request: cancel its task once (a no-op if already revoked)."""
        if self.revoked:
            return
        self.revoked = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


class OpenWork:
    """The open tickets of one process, and a count per key (for ``maxConcurrent``).

    Tickets sit in one set: opening and closing one is a set insertion and a
    counter step. Finding a key's or a connection's tickets scans the set,
    which only revocations and rechecks do (rare next to requests).
    """

    def __init__(self) -> None:
        self._open: set[Ticket] = set()
        self._per_key: dict[str, int] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __bool__(self) -> bool:
        return bool(self._open)

    def count_for_key(self, key_id: str) -> int:
        return self._per_key.get(key_id, 0)

    def has_key(self, key_id: str) -> bool:
        return key_id in self._per_key

    def has_slug(self, slug: str) -> bool:
        return any(t.slug == slug for t in self._open)

    def key_ids(self) -> set[str]:
        return set(self._per_key)

    def slugs(self, key_id: str | None = None) -> set[str]:
        """The connections with open work (of ``key_id`` only, when given)."""
        return {t.slug for t in self._open if key_id is None or t.key_id == key_id}

    def open(
        self, key_id: str, slug: str, conn_created: datetime, expires_at: datetime | None
    ) -> Ticket:
        """Register the current task's request under ``key_id`` and ``slug``."""
        ticket = Ticket(asyncio.current_task(), key_id, slug, conn_created)
        self._open.add(ticket)
        count = self._per_key.get(key_id, 0)
        self._per_key[key_id] = count + 1
        if count == 0 and expires_at is not None:
            self._arm_expiry(key_id, expires_at)
        return ticket

    def close(self, ticket: Ticket) -> None:
        """Forget ``ticket`` (its request is over)."""
        if ticket not in self._open:
            return
        self._open.discard(ticket)
        key_id = ticket.key_id
        count = self._per_key[key_id] - 1
        if count:
            self._per_key[key_id] = count
        else:
            del self._per_key[key_id]
            if self._expiry:
                timer = self._expiry.pop(key_id, None)
                if timer is not None:
                    timer.cancel()

    def end_key(self, key_id: str, slugs: Iterable[str] | None = None) -> int:
        """Revoke the key's open work (only on ``slugs`` when given); how many ended."""
        allowed = None if slugs is None else set(slugs)
        ended = 0
        for ticket in list(self._open):
            if ticket.key_id == key_id and (allowed is None or ticket.slug in allowed):
                ticket.revoke()
                ended += 1
        return ended

    def end_connection(self, slug: str, *, keep_created: datetime | None = None) -> int:
        """Revoke the open work on ``slug``, except tickets of the connection
        created at ``keep_created`` (the one that still exists); how many ended."""
        ended = 0
        for ticket in list(self._open):
            if ticket.slug == slug and (
                keep_created is None or ticket.conn_created != keep_created
            ):
                ticket.revoke()
                ended += 1
        return ended

    def end_all(self) -> None:
        """Revoke everything (shutdown)."""
        for ticket in list(self._open):
            ticket.revoke()

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> None:
        """The key's expiry changed: re-arm its timer (only while it has open work)."""
        timer = self._expiry.pop(key_id, None)
        if timer is not None:
            timer.cancel()
        if expires_at is not None and key_id in self._per_key:
            self._arm_expiry(key_id, expires_at)

    def _arm_expiry(self, key_id: str, expires_at: datetime) -> None:
        delay = (expires_at - utcnow()).total_seconds()
        loop = asyncio.get_running_loop()
        self._expiry[key_id] = loop.call_later(max(0.0, delay), self._expired, key_id)

    def _expired(self, key_id: str) -> None:
        self._expiry.pop(key_id, None)
        ended = self.end_key(key_id)
        if ended:
            log.info("API key %s expired: ended %d open request(s)", key_id, ended)
