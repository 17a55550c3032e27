"""The audit side of the management ``Service``: both-or-neither writes,
the audit key, ``verify``, the whole-trail listing and ``changes``.

``AuditOps`` is a base of ``Service`` (kept apart so ``_service`` stays the
connection and key operations); it uses the service's ``store``,
``crypto``, ``audit`` (the sink) and ``clock``. ``docs/audit.md`` is the
user's view of all of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs

from ._audit.chain import ANCHOR, check_heads
from ._audit.events import new_event_id
from ._errors import (
    ConfigurationError,
    NotFound,
    ServiceUnavailable,
    UnknownKeyId,
    ValidationError,
)
from ._validation import parse_cursor, parse_limit, parse_since
from .crypto import CryptoProvider
from .models import AuditEvent, Page, validate_slug
from .storage import AuditKey, AuditQuery, AuditSink, Store, verify_chain

__all__ = ["CHANGE_FIELDS", "AuditOps", "diff_changes"]

T = TypeVar("T")
_log = logging.getLogger("igris_mw.service")


class AuditOps:
    """Audit operations of the ``Service`` (see the module docstring)."""

    store: Store
    crypto: CryptoProvider
    audit: AuditSink
    clock: Callable[[], datetime]
    _audit_key: AuditKey | None
    _audit_key_set: bool

    async def _audited(
        self, write: Callable[[Sequence[AuditEvent]], Awaitable[T]], events: list[AuditEvent]
    ) -> T:
        """Store a management change and its audit events: both or neither.

        Where the store is the audit sink, ``write(events)`` stores them in
        the change's own transaction. Where the sink is separate (a Vault
        store with a JSON-lines sink), the events are stored first, durably;
        a sink that cannot take them fails the call with 503
        ``audit_unavailable`` before anything is changed. A change that then
        fails is followed in the trail by the same events with outcome
        ``aborted`` (``metadata.aborts``: the first event's id), so the
        trail never shows a change as made that was not.
        """
        await self.use_audit_key()
        if self.audit is self.store and self.store.capabilities.audit:
            return await write(events)
        try:
            # A store that keeps no audit and was given no sink refuses here.
            await self.audit.append_audit_events(events)
        except ConfigurationError:
            raise
        except Exception as exc:
            raise ServiceUnavailable(
                "the audit sink cannot record this change, so nothing was changed; "
                "try again when it is back",
                code="audit_unavailable",
                retry_after=5,
            ) from exc
        try:
            return await write(())
        except BaseException:
            await self._abort(events)
            raise

    async def _abort(self, events: Sequence[AuditEvent]) -> None:
        aborted = [
            attrs.evolve(
                e,
                id=new_event_id(),
                timestamp=self.clock(),
                outcome="aborted",
                metadata={**(e.metadata or {}), "aborts": e.id},
            )
            for e in events
        ]
        try:
            await self.audit.append_audit_events(aborted)
        except Exception:
            _log.exception("the audit sink took a change's event but not its abort marker")

    async def record_event(self, event: AuditEvent) -> None:
        """Store one management event (sealed under the audit key), now.

        Also for events about no connection (``connection=None``: API keys,
        dashboard sign-in and sign-out), which form the global chain.
        """
        await self.use_audit_key()
        await self.audit.append_audit_events([event])

    async def list_all_audit(
        self,
        *,
        slug: Any = None,
        kind: Any = None,
        action: Any = None,
        outcome: Any = None,
        user: Any = None,
        since: Any = None,
        limit: Any = 50,
        cursor: Any = None,
    ) -> Page[AuditEvent]:
        """Every event, every chain (the global one too), newest first.

        Raises:
            ValidationError: a filter that cannot match anything the gateway
                records (the field is named), ``limit`` outside 1-200, a bad
                ``since`` or ``cursor``.
        """
        query = AuditQuery(
            slug=None if slug in (None, "") else validate_slug(slug),
            kind=_token(kind, "kind"),
            action=_token(action, "action"),
            outcome=_token(outcome, "outcome"),
            user=_user_filter(user),
            since=parse_since(since),
        )
        return await self.audit.list_all_audit_events(
            query, limit=parse_limit(limit), cursor=parse_cursor(cursor)
        )

    async def use_audit_key(self) -> AuditKey | None:
        """Give the audit sink the crypto provider's audit key (once): events
        are sealed under it from then on, and a trail from before keyed
        chains is re-sealed. ``None`` for a provider without ``audit_key``."""
        if self._audit_key_set:
            return self._audit_key
        getter = getattr(self.crypto, "audit_key", None)
        key: AuditKey | None = await getter() if getter is not None else None
        user = getattr(self.audit, "use_audit_key", None)
        if user is not None:
            await user(key)
        self._audit_key, self._audit_key_set = key, True
        return key

    async def _audit_keys(self, events: Iterable[Any], keys: dict[str, AuditKey]) -> None:
        getter = getattr(self.crypto, "audit_key", None)
        if getter is None:
            return
        for key_id in {e.key_id for e in events if e.key_id is not None} - set(keys):
            # A key that is not configured: verify_chain names it.
            with contextlib.suppress(UnknownKeyId):
                keys[key_id] = await getter(key_id)

    async def verify_audit(self, slug: str | None = None) -> dict[str, list[str]]:
        """chain -> problems (empty list: intact), for one slug or all.

        Chains are named by slug; the global chain (events about no
        connection) is ``(global)``; problems about no chain in particular
        (chains removed whole with their heads) are under ``(heads)``. Each
        event's HMAC is checked under its key (``keyId``), each chain's end
        against its signed head, and the heads against their anchor.

        Raises:
            NotFound: ``slug`` is given and has neither events nor a head.
        """
        key = await self.use_audit_key()
        keys: dict[str, AuditKey] = {}
        if key is not None:
            keys[key.key_id] = key
        check_keys = keys if key is not None else None
        heads_of = getattr(self.audit, "audit_heads", None)
        names: list[str | None] = list(await self.audit.audit_connections())
        if slug is not None:
            if slug not in names:
                found, _ = await heads_of() if heads_of is not None else ({}, None)
                if slug not in found:
                    raise NotFound(f"no audit trail for connection {slug!r}")
            names = [slug]
        else:
            names = [None, *names]
        problems: dict[str | None, list[str]] = {}
        last: dict[str | None, AuditEvent | None] = {}

        async def walk(name: str | None) -> None:
            """Verify the chain from where the last walk of it stopped."""
            previous = last.get(name)
            while True:
                after = previous.seq if previous is not None else 0
                batch = await self.audit.audit_chain(name, after_seq=after, limit=1000)
                if not batch:
                    break
                await self._audit_keys(batch, keys)
                problems.setdefault(name, []).extend(verify_chain(batch, previous, check_keys))
                previous = max(batch, key=lambda e: e.seq)
            if previous is not None:
                last[name] = previous

        for name in names:
            await walk(name)
        # Heads are read after the events: a batch written meanwhile moved a
        # head past what was walked, so the walk goes on to it (never a
        # false "events after the head" or "last events removed").
        heads, anchor = await heads_of() if heads_of is not None else ({}, None)
        for chain, head in heads.items():
            if slug is not None and chain != slug:
                continue
            seen = last.get(chain)
            if (seen.seq if seen is not None else 0) < head.seq:
                await walk(chain)
        await self._audit_keys([*heads.values(), *([anchor] if anchor is not None else [])], keys)
        report: dict[str, list[str]] = {}
        removed = [c for c in heads if c not in names] if slug is None else []
        for name in [*names, *removed]:
            if name is not None or name in last or name in heads:
                report[_chain_label(name)] = problems.get(name, [])
        ends = check_heads(
            last,
            heads if slug is None else {k: v for k, v in heads.items() if k == slug},
            anchor if slug is None else None,
            check_keys,
        )
        if slug is not None:
            # One chain asked for: the anchor covers every chain, not this one's question.
            ends.pop(ANCHOR, None)
        for chain, found in ends.items():
            label = "(heads)" if chain == ANCHOR else _chain_label(chain)
            report.setdefault(label, []).extend(found)
        return report


# The fields a management event's ``changes`` may name (contract JSON names).
CHANGE_FIELDS = (
    "name", "upstreamUrl", "authType", "headerName", "enabled", "rateLimit", "tools",
    "scopes", "connections", "expiresAt", "credentialVersion", "maxConcurrent",
    "caCertificate", "clientCertificate",
)  # fmt: skip
# Certificates are public but long (a CA bundle): recorded by SHA-256 fingerprint.
_FINGERPRINTED = frozenset({"caCertificate", "clientCertificate"})


def _recorded(field: str, value: Any) -> Any:
    if field in _FINGERPRINTED and isinstance(value, str):
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return value


def diff_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], fields: Sequence[str] = CHANGE_FIELDS
) -> dict[str, Any]:
    """``{field: {"from", "to"}}`` for every contract field that differs.

    Works on the records' contract JSON, which never holds a credential:
    a rotation shows only as ``credentialVersion``.
    """
    return {
        f: {"from": _recorded(f, old.get(f)), "to": _recorded(f, new.get(f))}
        for f in fields
        if (f in old or f in new) and old.get(f) != new.get(f)
    }


_TOKEN_RE = re.compile(r"[a-z][a-z0-9_./-]{0,63}\Z")


def _token(value: Any, field: str) -> str | None:
    """A kind, action or outcome filter: a lowercase token, as the gateway writes them."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _TOKEN_RE.match(value):
        raise ValidationError(field, "must be a lowercase word such as 'ok' or 'management'")
    return value


def _user_filter(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise ValidationError("user", "must be text of at most 256 characters")
    return value


def _chain_label(chain: str | None) -> str:
    return "(global)" if chain is None else chain
