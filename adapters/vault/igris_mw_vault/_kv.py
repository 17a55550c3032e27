"""The ``Store`` on a Vault / OpenBao KV version 2 mount.

Layout under ``<mount>/data/<prefix>/``::

    connections/<slug>            one secret per connection (ciphertext base64)
    api-keys/<id>                 one secret per gateway key (SHA-256 hex, never the key)
    api-key-hashes/<sha256 hex>   {"id": <id>}: the lookup index

``Connection.version`` *is* the KV metadata version of its secret: a create
writes with ``cas=0`` (only if absent) and a guarded update with
``cas=<expected_version>``, so Vault itself makes the version guard atomic.
A delete removes the metadata (every version), so a slug can be reused.

Audit events are not a KV workload (append-heavy, hash-chained, listed by
time): ``capabilities.audit`` is false and the service is given a separate
sink (``--audit jsonl:///path``, SQLite or Postgres).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import attrs

from igris_mw.errors import (
    ConfigurationError,
    Conflict,
    NotFound,
    SlugTaken,
    StoreUnavailable,
    ValidationError,
    VersionConflict,
)
from igris_mw.models import (
    SLUG_RE,
    ApiKey,
    AuditEvent,
    AuthType,
    Connection,
    OAuthGrant,
    Page,
    Scope,
    TlsConfig,
    policy_from_json,
    policy_to_json,
    tls_text,
)
from igris_mw.paging import bad_cursor, check_limit
from igris_mw.storage import (
    AuditKey,
    AuditQuery,
    Capabilities,
    ChainAnchor,
    ChainHead,
    Change,
    ChangeListener,
    notify_listeners,
)

from ._client import VaultClient, errors_text, json_of
from ._config import Credentials, parse_store_url

__all__ = ["VaultKVStore"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_CAS_FAILED = "check-and-set"
_FETCH_CONCURRENCY = 16
_REVOKE_RETRIES = 5
_T = TypeVar("_T")

AUDIT_HINT = (
    "the Vault store does not keep audit events; give the service a separate audit sink "
    "(--audit jsonl:///var/lib/igris/audit.jsonl, sqlite:///audit.db or postgresql://...)"
)


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _need_time(value: Any) -> datetime:
    parsed = _parse_time(value)
    if parsed is None:
        raise ValueError("missing timestamp")
    return parsed


class VaultKVStore:
    """igris-mw's store on a KV v2 mount of Vault or OpenBao.

    Build it with ``from_url``; ``await open()`` checks the token and that
    the mount exists and is KV version 2.
    """

    capabilities = Capabilities(shared=True, notifies_remote=False, audit=False)

    def __init__(self, client: VaultClient, mount: str, prefix: str) -> None:
        self._client = client
        self.mount = mount
        self.prefix = prefix
        self._listeners: list[ChangeListener] = []
        self._opened = False

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> VaultKVStore:
        """``vault://host:port/<kv-v2 mount>[/<path prefix>][?tls=false&namespace=ns]``.

        Raises:
            ConfigurationError: a malformed URL, credentials in it, no Vault
                credentials in the environment.
        """
        env = os.environ if environ is None else environ
        endpoint, mount, prefix, where = parse_store_url(url, env)
        credentials = Credentials.from_environ(env, where)
        client = VaultClient(endpoint, credentials, unavailable=StoreUnavailable, where=where)
        return cls(client, mount, prefix)

    def __repr__(self) -> str:
        return f"VaultKVStore({self._client.where!r})"

    # -- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        """Authenticate and check the mount.

        Raises:
            StoreUnavailable: Vault unreachable or sealed, the token refused
                (``vault_auth_failed``), or the mount missing or not KV v2
                (``vault_mount_invalid``).
        """
        response = await self._client.request(
            "GET", f"sys/internal/ui/mounts/{self.mount}", expect=(403,)
        )
        if response.status_code != 200:
            self._bad_mount(f"there is no KV v2 mount {self.mount!r} (or the token may not use it)")
        data = json_of(response).get("data") or {}
        kind = data.get("type")
        version = (data.get("options") or {}).get("version")
        if kind not in ("kv", "generic"):
            self._bad_mount(f"mount {self.mount!r} is a {kind!r} engine, not KV version 2")
        if str(version) != "2":
            self._bad_mount(
                f"mount {self.mount!r} is KV version {version or 1}; igris-mw needs KV version 2 "
                f"(bao secrets enable -version=2 -path={self.mount} kv)"
            )
        self._opened = True

    def _bad_mount(self, message: str) -> NoReturn:
        raise StoreUnavailable(f"{self._client.where}: {message}", code="vault_mount_invalid")

    async def close(self) -> None:
        await self._client.aclose()
        self._opened = False

    # -- low level -------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    async def _read(self, path: str) -> tuple[dict[str, Any], int] | None:
        response = await self._client.request("GET", f"{self.mount}/data/{path}")
        if response.status_code == 404:
            return None
        self._check(response, path)
        body = json_of(response).get("data") or {}
        data = body.get("data")
        meta = body.get("metadata") or {}
        if not isinstance(data, dict):
            return None  # a deleted or destroyed version
        return data, int(meta.get("version") or 0)

    async def _write(self, path: str, data: Mapping[str, Any], cas: int) -> int | None:
        """The new KV version, or ``None`` when the check-and-set failed."""
        response = await self._client.request(
            "POST", f"{self.mount}/data/{path}", {"options": {"cas": cas}, "data": data}
        )
        if response.status_code == 400 and _CAS_FAILED in errors_text(response):
            return None
        self._check(response, path)
        return int((json_of(response).get("data") or {}).get("version") or 0)

    async def _destroy(self, path: str) -> None:
        response = await self._client.request("DELETE", f"{self.mount}/metadata/{path}")
        if response.status_code != 404:
            self._check(response, path)

    async def _list(self, path: str) -> list[str]:
        response = await self._client.request("LIST", f"{self.mount}/metadata/{path}")
        if response.status_code == 404:
            return []
        self._check(response, path)
        keys = (json_of(response).get("data") or {}).get("keys") or []
        return sorted(k for k in keys if isinstance(k, str) and not k.endswith("/"))

    def _check(self, response: Any, path: str) -> None:
        if response.status_code >= 400:
            raise StoreUnavailable(
                f"{self._client.where}: Vault refused {path!r}: {errors_text(response)}",
                code="vault_error",
            )

    def _notify(self, change: Change) -> None:
        notify_listeners(self._listeners, change)

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    @staticmethod
    async def _gather(items: Sequence[str], fetch: Callable[[str], Awaitable[_T]]) -> list[_T]:
        gate = asyncio.Semaphore(_FETCH_CONCURRENCY)

        async def one(item: str) -> _T:
            async with gate:
                return await fetch(item)

        return list(await asyncio.gather(*(one(i) for i in items)))

    # -- connections ------------------------------------------------------------
    @staticmethod
    def _conn_data(c: Connection) -> dict[str, Any]:
        return {
            "slug": c.slug,
            "name": c.name,
            "upstream_url": c.upstream_url,
            "auth_type": c.auth_type.value,
            "header_name": c.header_name,
            "enabled": c.enabled,
            "credential_version": c.credential_version,
            "ciphertext": base64.b64encode(c.ciphertext).decode()
            if c.ciphertext is not None
            else None,
            "created_at": _time(c.created_at),
            "updated_at": _time(c.updated_at),
            "rotated_at": _time(c.rotated_at),
            "oauth": dict(c.oauth) if c.oauth is not None else None,
            "credential_scope": c.credential_scope,
            "tls": tls_text(c.tls),
            "policy": policy_to_json(c),
        }

    def _conn_from(self, data: Mapping[str, Any], version: int, path: str) -> Connection:
        try:
            ct = data.get("ciphertext")
            return Connection(
                slug=str(data["slug"]),
                name=str(data["name"]),
                upstream_url=str(data["upstream_url"]),
                auth_type=AuthType(data["auth_type"]),
                header_name=data.get("header_name"),
                enabled=bool(data["enabled"]),
                credential_version=int(data["credential_version"]),
                ciphertext=base64.b64decode(ct, validate=True) if ct is not None else None,
                created_at=_need_time(data["created_at"]),
                updated_at=_need_time(data["updated_at"]),
                rotated_at=_parse_time(data.get("rotated_at")),
                version=version,
                oauth=data.get("oauth"),
                credential_scope=str(data.get("credential_scope") or "shared"),
                tls=TlsConfig.from_text(data.get("tls")),
                **policy_from_json(data.get("policy")),
            )
        except (KeyError, ValueError, TypeError, binascii.Error) as exc:
            raise StoreUnavailable(
                f"{self._client.where}: the secret at {path!r} is not an igris-mw connection",
                code="vault_bad_record",
            ) from exc

    # ``audit_events`` are ignored: this store keeps no audit trail; the
    # Service has written them to the separate audit sink first.
    async def create_connection(
        self, connection: Connection, *, audit_events: Sequence[AuditEvent] = ()
    ) -> Connection:
        path = self._path("connections", connection.slug)
        version = await self._write(path, self._conn_data(connection), cas=0)
        if version is None:
            raise SlugTaken(f"the slug {connection.slug!r} is taken")
        stored = attrs.evolve(connection, version=version)
        self._notify(Change("connection", connection.slug))
        return stored

    async def get_connection(self, slug: str) -> Connection:
        if not SLUG_RE.match(slug):
            raise NotFound(f"no connection {slug!r}")
        path = self._path("connections", slug)
        found = await self._read(path)
        if found is None:
            raise NotFound(f"no connection {slug!r}")
        return self._conn_from(found[0], found[1], path)

    async def list_connections(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Connection]:
        check_limit(limit)
        after = _decode_cursor(cursor)
        slugs = [
            s for s in await self._list(self._path("connections")) if after is None or s > after
        ]
        page, more = slugs[:limit], len(slugs) > limit

        async def fetch(slug: str) -> Connection | None:
            try:
                return await self.get_connection(slug)
            except NotFound:
                return None  # deleted between LIST and GET

        items = [c for c in await self._gather(page, fetch) if c is not None]
        return Page(items, _encode_cursor(page[-1]) if more and page else None)

    async def update_connection(
        self,
        connection: Connection,
        *,
        expected_version: int,
        audit_events: Sequence[AuditEvent] = (),
    ) -> Connection:
        current = await self.get_connection(connection.slug)
        if current.version != expected_version:
            raise VersionConflict(
                f"connection {connection.slug!r} changed meanwhile (version {current.version}, "
                f"expected {expected_version})"
            )
        updated = attrs.evolve(connection, created_at=current.created_at)
        path = self._path("connections", connection.slug)
        version = await self._write(path, self._conn_data(updated), cas=expected_version)
        if version is None:
            if await self._read(path) is None:
                raise NotFound(f"no connection {connection.slug!r}")
            raise VersionConflict(f"connection {connection.slug!r} changed meanwhile")
        self._notify(Change("connection", connection.slug))
        return attrs.evolve(updated, version=version)

    async def delete_connection(
        self, slug: str, *, audit_events: Sequence[AuditEvent] = ()
    ) -> None:
        await self.get_connection(slug)
        await self._destroy(self._path("connections", slug))
        await self.delete_oauth_grants(slug)
        self._notify(Change("connection", slug))

    # -- OAuth grants: one secret per (slug, user), KV check-and-set as the guard --
    def _grant_path(self, slug: str, user: str) -> str:
        # The user is any text: hex keeps it one path segment.
        return self._path("oauth-grants", slug, user.encode().hex() or "-")

    async def get_oauth_grant(self, slug: str, user: str = "") -> OAuthGrant | None:
        path = self._grant_path(slug, user)
        found = await self._read(path)
        if found is None:
            return None
        data, version = found
        try:
            ct = data.get("ciphertext")
            lifetime = data.get("lifetime")
            return OAuthGrant(
                slug=slug,
                user=user,
                ciphertext=base64.b64decode(ct, validate=True) if ct is not None else None,
                expires_at=_parse_time(data.get("expires_at")),
                lifetime=float(lifetime) if lifetime is not None else None,
                status=str(data["status"]),
                lease_until=_parse_time(data.get("lease_until")),
                version=version,
                updated_at=_need_time(data["updated_at"]),
            )
        except (KeyError, ValueError, TypeError, binascii.Error) as exc:
            raise StoreUnavailable(
                f"{self._client.where}: the secret at {path!r} is not an igris-mw OAuth grant",
                code="vault_bad_record",
            ) from exc

    async def list_oauth_grants(self, slug: str) -> list[OAuthGrant]:
        names = await self._list(self._path("oauth-grants", slug))
        users = [bytes.fromhex(n).decode() if n != "-" else "" for n in names]
        found = await self._gather(sorted(users), lambda u: self.get_oauth_grant(slug, u))
        return [g for g in found if g is not None]

    async def put_oauth_grant(self, grant: OAuthGrant, *, expected_version: int) -> bool:
        g = grant
        data = {
            "ciphertext": base64.b64encode(g.ciphertext).decode()
            if g.ciphertext is not None
            else None,
            "expires_at": _time(g.expires_at),
            "lifetime": g.lifetime,
            "status": g.status,
            "lease_until": _time(g.lease_until),
            "updated_at": _time(g.updated_at),
        }
        version = await self._write(self._grant_path(g.slug, g.user), data, cas=expected_version)
        return version is not None

    async def delete_oauth_grants(self, slug: str, user: str | None = None) -> None:
        if user is not None:
            await self._destroy(self._grant_path(slug, user))
            return
        for name in await self._list(self._path("oauth-grants", slug)):
            await self._destroy(self._path("oauth-grants", slug, name))

    # -- gateway API keys --------------------------------------------------------
    @staticmethod
    def _key_data(k: ApiKey) -> dict[str, Any]:
        return {
            "id": k.id,
            "name": k.name,
            "key_hash": k.key_hash.hex(),
            "scopes": sorted(s.value for s in k.scopes),
            "connections": sorted(k.connections) if k.connections is not None else None,
            "created_at": _time(k.created_at),
            "expires_at": _time(k.expires_at),
            "revoked_at": _time(k.revoked_at),
            "user": k.user,
            "policy": policy_to_json(k),
        }

    def _key_from(self, data: Mapping[str, Any], path: str) -> ApiKey:
        try:
            conns = data.get("connections")
            return ApiKey(
                id=str(data["id"]),
                name=str(data["name"]),
                key_hash=bytes.fromhex(data["key_hash"]),
                scopes=frozenset(Scope(s) for s in data["scopes"]),
                connections=frozenset(conns) if conns is not None else None,
                created_at=_need_time(data["created_at"]),
                expires_at=_parse_time(data.get("expires_at")),
                revoked_at=_parse_time(data.get("revoked_at")),
                user=data.get("user"),
                **policy_from_json(data.get("policy")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreUnavailable(
                f"{self._client.where}: the secret at {path!r} is not an igris-mw API key",
                code="vault_bad_record",
            ) from exc

    async def create_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        if not _ID_RE.match(key.id):
            raise ValidationError("id", "must be 1-128 letters, digits, '_', '.' or '-'")
        path = self._path("api-keys", key.id)
        if await self._write(path, self._key_data(key), cas=0) is None:
            raise Conflict(f"an API key with id {key.id!r} exists")
        index = self._path("api-key-hashes", key.key_hash.hex())
        if await self._write(index, {"id": key.id}, cas=0) is None:
            await self._destroy(path)
            raise Conflict("an API key with this hash exists")
        self._notify(Change("api_key", key.id))
        return key

    async def _get_key(self, key_id: str) -> tuple[ApiKey, int] | None:
        if not _ID_RE.match(key_id):
            return None
        path = self._path("api-keys", key_id)
        found = await self._read(path)
        return None if found is None else (self._key_from(found[0], path), found[1])

    async def get_api_key_by_hash(self, key_hash: bytes) -> ApiKey | None:
        found = await self._read(self._path("api-key-hashes", key_hash.hex()))
        if found is None or not isinstance(found[0].get("id"), str):
            return None
        record = await self._get_key(found[0]["id"])
        if record is None or not hmac.compare_digest(record[0].key_hash, key_hash):
            return None
        return record[0]

    async def list_api_keys(self) -> list[ApiKey]:
        ids = await self._list(self._path("api-keys"))
        found = await self._gather(ids, self._get_key)
        keys = [f[0] for f in found if f is not None]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def update_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        for _ in range(_REVOKE_RETRIES):
            found = await self._get_key(key.id)
            if found is None:
                raise NotFound(f"no API key {key.id!r}")
            current, version = found
            updated = attrs.evolve(
                current,
                name=key.name,
                connections=key.connections,
                expires_at=key.expires_at,
                rate_limit=key.rate_limit,
                tools=key.tools,
                max_concurrent=key.max_concurrent,
            )
            path = self._path("api-keys", key.id)
            if await self._write(path, self._key_data(updated), cas=version) is not None:
                self._notify(Change("api_key", key.id))
                return updated
        raise VersionConflict(f"API key {key.id!r} kept changing; retry")

    async def revoke_api_key(
        self, key_id: str, *, at: datetime, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        for _ in range(_REVOKE_RETRIES):
            found = await self._get_key(key_id)
            if found is None:
                raise NotFound(f"no API key {key_id!r}")
            key, version = found
            if key.revoked_at is not None:
                return key
            revoked = attrs.evolve(key, revoked_at=at)
            path = self._path("api-keys", key_id)
            if await self._write(path, self._key_data(revoked), cas=version) is not None:
                self._notify(Change("api_key", key_id))
                return revoked
        raise VersionConflict(f"API key {key_id!r} kept changing; retry")

    # -- audit: not here -----------------------------------------------------------
    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        raise ConfigurationError(AUDIT_HINT)

    async def list_audit_events(
        self,
        connection: str | None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]:
        raise ConfigurationError(AUDIT_HINT)

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        raise ConfigurationError(AUDIT_HINT)

    async def audit_connections(self) -> list[str]:
        raise ConfigurationError(AUDIT_HINT)

    async def use_audit_key(self, key: AuditKey | None) -> None:
        """Nothing to seal here: the separate sink gets the key."""

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        raise ConfigurationError(AUDIT_HINT)

    async def list_all_audit_events(
        self, query: AuditQuery, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        raise ConfigurationError(AUDIT_HINT)


# A JSON cursor rather than ``igris_mw.paging.encode_cursor``'s prefix form:
# kept so that cursors handed out before stay valid.
def _encode_cursor(slug: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": slug}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        after = None
    if not isinstance(after, str) or not SLUG_RE.match(after):
        raise bad_cursor()
    return after
