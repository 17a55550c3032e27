"""The storage layer: the ``Store`` protocol every backend implements.

A store keeps three things: connections (with their credential *envelopes*,
never a plaintext credential), gateway API keys (only their SHA-256) and the
audit trail (one hash chain per connection slug). It is chosen by URL scheme
through the ``igris_mw.stores`` entry-point group: the entry point names a
class with ``from_url(url: str) -> Store``. ``igris_mw.testing.storage_suite``
is the conformance suite a backend proves itself with; ``Capabilities``
declares what a backend cannot do.

``AuditSink`` is the audit part alone (a store, or a separate sink such as
the JSON-lines file beside a Vault store). The hash chain a store seals
events into (``seal_event``, ``seal_event_json``, ``audit_chain_hash``,
``verify_chain``) is defined in ``igris_mw._audit.chain`` and re-exported
here: store authors import it from this module.

Every method is a coroutine and must not block the event loop. Failures to
reach the backend raise ``StoreUnavailable``; everything else the contract
below names. Messages and reprs never contain a DSN password or a token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

import attrs

from ._audit.chain import (
    ANCHOR,
    AuditKey,
    ChainAnchor,
    ChainHead,
    advance_heads,
    audit_chain_hash,
    chain_name,
    check_heads,
    reseal_chain,
    seal_event,
    seal_event_json,
    verify_chain,
)
from ._errors import NotFound, SlugTaken, StoreUnavailable, VersionConflict
from ._paging import check_limit, decode_cursor, encode_cursor
from .models import ApiKey, AuditEvent, Connection, OAuthGrant, Page

__all__ = [
    "ANCHOR",
    "AuditKey",
    "AuditQuery",
    "AuditSink",
    "Capabilities",
    "ChainAnchor",
    "ChainHead",
    "Change",
    "ChangeListener",
    "NotFound",
    "SlugTaken",
    "Store",
    "StoreUnavailable",
    "VersionConflict",
    "advance_heads",
    "audit_chain_hash",
    "chain_name",
    "check_heads",
    "notify_listeners",
    "page_by_id",
    "reseal_chain",
    "seal_event",
    "seal_event_json",
    "verify_chain",
]


@attrs.frozen
class AuditQuery:
    """The filters of the whole-trail listing (``GET /api/v1/audit``); ``None``: any.

    ``slug`` is a connection's slug (events about no connection have none);
    ``since`` keeps events with ``timestamp >= since``.
    """

    slug: str | None = None
    kind: str | None = None
    action: str | None = None
    outcome: str | None = None
    user: str | None = None
    since: datetime | None = None

    def matches(self, event: AuditEvent) -> bool:
        """For stores that filter in Python (the memory store, the JSON-lines sink)."""
        return (
            (self.slug is None or event.connection == self.slug)
            and (self.kind is None or event.kind == self.kind)
            and (self.action is None or event.action == self.action)
            and (self.outcome is None or event.outcome == self.outcome)
            and (self.user is None or event.user == self.user)
            and (self.since is None or event.timestamp >= self.since)
        )


def page_by_id(
    events: Iterable[AuditEvent], prefix: bytes, *, limit: int, cursor: str | None
) -> Page[AuditEvent]:
    """``list_all_audit_events`` over events held in memory: newest (highest
    ``id``) first, after ``cursor`` (the last id of the previous page)."""
    check_limit(limit)
    before = None if cursor is None else decode_cursor(prefix, cursor)
    chosen = sorted(
        (e for e in events if before is None or e.id < before), key=lambda e: e.id, reverse=True
    )
    items = chosen[:limit]
    more = len(chosen) > limit
    return Page(items, encode_cursor(prefix, items[-1].id) if more else None)


@attrs.frozen
class Capabilities:
    """What a backend can do; the conformance suite skips what it cannot.

    ``shared``: several gateway processes may use the store at once.
    ``notifies_remote``: writes by another process reach ``add_listener``
    callbacks (e.g. Postgres LISTEN/NOTIFY). ``audit``: the store keeps the
    audit trail itself (a Vault store hands it to a separate sink).
    """

    shared: bool = False
    notifies_remote: bool = False
    audit: bool = True


@attrs.frozen
class Change:
    """A write that caches must learn of.

    ``kind`` says what changed; ``key`` is the slug for a connection and the
    key id for an API key (``None``: "anything may have changed", e.g.
    after a notification channel reconnects).
    """

    kind: Literal["connection", "api_key", "all"]
    key: str | None = None


ChangeListener = Callable[[Change], None]

_log = logging.getLogger("igris_mw.storage")


def notify_listeners(listeners: Sequence[ChangeListener], change: Change) -> None:
    """Call each listener with ``change``, for store authors, after a commit.

    The write is committed already: a failing cache hook is logged and must
    not turn it into an error.
    """
    for listener in list(listeners):
        try:
            listener(change)
        except Exception:
            _log.exception("a store change listener failed")


@runtime_checkable
class Store(Protocol):
    """The storage contract. ``igris_mw.testing.storage_suite`` checks it.

    Lifecycle: ``await open()`` connects and migrates the schema to the
    current version (recorded in a version table; a database at a *newer*
    version than the code knows raises ``ConfigurationError``); ``await
    close()`` releases everything and is idempotent.

    Both or neither: the writes to connections and keys take
    ``audit_events``, the management events of that change. A store that
    keeps the audit trail (``capabilities.audit``) appends them, sealed as
    ``append_audit_events`` does, in the write's own transaction, so the
    change and its events are stored both or neither. A store that keeps no
    audit ignores them (the caller has written them to its separate sink
    first; see ``Service``).

    Times come back as aware UTC datetimes with at least millisecond
    precision (the contract's RFC 3339 precision; the SQLite store keeps
    exactly milliseconds). ``limit`` below 1 raises ``ValidationError``.
    """

    capabilities: Capabilities

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # -- connections -----------------------------------------------------
    async def create_connection(
        self, connection: Connection, *, audit_events: Sequence[AuditEvent] = ()
    ) -> Connection:
        """Insert; returns the stored record (``version == 1``).

        Raises:
            SlugTaken: the slug is in use. Nothing is written.
        """
        ...

    async def get_connection(self, slug: str) -> Connection:
        """Raises ``NotFound`` for an unknown slug."""
        ...

    async def list_connections(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Connection]:
        """Connections ordered by slug; ``cursor`` is the opaque ``next_cursor``
        of the previous page. Raises ``ValidationError`` (field ``cursor``)
        for a cursor it did not make."""
        ...

    async def update_connection(
        self,
        connection: Connection,
        *,
        expected_version: int,
        audit_events: Sequence[AuditEvent] = (),
    ) -> Connection:
        """Replace every mutable field of the record ``connection.slug``
        (name, upstream_url, auth_type, header_name, enabled,
        credential_version, ciphertext, updated_at, rotated_at, rate_limit,
        tools) in one atomic
        write, only if its stored ``version`` is still ``expected_version``;
        the stored version becomes ``expected_version + 1`` and
        ``created_at`` is kept.

        Rotation is such an update with ``credential_version + 1`` and a new
        ciphertext, so a rotate can never interleave with another write.

        Raises:
            NotFound: no such slug.
            VersionConflict: another writer got there first. Nothing is written.
        """
        ...

    async def delete_connection(
        self, slug: str, *, audit_events: Sequence[AuditEvent] = ()
    ) -> None:
        """Raises ``NotFound`` for an unknown slug. The audit trail stays; the
        connection's OAuth grants go with it."""
        ...

    # -- OAuth grants and per-user credentials ---------------------------
    # A grant row holds sealed OAuth tokens, or (``status == "static"``) the
    # sealed static credential of one end user of a per-user connection.
    async def get_oauth_grant(self, slug: str, user: str = "") -> OAuthGrant | None:
        """The grant of ``(slug, user)``, or ``None``."""
        ...

    async def list_oauth_grants(self, slug: str) -> list[OAuthGrant]:
        """Every grant of ``slug`` (the connection's own and per user), ordered by user."""
        ...

    async def put_oauth_grant(self, grant: OAuthGrant, *, expected_version: int) -> bool:
        """Write ``grant`` (every field) only if the stored version of
        ``(grant.slug, grant.user)`` is ``expected_version`` (``0``: no row
        yet); the stored version becomes ``expected_version + 1``. Atomic
        with respect to every other writer, in this process or another: of
        two writers with the same ``expected_version`` exactly one wins.
        Returns whether it was written. The connection need not exist."""
        ...

    async def delete_oauth_grants(self, slug: str, user: str | None = None) -> None:
        """Forget ``slug``'s grant of ``user`` (every grant of ``slug`` when None)."""
        ...

    # -- gateway API keys ------------------------------------------------
    async def create_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        """Insert; ``id`` and ``key_hash`` are unique (``Conflict`` otherwise)."""
        ...

    async def get_api_key_by_hash(self, key_hash: bytes) -> ApiKey | None:
        """The key whose SHA-256 is ``key_hash``, revoked or not; ``None`` if unknown."""
        ...

    async def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    async def revoke_api_key(
        self, key_id: str, *, at: datetime, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        """Set ``revoked_at`` (kept if already set). Raises ``NotFound``."""
        ...

    async def update_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        """Replace the mutable fields of the key ``key.id`` (name, connections,
        expires_at, rate_limit, tools, max_concurrent) in one write; ``key_hash``,
        ``scopes``, ``created_at`` and ``revoked_at`` are kept. Returns the stored
        record. Raises ``NotFound``."""
        ...

    # -- audit -----------------------------------------------------------
    async def use_audit_key(self, key: AuditKey | None) -> None:
        """Seal events (and heads) with ``key`` from now on (``None``:
        unkeyed SHA-256). A trail stored before chains were keyed (marked by
        the store's schema migration) is re-sealed under ``key`` here, once:
        each chain that verifies as it stands, same ids, order and seqs."""
        ...

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        """Every chain's signed head (chain -> head; ``None`` is the global
        chain) and the anchor over them, as ``append_audit_events`` left them."""
        ...

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        """Append a batch atomically, chaining each event onto its chain
        (its connection's; ``connection=None``: the global chain) with
        ``seal_event`` under the key given to ``use_audit_key`` (``seq`` =
        previous + 1, ``prev_hash`` = previous ``hash``), and, in the same
        transaction, the touched chains' heads and the anchor
        (``advance_heads``). Events are chained in the order
        given. Safe with several writers at once on a ``shared`` store: no
        two events of one connection get the same ``seq``. Re-appending an
        event whose ``id`` is stored already is a no-op (so a writer may
        retry a batch whose outcome it did not learn)."""
        ...

    async def list_audit_events(
        self,
        connection: str | None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]:
        """One connection's sealed events, newest (highest ``seq``) first;
        ``since`` keeps events with ``timestamp >= since``. ``connection``
        ``None`` is the global chain."""
        ...

    async def list_all_audit_events(
        self, query: AuditQuery, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        """Every chain's events that match ``query``, newest first by event
        ``id`` (ids are time-ordered), the global chain's included. Raises
        ``ValidationError`` (field ``cursor``) for a cursor it did not make."""
        ...

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        """Sealed events with ``seq > after_seq``, oldest first (for
        ``audit verify`` and ``audit --follow``); ``None``: the global chain."""
        ...

    async def audit_connections(self) -> list[str]:
        """Every slug that has audit events, sorted (the global chain is not a slug)."""
        ...

    # -- change notification ---------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        """Call ``listener`` after every committed write to a connection or
        an API key made through this store object, and, when
        ``capabilities.notifies_remote``, for writes by other processes.
        Listeners run on the event loop and must not block; one that raises
        is logged and neither fails the write nor stops the others."""
        ...


class AuditSink(Protocol):
    """Where audit events go: the store itself, or a separate sink (the
    JSON-lines file beside a Vault store). The methods mean what the
    ``Store`` methods of the same names mean."""

    async def use_audit_key(self, key: AuditKey | None) -> None: ...

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]: ...

    async def list_all_audit_events(
        self, query: AuditQuery, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]: ...

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None: ...

    async def list_audit_events(
        self,
        connection: str | None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]: ...

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]: ...

    async def audit_connections(self) -> list[str]: ...
