"""Operations shared by the management API and the CLI.

Validation of user input (contract JSON, camelCase field names) happens
here, before anything is written: a bad request never changes stored state.
Every change to a connection records a management audit event.

SKELETON: signatures are the agreed interface; bodies are being written.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from .crypto import CryptoProvider
from .models import ApiKey, AuditEvent, Connection, Page, Secret, utcnow
from .storage import Store

__all__ = ["AuditSink", "Service"]


class AuditSink(Protocol):
    """Where audit events go: the store itself, or a separate sink (Vault)."""

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None: ...

    async def list_audit_events(
        self,
        connection: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]: ...

    async def audit_chain(
        self, connection: str, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]: ...

    async def audit_connections(self) -> list[str]: ...


class Service:
    """The management operations, on one store and one crypto provider.

    ``actor`` arguments are the id of the gateway API key making the change
    (``None`` from the CLI); it goes into the management audit event.
    """

    def __init__(
        self,
        store: Store,
        crypto: CryptoProvider,
        *,
        audit: AuditSink | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.audit: AuditSink = audit if audit is not None else store
        self.clock = clock

    # -- connections -----------------------------------------------------
    async def create_connection(self, body: Mapping[str, Any], *, actor: str | None = None) -> Connection:
        """Create from contract JSON: slug, name, upstreamUrl, authType,
        headerName, credential, enabled. Unknown fields, wrong types -> 422
        (ValidationError naming the field); taken slug -> SlugTaken."""
        raise NotImplementedError

    async def get_connection(self, slug: str) -> Connection:
        raise NotImplementedError

    async def list_connections(self, *, limit: int = 50, cursor: str | None = None) -> Page[Connection]:
        """``limit`` outside 1-200 -> ValidationError('limit')."""
        raise NotImplementedError

    async def update_connection(
        self, slug: str, changes: Mapping[str, Any], *, actor: str | None = None
    ) -> Connection:
        """PATCH: name, upstreamUrl, authType, headerName, enabled. Changing
        upstreamUrl or authType re-seals the credential under the new binding."""
        raise NotImplementedError

    async def rotate_credential(self, slug: str, credential: Any, *, actor: str | None = None) -> Connection:
        """credentialVersion + 1, new envelope, in one guarded write."""
        raise NotImplementedError

    async def set_enabled(self, slug: str, enabled: bool, *, actor: str | None = None) -> Connection:
        raise NotImplementedError

    async def delete_connection(self, slug: str, *, actor: str | None = None) -> None:
        raise NotImplementedError

    async def open_credential(self, connection: Connection) -> Secret | None:
        """Decrypt a connection's credential (``None`` for auth type none)."""
        raise NotImplementedError

    # -- gateway API keys ------------------------------------------------
    async def create_api_key(self, body: Mapping[str, Any]) -> tuple[ApiKey, str]:
        """From contract JSON: name, scopes, connections (optional), expiresAt
        (optional). Returns the record and the ``ig_`` key (shown once)."""
        raise NotImplementedError

    async def list_api_keys(self) -> list[ApiKey]:
        raise NotImplementedError

    async def revoke_api_key(self, key_id: str) -> ApiKey:
        raise NotImplementedError

    async def authenticate(self, key: str) -> ApiKey:
        """The usable key record for ``key``; Unauthorized otherwise (malformed
        keys are refused by checksum before any store read)."""
        raise NotImplementedError

    # -- audit -----------------------------------------------------------
    async def list_audit(
        self, slug: str, *, limit: int = 50, cursor: str | None = None, since: Any = None
    ) -> Page[AuditEvent]:
        raise NotImplementedError

    async def verify_audit(self, slug: str | None = None) -> dict[str, list[str]]:
        """slug -> problems (empty list: intact), for one slug or all."""
        raise NotImplementedError
