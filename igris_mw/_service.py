"""Operations shared by the management API and the CLI.

User input (contract JSON, camelCase field names) is checked by
``_validation`` before anything is written: a bad request never changes
stored state.
Every change to a connection records a management audit event.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from ._audit.events import new_event_id
from ._auth import generate_key, hash_key, hashes_equal, is_well_formed, new_key_id
from ._errors import NotFound, Unauthorized, ValidationError, VersionConflict
from ._oauth.config import OAUTH_AUTH_TYPES, parse_oauth
from ._policy.egress import EgressPolicy
from ._service_audit import AuditOps, diff_changes
from ._validation import (
    API_KEY_FIELDS,
    API_KEY_PATCH_FIELDS,
    CREATE_FIELDS,
    PATCH_FIELDS,
    check_fields,
    header_name_for,
    parse_auth_type,
    parse_bool,
    parse_ca_certificate,
    parse_client_identity,
    parse_credential,
    parse_credential_scope,
    parse_cursor,
    parse_expires_at,
    parse_key_connections,
    parse_limit,
    parse_max_concurrent,
    parse_scopes,
    parse_since,
    parse_user,
    require_mapping,
)
from .crypto import CLIENT_KEY_LABEL, CryptoProvider, binding
from .models import (
    ApiKey,
    AuditEvent,
    AuthType,
    Connection,
    Page,
    RateLimit,
    Secret,
    TlsConfig,
    ToolPolicy,
    utcnow,
    validate_header_name,
    validate_name,
    validate_secret_text,
    validate_slug,
    validate_upstream_url,
)
from .storage import AuditKey, AuditSink, Store

__all__ = ["AuditSink", "Service"]


# A guarded write that keeps losing races is retried this many times, then
# the VersionConflict reaches the caller (409).
_WRITE_ATTEMPTS = 5


def _oauth_for(
    auth_type: AuthType, body: Mapping[str, Any], *, has_secret: bool
) -> dict[str, Any] | None:
    """The checked ``oauth`` object a connection of ``auth_type`` keeps (None unless OAuth)."""
    if auth_type.value in OAUTH_AUTH_TYPES:
        return parse_oauth(auth_type.value, body.get("oauth"), has_secret=has_secret)
    if body.get("oauth") is not None:
        raise ValidationError(
            "oauth", "is only allowed when authType is oauth2_client_credentials or oauth2"
        )
    return None


def _grants_stale(
    current: Connection, auth_type: AuthType, oauth: Mapping[str, Any] | None, *, rotated: bool
) -> bool:
    """Whether a change makes the connection's stored OAuth tokens unfit to keep.

    Client-credentials tokens are cheap to replace: any change of their
    settings or secret drops them. An oauth2 grant (a person's consent) is
    kept unless the auth type or the client changes.
    """
    if current.oauth is None:
        return False
    if auth_type is not current.auth_type:
        return True
    if auth_type is AuthType.OAUTH2_CLIENT_CREDENTIALS:
        return rotated or oauth != current.oauth
    return oauth is None or oauth.get("clientId") != current.oauth.get("clientId")


def _bind(conn: Connection) -> bytes:
    return binding(conn.slug, conn.credential_version, conn.upstream_url, conn.auth_type.value)


def _bind_client_key(conn: Connection) -> bytes:
    # Its own label: a key envelope swapped into the credential's column (same
    # record, same binding otherwise) would go upstream as a credential header.
    return _bind(conn) + CLIENT_KEY_LABEL


def _tls_or_none(tls: TlsConfig | None) -> TlsConfig | None:
    return None if tls is None or tls.is_empty else tls


class Service(AuditOps):
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
        egress: EgressPolicy | None = None,
    ) -> None:
        self.store = store
        self.crypto = crypto
        self.audit: AuditSink = audit if audit is not None else store
        self.clock = clock
        # The address policy for upstreamUrl; without one, no internal network is open.
        self.egress = egress if egress is not None else EgressPolicy()
        self._audit_key: AuditKey | None = None
        self._audit_key_set = False

    # -- connections -----------------------------------------------------
    async def create_connection(
        self, body: Mapping[str, Any], *, actor: str | None = None
    ) -> Connection:
        """Create from contract JSON: slug, name, upstreamUrl, authType,
        headerName, credential, enabled.

        Raises:
            ValidationError: unknown fields, wrong types, invalid values (the
                field is named; the credential is never echoed).
            SlugTaken: the slug is in use. Nothing is written.
        """
        body = require_mapping(body)
        check_fields(body, CREATE_FIELDS, "a connection")
        for required in ("slug", "name", "upstreamUrl"):
            if required not in body:
                raise ValidationError(required, "is required")
        slug = validate_slug(body["slug"])
        name = validate_name(body["name"])
        upstream_url = validate_upstream_url(body["upstreamUrl"])
        self.egress.check_url_literal(upstream_url)
        auth_type = parse_auth_type(body.get("authType", AuthType.BEARER.value))
        header_name = header_name_for(auth_type, body.get("headerName"))
        enabled = parse_bool(body.get("enabled", True), "enabled")
        rate_limit = RateLimit.from_json(body.get("rateLimit"))
        tools = ToolPolicy.from_json(body.get("tools"))
        raw_credential = body.get("credential")
        plaintext: bytes | None = None
        oauth = _oauth_for(auth_type, body, has_secret=raw_credential is not None)
        scope = parse_credential_scope(
            body.get("credentialScope"), auth_type, raw_credential is not None
        )
        if auth_type is AuthType.OAUTH2 and raw_credential is None:
            pass  # a public client: PKCE is its only proof
        elif scope == "per_user":
            pass  # each user's credential comes later, per user
        elif auth_type is AuthType.NONE:
            if raw_credential is not None:
                raise ValidationError("credential", "must be omitted when authType is 'none'")
        elif raw_credential is None:
            raise ValidationError("credential", f"is required when authType is '{auth_type}'")
        else:
            plaintext = parse_credential(raw_credential, auth_type)
        ca_certificate = parse_ca_certificate(body.get("caCertificate"))
        identity = parse_client_identity(
            body.get("clientCertificate"), body.get("clientKey"), self.clock()
        )

        now = self.clock()
        conn = Connection(
            slug=slug,
            name=name,
            upstream_url=upstream_url,
            auth_type=auth_type,
            header_name=header_name,
            enabled=enabled,
            credential_version=1,
            created_at=now,
            updated_at=now,
            oauth=oauth,
            credential_scope=scope,
            rate_limit=rate_limit,
            tools=tools,
        )
        if plaintext is not None:
            conn = attrs.evolve(conn, ciphertext=await self.crypto.encrypt(plaintext, _bind(conn)))
        if ca_certificate is not None or identity is not None:
            tls = TlsConfig(ca_certificate=ca_certificate)
            if identity is not None:
                tls = attrs.evolve(
                    tls,
                    client_certificate=identity[0],
                    client_key_ciphertext=await self.crypto.encrypt(
                        identity[1].reveal(), _bind_client_key(conn)
                    ),
                )
            conn = attrs.evolve(conn, tls=tls)
        # A creation records what was created: each field from null.
        event = self._event(conn, "create", actor, changes=diff_changes({}, conn.to_json()))
        return await self._audited(
            lambda ev: self.store.create_connection(conn, audit_events=ev), [event]
        )

    async def get_connection(self, slug: str) -> Connection:
        """Raises ``NotFound`` for an unknown (or malformed) slug."""
        if not isinstance(slug, str):
            raise NotFound("no such connection")
        return await self.store.get_connection(slug)

    async def list_connections(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Connection]:
        """``limit`` outside 1-200 -> ValidationError('limit')."""
        return await self.store.list_connections(
            limit=parse_limit(limit), cursor=parse_cursor(cursor)
        )

    async def update_connection(
        self, slug: str, changes: Mapping[str, Any], *, actor: str | None = None
    ) -> Connection:
        """PATCH: name, upstreamUrl, authType, headerName, enabled, rateLimit, tools
        (``null`` removes either).

        Changing upstreamUrl or authType re-seals the credential under the
        new binding in the same guarded write; switching to ``none`` drops it.

        Raises:
            ValidationError: an invalid or unknown field, ``credential``
                (use rotate), or a switch from ``none`` to a type that needs
                a credential.
            NotFound: no such slug.
        """
        changes = require_mapping(changes)
        check_fields(changes, PATCH_FIELDS, "a connection update")
        # Type checks first, so a bad request fails before any store read.
        new_name = validate_name(changes["name"]) if "name" in changes else None
        new_url = (
            validate_upstream_url(changes["upstreamUrl"]) if "upstreamUrl" in changes else None
        )
        if new_url is not None:
            self.egress.check_url_literal(new_url)
        new_type = parse_auth_type(changes["authType"]) if "authType" in changes else None
        if changes.get("headerName") is not None:
            validate_header_name(changes["headerName"])
        new_enabled = parse_bool(changes["enabled"], "enabled") if "enabled" in changes else None
        new_rate = RateLimit.from_json(changes.get("rateLimit"))
        new_tools = ToolPolicy.from_json(changes.get("tools"))
        new_ca = parse_ca_certificate(changes.get("caCertificate"))
        if changes.get("clientCertificate") is not None:
            raise ValidationError(
                "clientCertificate",
                "can only be removed (null) in an update; replace it with its clientKey "
                "through rotate (POST .../rotate)",
            )
        if not changes:
            return await self.get_connection(slug)
        if set(changes) == {"enabled"} and new_enabled is not None:
            return await self.set_enabled(slug, new_enabled, actor=actor)

        stale = False

        async def build(current: Connection) -> Connection:
            nonlocal stale
            auth_type = new_type if new_type is not None else current.auth_type
            if "headerName" in changes:
                header_value = changes["headerName"]
            elif auth_type is AuthType.HEADER:
                header_value = current.header_name
            else:
                header_value = None
            header_name = header_name_for(auth_type, header_value)
            oauth: Mapping[str, Any] | None = current.oauth
            if "oauth" in changes or auth_type is not current.auth_type:
                kept = current.oauth if auth_type.value in OAUTH_AUTH_TYPES else None
                source = changes if "oauth" in changes else {"oauth": kept}
                oauth = _oauth_for(auth_type, source, has_secret=current.ciphertext is not None)
            stale = _grants_stale(current, auth_type, oauth, rotated=False)
            tls = current.tls or TlsConfig()
            if "caCertificate" in changes:
                tls = attrs.evolve(tls, ca_certificate=new_ca)
            if "clientCertificate" in changes:
                tls = attrs.evolve(tls, client_certificate=None, client_key_ciphertext=None)
            updated = attrs.evolve(
                current,
                name=new_name if new_name is not None else current.name,
                upstream_url=new_url if new_url is not None else current.upstream_url,
                auth_type=auth_type,
                header_name=header_name,
                enabled=new_enabled if new_enabled is not None else current.enabled,
                rate_limit=new_rate if "rateLimit" in changes else current.rate_limit,
                tools=new_tools if "tools" in changes else current.tools,
                updated_at=self.clock(),
                oauth=oauth,
                tls=_tls_or_none(tls),
            )
            return await self._reseal_client_key(current, await self._reseal(current, updated))

        fields = sorted(changes)
        stored = await self._guarded(
            slug,
            build,
            lambda old, new: self._event(
                new, "update", actor, metadata={"fields": fields},
                changes=diff_changes(old.to_json(), new.to_json()),
            ),
        )  # fmt: skip
        if stale:
            await self.store.delete_oauth_grants(slug)
        return stored

    async def _reseal(self, current: Connection, updated: Connection) -> Connection:
        if updated.auth_type is AuthType.NONE:
            return attrs.evolve(updated, ciphertext=None)
        if current.ciphertext is None and (
            updated.auth_type is AuthType.OAUTH2 or updated.credential_scope == "per_user"
        ):
            return updated  # a public OAuth client, or credentials per user: nothing to re-seal
        if current.ciphertext is None:
            raise ValidationError(
                "authType",
                f"a connection without a credential cannot switch to '{updated.auth_type}'; "
                "rotate it with a credential and the new authType",
            )
        if _bind(current) == _bind(updated):
            return updated
        plaintext = await self.crypto.decrypt(current.ciphertext, _bind(current))
        if updated.auth_type is AuthType.BASIC and b":" not in plaintext:
            raise ValidationError(
                "authType",
                "the stored credential is not 'user:password', as basic needs; "
                "rotate it with a credential and the new authType",
            )
        return attrs.evolve(
            updated, ciphertext=await self.crypto.encrypt(plaintext, _bind(updated))
        )

    async def _reseal_client_key(self, current: Connection, updated: Connection) -> Connection:
        """Move the client key's envelope to ``updated``'s binding (if it changed)."""
        tls = updated.tls
        if tls is None or tls.client_key_ciphertext is None or _bind(current) == _bind(updated):
            return updated
        plaintext = await self.crypto.decrypt(tls.client_key_ciphertext, _bind_client_key(current))
        sealed = await self.crypto.encrypt(plaintext, _bind_client_key(updated))
        return attrs.evolve(updated, tls=attrs.evolve(tls, client_key_ciphertext=sealed))

    async def rotate_credential(
        self,
        slug: str,
        credential: Any,
        *,
        actor: str | None = None,
        auth_type: Any = None,
        header_name: Any = None,
        client_certificate: Any = None,
        client_key: Any = None,
    ) -> Connection:
        """credentialVersion + 1, new envelope, in one guarded write.

        Whatever is not given is kept and re-sealed under the new
        credentialVersion: a rotate may replace only the client key (an
        mTLS-only connection has no credential), only the credential, or both.

        Args:
            credential: the new credential (text), or ``None`` to keep it.
            client_certificate, client_key: a new client certificate chain
                and/or key (PEM); one alone must match the other one stored.
            auth_type: optionally switch the auth type at the same time (the
                only way out of ``none``, which has no credential to re-seal).
            header_name: the header name, with ``auth_type='header'``.

        Raises:
            ValidationError: invalid credential / auth type / header name.
            NotFound: no such slug.
        """
        new_type = parse_auth_type(auth_type) if auth_type is not None else None
        if new_type is AuthType.NONE:
            raise ValidationError(
                "authType", "rotate needs a credential; set authType 'none' with an update"
            )
        if header_name is not None:
            validate_header_name(header_name)
        new_identity = client_certificate is not None or client_key is not None
        if credential is None and not new_identity:
            raise ValidationError("credential", "is required")
        if credential is None and new_type is not None:
            raise ValidationError("credential", "is required to change the authType")
        if credential is not None:
            # Checked once here against the type we know of so far; again in build.
            validate_secret_text(credential)
        if client_certificate is not None and client_key is not None:
            # Both given: check before any store read (a stored one is needed otherwise).
            parse_client_identity(client_certificate, client_key, self.clock())

        stale = False

        async def build(current: Connection) -> Connection:
            nonlocal stale
            kind = new_type if new_type is not None else current.auth_type
            if credential is None:
                return await self._rotate_tls_only(current, client_certificate, client_key)
            if kind is AuthType.NONE:
                raise ValidationError(
                    "credential",
                    "a connection with authType 'none' takes no credential; "
                    "give the new authType with it",
                )
            if header_name is not None:
                header_value: object = header_name
            else:
                header_value = current.header_name if kind is AuthType.HEADER else None
            if current.credential_scope == "per_user" and kind is not AuthType.OAUTH2:
                raise ValidationError(
                    "credential",
                    "this connection holds a credential per user: "
                    "PUT .../users/{user}/credential instead",
                )
            plaintext = parse_credential(credential, kind)
            kept = current.oauth if kind.value in OAUTH_AUTH_TYPES else None
            oauth = _oauth_for(kind, {"oauth": kept}, has_secret=True)
            stale = _grants_stale(current, kind, oauth, rotated=True)
            now = self.clock()
            updated = attrs.evolve(
                current,
                auth_type=kind,
                header_name=header_name_for(kind, header_value),
                credential_version=current.credential_version + 1,
                updated_at=now,
                rotated_at=now,
                oauth=oauth,
            )
            updated = attrs.evolve(
                updated, ciphertext=await self.crypto.encrypt(plaintext, _bind(updated))
            )
            return await self._rotate_identity(current, updated, client_certificate, client_key)

        # The credential appears only as its version, never as a value.
        stored = await self._guarded(
            slug,
            build,
            lambda old, new: self._event(
                new, "rotate", actor, changes=diff_changes(old.to_json(), new.to_json())
            ),
        )
        if stale:
            await self.store.delete_oauth_grants(slug)
        return stored

    async def _rotate_tls_only(
        self, current: Connection, client_certificate: Any, client_key: Any
    ) -> Connection:
        """A rotate without a credential: the stored one is re-sealed, the identity replaced."""
        now = self.clock()
        updated = attrs.evolve(
            current,
            credential_version=current.credential_version + 1,
            updated_at=now,
            rotated_at=now,
        )
        if current.ciphertext is not None:
            plaintext = await self.crypto.decrypt(current.ciphertext, _bind(current))
            updated = attrs.evolve(
                updated, ciphertext=await self.crypto.encrypt(plaintext, _bind(updated))
            )
        return await self._rotate_identity(current, updated, client_certificate, client_key)

    async def _rotate_identity(
        self, current: Connection, updated: Connection, client_certificate: Any, client_key: Any
    ) -> Connection:
        """Seal a new client identity under ``updated``'s binding, or re-seal the stored one."""
        if client_certificate is None and client_key is None:
            return await self._reseal_client_key(current, updated)
        stored_tls = current.tls or TlsConfig()
        certificate = (
            client_certificate if client_certificate is not None else stored_tls.client_certificate
        )
        key: Any = client_key
        if key is None and stored_tls.client_key_ciphertext is not None:
            key = Secret(
                await self.crypto.decrypt(
                    stored_tls.client_key_ciphertext, _bind_client_key(current)
                )
            )
        identity = parse_client_identity(certificate, key, self.clock())
        assert identity is not None  # both present: parse_client_identity raised otherwise
        sealed = await self.crypto.encrypt(identity[1].reveal(), _bind_client_key(updated))
        tls = attrs.evolve(stored_tls, client_certificate=identity[0], client_key_ciphertext=sealed)
        return attrs.evolve(updated, tls=tls)

    async def set_enabled(
        self, slug: str, enabled: bool, *, actor: str | None = None
    ) -> Connection:
        """Disable (revoke) or enable a connection; a no-op if already so."""
        enabled = parse_bool(enabled, "enabled")

        async def build(current: Connection) -> Connection:
            if current.enabled == enabled:
                return current
            return attrs.evolve(current, enabled=enabled, updated_at=self.clock())

        return await self._guarded(
            slug,
            build,
            lambda old, new: self._event(
                new,
                "enable" if enabled else "disable",
                actor,
                changes={"enabled": {"from": old.enabled, "to": new.enabled}},
            ),
        )

    async def delete_connection(self, slug: str, *, actor: str | None = None) -> None:
        """Delete; the audit trail stays. Raises ``NotFound``.

        Grants follow the connection, not its name: every key limited to this
        slug loses it first, so a connection created later under the same
        slug is not reachable with them (a key left with no connection
        reaches none).
        """
        current = await self.get_connection(slug)
        for key in await self.store.list_api_keys():
            if key.connections is not None and slug in key.connections:
                await self._update_key(
                    key,
                    attrs.evolve(key, connections=key.connections - {slug}),
                    actor,
                    metadata={"apiKey": key.id, "name": key.name, "reason": f"delete {slug}"},
                )
        event = self._event(current, "delete", actor)
        await self._audited(lambda ev: self.store.delete_connection(slug, audit_events=ev), [event])

    async def open_credential(self, connection: Connection) -> Secret | None:
        """Decrypt a connection's credential (``None`` for auth type none).

        Raises:
            InvalidCiphertext: the envelope does not open under this record's binding.
        """
        if connection.auth_type is AuthType.NONE or connection.ciphertext is None:
            return None
        return Secret(await self.crypto.decrypt(connection.ciphertext, _bind(connection)))

    async def open_client_key(self, connection: Connection) -> Secret | None:
        """Decrypt a connection's TLS client key (``None`` if it has none).

        Raises:
            InvalidCiphertext: the envelope does not open under this record's binding.
        """
        tls = connection.tls
        if tls is None or tls.client_key_ciphertext is None:
            return None
        return Secret(
            await self.crypto.decrypt(tls.client_key_ciphertext, _bind_client_key(connection))
        )

    async def _guarded(
        self,
        slug: str,
        build: Callable[[Connection], Awaitable[Connection]],
        event_for: Callable[[Connection, Connection], AuditEvent],
    ) -> Connection:
        """Read, build the new record, write it guarded by the row version
        together with its audit event (``event_for(current, updated)``); retry races."""
        for attempt in range(_WRITE_ATTEMPTS):
            current = await self.get_connection(slug)
            updated = await build(current)
            if updated is current:
                return current
            event = event_for(current, updated)
            try:
                return await self._audited(
                    functools.partial(self._update, updated, current.version),
                    [event],
                )
            except VersionConflict:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _update(
        self, updated: Connection, version: int, events: Sequence[AuditEvent]
    ) -> Connection:
        return await self.store.update_connection(
            updated, expected_version=version, audit_events=events
        )

    def _event(
        self,
        conn: Connection,
        action: str,
        actor: str | None,
        *,
        metadata: Mapping[str, Any] | None = None,
        changes: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            id=new_event_id(),
            timestamp=self.clock(),
            connection=conn.slug,
            kind="management",
            action=action,
            api_key_id=actor,
            metadata=metadata,
            outcome="ok",
            credential_version=conn.credential_version,
            changes=changes or None,
        )

    def _key_event(self, key: ApiKey, action: str, actor: str | None, **extra: Any) -> AuditEvent:
        return AuditEvent(
            id=new_event_id(),
            timestamp=self.clock(),
            connection=None,
            kind="management",
            action=action,
            api_key_id=actor,
            # Which key was acted on: its id and name, never the key or its hash.
            metadata={"apiKey": key.id, "name": key.name},
            outcome="ok",
            **extra,
        )

    # -- gateway API keys ------------------------------------------------
    async def create_api_key(
        self, body: Mapping[str, Any], *, actor: str | None = None
    ) -> tuple[ApiKey, str]:
        """From contract JSON: name, scopes, connections (optional), expiresAt
        (optional). Returns the record and the ``ig_`` key (shown once).

        Raises:
            ValidationError: a missing, unknown or invalid field.
        """
        body = require_mapping(body)
        check_fields(body, API_KEY_FIELDS, "an API key")
        if "name" not in body:
            raise ValidationError("name", "is required")
        name = validate_name(body["name"])
        scopes = parse_scopes(body.get("scopes"))
        connections = parse_key_connections(body.get("connections"), scopes)
        now = self.clock()
        expires_at = parse_expires_at(body.get("expiresAt"), now)
        user = parse_user(body["user"]) if body.get("user") is not None else None
        rate_limit = RateLimit.from_json(body.get("rateLimit"))
        tools = ToolPolicy.from_json(body.get("tools"))
        max_concurrent = parse_max_concurrent(body.get("maxConcurrent"))
        key = generate_key()
        record = ApiKey(
            id=new_key_id(),
            name=name,
            key_hash=hash_key(key),
            scopes=scopes,
            connections=connections,
            created_at=now,
            expires_at=expires_at,
            user=user,
            rate_limit=rate_limit,
            tools=tools,
            max_concurrent=max_concurrent,
        )
        event = self._key_event(record, "create", actor, changes=diff_changes({}, record.to_json()))
        stored = await self._audited(
            lambda ev: self.store.create_api_key(record, audit_events=ev), [event]
        )
        return stored, key

    async def update_api_key(
        self, key_id: str, changes: Mapping[str, Any], *, actor: str | None = None
    ) -> ApiKey:
        """PATCH a key: name, connections, expiresAt, rateLimit, tools,
        maxConcurrent (``null`` removes any but name).

        Raises:
            ValidationError: an unknown, read-only or invalid field (checked
                before anything is written).
            NotFound: no such key.
        """
        changes = require_mapping(changes)
        check_fields(changes, API_KEY_PATCH_FIELDS, "an API key update")
        name = validate_name(changes["name"]) if "name" in changes else None
        rate_limit = RateLimit.from_json(changes.get("rateLimit"))
        tools = ToolPolicy.from_json(changes.get("tools"))
        max_concurrent = parse_max_concurrent(changes.get("maxConcurrent"))
        expires_at = parse_expires_at(changes.get("expiresAt"), self.clock())
        current = await self._get_api_key(key_id)
        connections = (
            parse_key_connections(changes["connections"], current.scopes)
            if "connections" in changes
            else current.connections
        )
        if not changes:
            return current
        updated = attrs.evolve(
            current,
            name=name if name is not None else current.name,
            connections=connections,
            expires_at=expires_at if "expiresAt" in changes else current.expires_at,
            rate_limit=rate_limit if "rateLimit" in changes else current.rate_limit,
            tools=tools if "tools" in changes else current.tools,
            max_concurrent=(
                max_concurrent if "maxConcurrent" in changes else current.max_concurrent
            ),
        )
        return await self._update_key(current, updated, actor)

    async def _update_key(
        self,
        current: ApiKey,
        updated: ApiKey,
        actor: str | None,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> ApiKey:
        """Store a key's new fields with its audit event (global chain): both or neither."""
        changes = diff_changes(current.to_json(), updated.to_json())
        if not changes:
            return current
        event = self._key_event(current, "update", actor, changes=changes)
        if metadata is not None:
            event = attrs.evolve(event, metadata=metadata)
        return await self._audited(
            lambda ev: self.store.update_api_key(updated, audit_events=ev), [event]
        )

    async def _get_api_key(self, key_id: str) -> ApiKey:
        if isinstance(key_id, str) and key_id:
            for key in await self.store.list_api_keys():
                if key.id == key_id:
                    return key
        raise NotFound("no such API key")

    async def list_api_keys(self) -> list[ApiKey]:
        """Every key record, revoked ones included, oldest first."""
        return await self.store.list_api_keys()

    async def revoke_api_key(self, key_id: str, *, actor: str | None = None) -> ApiKey:
        """Revoke at once (audited on the global chain). Raises ``NotFound``."""
        if not isinstance(key_id, str) or not key_id:
            raise NotFound("no such API key")
        current = next((k for k in await self.store.list_api_keys() if k.id == key_id), None)
        if current is None:
            raise NotFound(f"no API key {key_id!r}")
        if current.revoked_at is not None:
            return current  # already revoked: nothing changes, nothing to record
        at = self.clock()
        revoked = attrs.evolve(current, revoked_at=at)
        changes = diff_changes(current.to_json(), revoked.to_json(), ("revokedAt",))
        event = self._key_event(current, "revoke", actor, changes=changes)
        return await self._audited(
            lambda ev: self.store.revoke_api_key(key_id, at=at, audit_events=ev), [event]
        )

    async def authenticate(self, key: str) -> ApiKey:
        """The usable key record for ``key``; Unauthorized otherwise (malformed
        keys are refused by checksum before any store read)."""
        if not isinstance(key, str) or not is_well_formed(key):
            raise Unauthorized("the gateway API key is malformed")
        digest = hash_key(key)
        record = await self.store.get_api_key_by_hash(digest)
        if record is None or not hashes_equal(record.key_hash, digest):
            raise Unauthorized("the gateway API key is not known")
        if record.revoked_at is not None:
            raise Unauthorized("the gateway API key is revoked")
        if not record.is_usable(self.clock()):
            raise Unauthorized("the gateway API key is expired")
        return record

    # -- audit -----------------------------------------------------------
    async def list_audit(
        self, slug: str, *, limit: int = 50, cursor: str | None = None, since: Any = None
    ) -> Page[AuditEvent]:
        """One connection's audit trail, newest first.

        A deleted connection's trail stays readable.

        Raises:
            ValidationError: ``limit`` outside 1-200, ``since`` not RFC 3339.
            NotFound: neither a connection nor an audit trail of that slug.
        """
        limit = parse_limit(limit)
        cursor = parse_cursor(cursor)
        since_at = parse_since(since)
        try:
            await self.get_connection(slug)
        except NotFound:
            if slug not in await self.audit.audit_connections():
                raise
        return await self.audit.list_audit_events(slug, limit=limit, cursor=cursor, since=since_at)
