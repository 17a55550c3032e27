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

Cost per request: one small object and two set insertions and removals.
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
    """Open tickets by key id and by connection slug (one process)."""

    def __init__(self) -> None:
        self.by_key: dict[str, set[Ticket]] = {}
        self.by_slug: dict[str, set[Ticket]] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return sum(len(t) for t in self.by_key.values())

    def count_for_key(self, key_id: str) -> int:
        tickets = self.by_key.get(key_id)
        return 0 if tickets is None else len(tickets)

    def open(
        self, key_id: str, slug: str, conn_created: datetime, expires_at: datetime | None
    ) -> Ticket:
        """Register the current task's request under ``key_id`` and ``slug``."""
        ticket = Ticket(asyncio.current_task(), key_id, slug, conn_created)
        keyed = self.by_key.get(key_id)
        if keyed is None:
            keyed = self.by_key[key_id] = set()
            if expires_at is not None:
                self._arm_expiry(key_id, expires_at)
        keyed.add(ticket)
        self.by_slug.setdefault(slug, set()).add(ticket)
        return ticket

    def close(self, ticket: Ticket) -> None:
        """Forget ``ticket`` (its request is over)."""
        keyed = self.by_key.get(ticket.key_id)
        if keyed is not None:
            keyed.discard(ticket)
            if not keyed:
                del self.by_key[ticket.key_id]
                timer = self._expiry.pop(ticket.key_id, None)
                if timer is not None:
                    timer.cancel()
        slugged = self.by_slug.get(ticket.slug)
        if slugged is not None:
            slugged.discard(ticket)
            if not slugged:
                del self.by_slug[ticket.slug]

    def end_key(self, key_id: str, slugs: Iterable[str] | None = None) -> int:
        """Revoke the key's open work (only on ``slugs`` when given); how many ended."""
        allowed = None if slugs is None else set(slugs)
        ended = 0
        for ticket in list(self.by_key.get(key_id, ())):
            if allowed is None or ticket.slug in allowed:
                ticket.revoke()
                ended += 1
        return ended

    def end_connection(self, slug: str, *, keep_created: datetime | None = None) -> int:
        """Revoke the open work on ``slug``, except tickets of the connection
        created at ``keep_created`` (the one that still exists); how many ended."""
        ended = 0
        for ticket in list(self.by_slug.get(slug, ())):
            if keep_created is None or ticket.conn_created != keep_created:
                ticket.revoke()
                ended += 1
        return ended

    def end_all(self) -> None:
        """Revoke everything (shutdown)."""
        for tickets in list(self.by_key.values()):
            for ticket in list(tickets):
                ticket.revoke()

    def set_expiry(self, key_id: str, expires_at: datetime | None) -> None:
        """The key's expiry changed: re-arm its timer (only while it has open work)."""
        timer = self._expiry.pop(key_id, None)
        if timer is not None:
            timer.cancel()
        if expires_at is not None and key_id in self.by_key:
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
