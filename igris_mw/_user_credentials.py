"""Per-user credentials: one credential per end user behind one connection.

A connection with ``credentialScope: per_user`` keeps, per end user, either a
static credential (its auth type says how it is injected) or an ``oauth2``
grant. Both live in the store's grant rows keyed by ``(slug, user)``: a static
one with ``status == "static"``, sealed with the slug, the user and the auth
type bound into the associated data, so a row copied to another user or
connection does not open. Every change bumps the connection's version, which
is how the gateway's caches (in this process and, through the store's
notifications, in the others) forget the old per-user entry.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._audit import new_event_id
from ._errors import NotFound, ValidationError, VersionConflict
from ._oauth.config import oauth_status
from ._oauth.sealed import is_flow_row
from ._service import Service
from ._validation import parse_credential, parse_user, require_mapping
from .crypto import binding
from .models import AuditEvent, AuthType, Connection, OAuthGrant, Secret, format_time

__all__ = ["UserCredentials", "user_binding"]

_ATTEMPTS = 5


def user_binding(conn: Connection, user: str) -> bytes:
    """The associated data of ``user``'s static credential on ``conn``."""
    return binding(conn.slug, 0, user, f"user:{conn.auth_type.value}")


class UserCredentials:
    """The per-user credential operations, over a ``Service``'s store and crypto."""

    def __init__(self, service: Service) -> None:
        self._service = service

    async def _per_user(self, slug: str) -> Connection:
        conn = await self._service.get_connection(slug)
        if conn.credential_scope != "per_user":
            raise ValidationError(
                "credentialScope", "this connection holds one shared credential, not one per user"
            )
        return conn

    async def put(
        self, slug: str, user: Any, body: Any, *, actor: str | None = None
    ) -> dict[str, Any]:
        """Set ``user``'s static credential (``{"credential": ...}``)."""
        user = parse_user(user)
        body = require_mapping(body)
        for name in body:
            if name != "credential":
                raise ValidationError(
                    name if isinstance(name, str) and name.isidentifier() else "body",
                    "is not a field here (only credential)",
                )
        if "credential" not in body:
            raise ValidationError("credential", "is required")
        conn = await self._per_user(slug)
        if conn.auth_type is AuthType.OAUTH2:
            raise ValidationError(
                "authType",
                "an oauth2 connection's users authorize themselves: "
                "POST .../users/{user}/oauth/authorize",
            )
        plaintext = parse_credential(body["credential"], conn.auth_type)
        store, crypto = self._service.store, self._service.crypto
        ciphertext = await crypto.encrypt(plaintext, user_binding(conn, user))
        now = self._service.clock()
        for _ in range(_ATTEMPTS):
            current = await store.get_oauth_grant(slug, user)
            expected = current.version if current is not None else 0
            grant = OAuthGrant(
                slug=slug, user=user, ciphertext=ciphertext, status="static",
                version=expected + 1, updated_at=now,
            )  # fmt: skip
            if await store.put_oauth_grant(grant, expected_version=expected):
                break
        else:
            raise VersionConflict("the user's credential was changed meanwhile; retry")
        await self._touch(conn, "user_credential_set", user, actor)
        return {"user": user, "kind": "static", "updatedAt": format_time(now)}

    async def delete(self, slug: str, user: Any, *, actor: str | None = None) -> None:
        """Forget ``user``'s credential or grant. Raises ``NotFound`` if there is none."""
        user = parse_user(user)
        conn = await self._per_user(slug)
        if await self._service.store.get_oauth_grant(slug, user) is None:
            raise NotFound("this user has no credential on this connection")
        await self._service.store.delete_oauth_grants(slug, user)
        await self._touch(conn, "user_credential_delete", user, actor)

    async def list(self, slug: str) -> list[dict[str, Any]]:
        """The users with a credential or grant (never the credential)."""
        conn = await self._per_user(slug)
        out = []
        for grant in await self._service.store.list_oauth_grants(slug):
            if not grant.user or is_flow_row(grant.user):
                continue
            item: dict[str, Any] = {"user": grant.user, "updatedAt": format_time(grant.updated_at)}
            if grant.status == "static":
                item["kind"] = "static"
            else:
                item.update({"kind": "oauth2", **oauth_status(grant)})
            out.append(item)
        del conn
        return out

    async def open(self, conn: Connection, user: str) -> Secret | None:
        """``user``'s static credential on ``conn``, or None when there is none."""
        grant = await self._service.store.get_oauth_grant(conn.slug, user)
        if grant is None or grant.status != "static" or grant.ciphertext is None:
            return None
        plain = await self._service.crypto.decrypt(grant.ciphertext, user_binding(conn, user))
        return Secret(plain)

    async def _touch(self, conn: Connection, action: str, user: str, actor: str | None) -> None:
        """Bump the connection's version (caches everywhere forget), then audit."""
        for _ in range(_ATTEMPTS):
            current = await self._service.get_connection(conn.slug)
            try:
                stored = await self._service.store.update_connection(
                    attrs.evolve(current, updated_at=self._service.clock()),
                    expected_version=current.version,
                )
                break
            except VersionConflict:
                continue
        else:
            stored = conn
        event = AuditEvent(
            id=new_event_id(),
            timestamp=self._service.clock(),
            connection=conn.slug,
            kind="management",
            action=action,
            api_key_id=actor,
            user=user,
            outcome="ok",
            credential_version=stored.credential_version,
        )
        await self._service.audit.append_audit_events([event])
