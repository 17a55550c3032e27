"""The service layer: validation, sealing, rotation, audit, API keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from igris_mw import _auth
from igris_mw._errors import (
    InvalidCiphertext,
    NotFound,
    SlugTaken,
    Unauthorized,
    ValidationError,
    VersionConflict,
)
from igris_mw._service import Service
from igris_mw.crypto import binding
from igris_mw.models import AuditEvent, AuthType, Connection, Page, Scope
from igris_mw.storage import AuditKey, ChainAnchor, ChainHead
from igris_mw.testing import FixedKeyring, MemoryStore

CANARY = "canary-Zq8vX1-credential"
CANARY2 = "canary-Pw4nR7-rotated"
T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def svc(store: MemoryStore, clock: Clock) -> Service:
    return Service(store, FixedKeyring(), clock=clock)


def body(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "slug": "gh-prod",
        "name": "GitHub",
        "upstreamUrl": "https://mcp.example/mcp",
        "credential": CANARY,
    }
    out.update(over)
    return {k: v for k, v in out.items() if v is not ...}


async def snapshot(svc: Service) -> dict[str, Any]:
    """Everything the store holds, ciphertexts included."""
    conns: list[Connection] = []
    cursor = None
    while True:
        page = await svc.store.list_connections(limit=200, cursor=cursor)
        conns.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    audit = {
        slug: [e.to_json() for e in await svc.store.audit_chain(slug)]
        for slug in await svc.store.audit_connections()
    }
    keys = [(k, k.key_hash) for k in await svc.store.list_api_keys()]
    return {
        "connections": [(c, c.ciphertext) for c in conns],
        "keys": keys,
        "audit": audit,
    }


def assert_no_canary(*texts: object) -> None:
    for text in texts:
        rendered = text if isinstance(text, str) else repr(text)
        assert CANARY not in rendered
        assert CANARY2 not in rendered


# -- create ---------------------------------------------------------------


async def test_create_seals_credential_and_records_event(svc: Service) -> None:
    """Create stores an envelope bound to the record and one 'create' event."""
    conn = await svc.create_connection(body(), actor="key_admin")
    assert conn.credential_version == 1
    assert conn.enabled
    assert conn.ciphertext is not None
    assert CANARY.encode() not in conn.ciphertext
    secret = await svc.open_credential(conn)
    assert secret is not None
    assert secret.reveal() == CANARY.encode()
    ad = binding("gh-prod", 1, "https://mcp.example/mcp", "bearer")
    assert await svc.crypto.decrypt(conn.ciphertext, ad) == CANARY.encode()
    events = (await svc.list_audit("gh-prod")).items
    assert [(e.kind, e.action, e.api_key_id, e.credential_version) for e in events] == [
        ("management", "create", "key_admin", 1)
    ]
    assert_no_canary(conn, events[0].to_json(), json.dumps(conn.to_json()))


async def test_create_none_has_no_credential(svc: Service) -> None:
    """authType none stores no envelope and opens to None."""
    conn = await svc.create_connection(body(authType="none", credential=...))
    assert conn.ciphertext is None
    assert await svc.open_credential(conn) is None


async def test_create_header_and_basic(svc: Service) -> None:
    """header keeps its header name; basic accepts user:password."""
    h = await svc.create_connection(body(slug="hdr", authType="header", headerName="X-Api-Key"))
    assert h.header_name == "X-Api-Key"
    b = await svc.create_connection(body(slug="bas", authType="basic", credential="u:" + CANARY))
    secret = await svc.open_credential(b)
    assert secret is not None
    assert secret.reveal() == ("u:" + CANARY).encode()


BAD_CREATES: list[tuple[Any, str]] = [
    ("not an object", "body"),
    (body(bogus=1), "bogus"),
    (body(credentialVersion=3), "credentialVersion"),
    ({**body(), "ig_secret-" + CANARY: 1}, "body"),
    (body(slug=...), "slug"),
    (body(slug="A-bad-slug"), "slug"),
    (body(slug=12345), "slug"),
    (body(name=""), "name"),
    (body(name=["x"]), "name"),
    (body(upstreamUrl="ftp://host/x"), "upstreamUrl"),
    (body(upstreamUrl="https://user:pw@host/x"), "upstreamUrl"),
    (body(authType="oauth"), "authType"),
    (body(authType="header"), "headerName"),
    (body(authType="header", headerName="X-Key\r\nEvil: 1"), "headerName"),
    (body(headerName="X-Key"), "headerName"),
    (body(credential=...), "credential"),
    (body(authType="none"), "credential"),
    (body(credential=CANARY + "\r\nX-Evil: 1"), "credential"),
    (body(credential=CANARY + "\x00"), "credential"),
    (body(credential=""), "credential"),
    (body(credential=12345), "credential"),
    (body(authType="basic"), "credential"),
    (body(enabled="yes"), "enabled"),
]


@pytest.mark.parametrize(("payload", "field"), BAD_CREATES)
async def test_bad_create_names_field_and_changes_nothing(
    svc: Service, payload: Any, field: str
) -> None:
    """Each invalid create is a ValidationError naming its field; nothing is stored."""
    await svc.create_connection(body(slug="existing"))
    before = await snapshot(svc)
    with pytest.raises(ValidationError) as info:
        await svc.create_connection(payload)
    assert info.value.field == field
    assert info.value.status == 422
    assert_no_canary(str(info.value), repr(info.value), info.value.to_json())
    assert await snapshot(svc) == before


async def test_taken_slug_changes_nothing(svc: Service) -> None:
    """A taken slug raises SlugTaken and leaves the stored record as it was."""
    await svc.create_connection(body())
    before = await snapshot(svc)
    with pytest.raises(SlugTaken):
        await svc.create_connection(body(name="Other", credential=CANARY2))
    assert await snapshot(svc) == before


# -- update / re-seal ------------------------------------------------------


async def test_upstream_change_reseals_under_new_binding(svc: Service) -> None:
    """A new upstreamUrl re-seals: the new envelope opens only under the new binding."""
    old = await svc.create_connection(body())
    new = await svc.update_connection("gh-prod", {"upstreamUrl": "https://other.example/mcp"})
    assert new.ciphertext is not None
    assert old.ciphertext is not None
    assert new.ciphertext != old.ciphertext
    new_ad = binding("gh-prod", 1, "https://other.example/mcp", "bearer")
    old_ad = binding("gh-prod", 1, "https://mcp.example/mcp", "bearer")
    assert await svc.crypto.decrypt(new.ciphertext, new_ad) == CANARY.encode()
    with pytest.raises(InvalidCiphertext):
        await svc.crypto.decrypt(new.ciphertext, old_ad)
    with pytest.raises(InvalidCiphertext):
        await svc.crypto.decrypt(old.ciphertext, new_ad)
    secret = await svc.open_credential(await svc.get_connection("gh-prod"))
    assert secret is not None
    assert secret.reveal() == CANARY.encode()


async def test_auth_type_change_reseals_and_header_rules(svc: Service) -> None:
    """bearer -> header needs headerName and re-seals; header -> bearer drops it."""
    await svc.create_connection(body())
    with pytest.raises(ValidationError) as info:
        await svc.update_connection("gh-prod", {"authType": "header"})
    assert info.value.field == "headerName"
    conn = await svc.update_connection("gh-prod", {"authType": "header", "headerName": "X-Key"})
    assert conn.auth_type is AuthType.HEADER
    assert conn.header_name == "X-Key"
    secret = await svc.open_credential(conn)
    assert secret is not None
    assert secret.reveal() == CANARY.encode()
    back = await svc.update_connection("gh-prod", {"authType": "bearer"})
    assert back.header_name is None
    secret = await svc.open_credential(back)
    assert secret is not None
    assert secret.reveal() == CANARY.encode()


async def test_switch_to_none_drops_credential_and_back_needs_rotate(svc: Service) -> None:
    """Switching to none drops the envelope; leaving none by PATCH is refused."""
    await svc.create_connection(body())
    conn = await svc.update_connection("gh-prod", {"authType": "none"})
    assert conn.ciphertext is None
    before = await snapshot(svc)
    with pytest.raises(ValidationError) as info:
        await svc.update_connection("gh-prod", {"authType": "bearer"})
    assert info.value.field == "authType"
    assert "rotate" in info.value.message
    assert await snapshot(svc) == before
    rotated = await svc.rotate_credential("gh-prod", CANARY2, auth_type="bearer")
    assert rotated.auth_type is AuthType.BEARER
    assert rotated.credential_version == 2
    secret = await svc.open_credential(rotated)
    assert secret is not None
    assert secret.reveal() == CANARY2.encode()


async def test_switch_to_basic_needs_user_password(svc: Service) -> None:
    """bearer -> basic is refused when the stored credential has no colon."""
    await svc.create_connection(body())
    before = await snapshot(svc)
    with pytest.raises(ValidationError) as info:
        await svc.update_connection("gh-prod", {"authType": "basic"})
    assert info.value.field == "authType"
    assert_no_canary(str(info.value))
    assert await snapshot(svc) == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"credential": CANARY2}, "credential"),
        ({"slug": "new-slug"}, "slug"),
        ({"name": ""}, "name"),
        ({"upstreamUrl": "not a url"}, "upstreamUrl"),
        ({"authType": "magic"}, "authType"),
        ({"headerName": "bad header"}, "headerName"),
        ({"headerName": "X-Key"}, "headerName"),
        ({"enabled": 0}, "enabled"),
        ({"createdAt": "2020-01-01T00:00:00Z"}, "createdAt"),
        ([1, 2], "body"),
    ],
)
async def test_bad_update_names_field_and_changes_nothing(
    svc: Service, changes: Any, field: str
) -> None:
    """Each invalid PATCH names its field and leaves the store as it was."""
    await svc.create_connection(body())
    before = await snapshot(svc)
    with pytest.raises(ValidationError) as info:
        await svc.update_connection("gh-prod", changes)
    assert info.value.field == field
    assert_no_canary(str(info.value))
    assert await snapshot(svc) == before


async def test_update_unknown_slug(svc: Service) -> None:
    """PATCH of an unknown slug is NotFound."""
    with pytest.raises(NotFound):
        await svc.update_connection("nope-slug", {"name": "x"})


# -- rotate ----------------------------------------------------------------


async def test_rotate_bumps_version_and_replaces_envelope(svc: Service, clock: Clock) -> None:
    """Rotate: credentialVersion + 1, rotatedAt set, the old envelope no longer opens."""
    old = await svc.create_connection(body())
    clock.advance(5)
    new = await svc.rotate_credential("gh-prod", CANARY2, actor="key_admin")
    assert new.credential_version == 2
    assert new.rotated_at == clock.now
    assert new.updated_at == clock.now
    assert new.version == old.version + 1
    stored = await svc.get_connection("gh-prod")
    assert stored.ciphertext == new.ciphertext != old.ciphertext
    assert old.ciphertext is not None
    assert new.ciphertext is not None
    with pytest.raises(InvalidCiphertext):
        # The old envelope is bound to credential version 1: it cannot stand in for v2.
        await svc.crypto.decrypt(old.ciphertext, binding("gh-prod", 2, old.upstream_url, "bearer"))
    secret = await svc.open_credential(stored)
    assert secret is not None
    assert secret.reveal() == CANARY2.encode()
    last = (await svc.list_audit("gh-prod", limit=1)).items[0]
    assert (last.action, last.credential_version, last.api_key_id) == ("rotate", 2, "key_admin")


@pytest.mark.parametrize(
    ("credential", "kwargs", "field"),
    [
        (None, {}, "credential"),
        ("", {}, "credential"),
        (CANARY2 + "\n", {}, "credential"),
        (CANARY2, {"auth_type": "none"}, "authType"),
        (CANARY2, {"auth_type": "basic"}, "credential"),
        (CANARY2, {"auth_type": "header"}, "headerName"),
        (CANARY2, {"auth_type": "weird"}, "authType"),
    ],
)
async def test_bad_rotate_changes_nothing(
    svc: Service, credential: Any, kwargs: dict[str, Any], field: str
) -> None:
    """An invalid rotate names its field and writes nothing."""
    await svc.create_connection(body())
    before = await snapshot(svc)
    with pytest.raises(ValidationError) as info:
        await svc.rotate_credential("gh-prod", credential, **kwargs)
    assert info.value.field == field
    assert_no_canary(str(info.value))
    assert await snapshot(svc) == before


async def test_rotate_none_connection_needs_auth_type(svc: Service) -> None:
    """A credential for an authType none connection without a new type is refused."""
    await svc.create_connection(body(authType="none", credential=...))
    with pytest.raises(ValidationError) as info:
        await svc.rotate_credential("gh-prod", CANARY2)
    assert info.value.field == "credential"


class RacingStore(MemoryStore):
    """Lets another writer slip in before each of the first ``races`` guarded writes."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.attempts = 0

    async def update_connection(
        self,
        connection: Connection,
        *,
        expected_version: int,
        audit_events: Sequence[AuditEvent] = (),
    ) -> Connection:
        self.attempts += 1
        if self.races:
            self.races -= 1
            current = await self.get_connection(connection.slug)
            await super().update_connection(
                attrs.evolve(current, name=f"renamed {self.attempts}"),
                expected_version=current.version,
            )
        return await super().update_connection(
            connection, expected_version=expected_version, audit_events=audit_events
        )


async def test_rotate_retries_after_a_lost_race(clock: Clock) -> None:
    """A rotate that loses a race re-reads and keeps the other writer's change."""
    store = RacingStore(races=2)
    svc = Service(store, FixedKeyring(), clock=clock)
    await svc.create_connection(body())
    conn = await svc.rotate_credential("gh-prod", CANARY2)
    assert store.attempts == 3
    assert conn.credential_version == 2
    assert conn.name == "renamed 2"
    secret = await svc.open_credential(await svc.get_connection("gh-prod"))
    assert secret is not None
    assert secret.reveal() == CANARY2.encode()


async def test_rotate_gives_up_after_repeated_races(clock: Clock) -> None:
    """A rotate that keeps losing raises VersionConflict and records no event."""
    store = RacingStore(races=100)
    svc = Service(store, FixedKeyring(), clock=clock)
    await svc.create_connection(body())
    with pytest.raises(VersionConflict):
        await svc.rotate_credential("gh-prod", CANARY2)
    assert [e.action for e in (await svc.list_audit("gh-prod")).items] == ["create"]
    assert (await svc.get_connection("gh-prod")).credential_version == 1


# -- enable / disable / delete / audit -------------------------------------


async def test_every_change_records_one_management_event(svc: Service) -> None:
    """create, update, rotate, disable, enable, delete each append one event, in order."""
    await svc.create_connection(body(), actor="key_a")
    await svc.update_connection("gh-prod", {"name": "Renamed"}, actor="key_b")
    await svc.rotate_credential("gh-prod", CANARY2, actor="key_c")
    await svc.set_enabled("gh-prod", False, actor="key_d")
    await svc.set_enabled("gh-prod", False, actor="key_d")  # no change: no event
    await svc.set_enabled("gh-prod", True, actor="key_e")
    await svc.delete_connection("gh-prod", actor="key_f")
    with pytest.raises(NotFound):
        await svc.get_connection("gh-prod")
    events = list(reversed((await svc.list_audit("gh-prod")).items))
    assert [(e.action, e.api_key_id, e.credential_version) for e in events] == [
        ("create", "key_a", 1),
        ("update", "key_b", 1),
        ("rotate", "key_c", 2),
        ("disable", "key_d", 2),
        ("enable", "key_e", 2),
        ("delete", "key_f", 2),
    ]
    assert all(e.kind == "management" and e.outcome == "ok" for e in events)
    assert len({e.id for e in events}) == 6
    assert all(e.id.startswith("evt_") for e in events)
    assert await svc.verify_audit("gh-prod") == {"gh-prod": []}
    assert_no_canary(*(json.dumps(e.to_json()) for e in events), *events)


async def test_patch_enabled_alone_records_disable(svc: Service) -> None:
    """PATCH {enabled: false} is recorded as 'disable'."""
    await svc.create_connection(body())
    conn = await svc.update_connection("gh-prod", {"enabled": False})
    assert not conn.enabled
    assert (await svc.list_audit("gh-prod", limit=1)).items[0].action == "disable"


async def test_unknown_slugs_are_not_found(svc: Service) -> None:
    """show, rotate, disable, delete and audit of an unknown slug are NotFound."""
    for call in (
        svc.get_connection("missing"),
        svc.rotate_credential("missing", CANARY2),
        svc.set_enabled("missing", False),
        svc.delete_connection("missing"),
        svc.list_audit("missing"),
        svc.verify_audit("missing"),
    ):
        with pytest.raises(NotFound):
            await call
    assert await snapshot(svc) == {"connections": [], "keys": [], "audit": {}}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": True}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2030-01-01T00:00:00"}, "since"),
        ({"since": 12}, "since"),
    ],
)
async def test_list_audit_validates(svc: Service, kwargs: dict[str, Any], field: str) -> None:
    """Bad limit or since is a ValidationError naming it."""
    await svc.create_connection(body())
    with pytest.raises(ValidationError) as info:
        await svc.list_audit("gh-prod", **kwargs)
    assert info.value.field == field


async def test_list_audit_since_and_limit(svc: Service, clock: Clock) -> None:
    """since keeps only events at or after it."""
    await svc.create_connection(body())
    clock.advance(60)
    await svc.set_enabled("gh-prod", False)
    page = await svc.list_audit("gh-prod", since="2030-01-01T12:00:30Z", limit=10)
    assert [e.action for e in page.items] == ["disable"]


@pytest.mark.parametrize("limit", [0, 201, -1, True, "x"])
async def test_list_connections_limit(svc: Service, limit: Any) -> None:
    """list_connections refuses a limit outside 1-200."""
    with pytest.raises(ValidationError) as info:
        await svc.list_connections(limit=limit)
    assert info.value.field == "limit"


class TamperingSink:
    """Hands out one connection's chain with one event edited."""

    def __init__(self, store: MemoryStore, page_size: int) -> None:
        self.store = store
        self.page_size = page_size

    async def use_audit_key(self, key: AuditKey | None) -> None:
        await self.store.use_audit_key(key)

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        return await self.store.audit_heads()

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        await self.store.append_audit_events(events)

    async def list_audit_events(self, connection: str, **kw: Any) -> Page[AuditEvent]:
        return await self.store.list_audit_events(connection, **kw)

    async def audit_chain(
        self, connection: str, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        events = await self.store.audit_chain(
            connection, after_seq=after_seq, limit=min(limit, self.page_size)
        )
        return [attrs.evolve(e, outcome="denied") if e.seq == 3 else e for e in events]

    async def audit_connections(self) -> list[str]:
        return await self.store.audit_connections()


async def test_verify_audit_pages_and_finds_an_edited_event(store: MemoryStore) -> None:
    """verify_audit walks the whole chain in pages and reports the edited event."""
    svc = Service(store, FixedKeyring(), audit=TamperingSink(store, page_size=2))
    await svc.create_connection(body())
    await svc.create_connection(body(slug="other"))
    for _ in range(3):
        await svc.set_enabled("gh-prod", False)
        await svc.set_enabled("gh-prod", True)
    report = await svc.verify_audit()
    assert report["other"] == []
    assert len(report["gh-prod"]) == 1
    assert "seq 3" in report["gh-prod"][0]
    assert "edited" in report["gh-prod"][0]


# -- API keys ---------------------------------------------------------------


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def get_api_key_by_hash(self, key_hash: bytes) -> Any:
        self.lookups += 1
        return await super().get_api_key_by_hash(key_hash)


async def test_api_key_lifecycle(clock: Clock) -> None:
    """A created key authenticates; revoked, expired, unknown and malformed keys do not."""
    store = CountingStore()
    svc = Service(store, FixedKeyring(), clock=clock)
    record, key = await svc.create_api_key(
        {
            "name": "ci",
            "scopes": ["mcp"],
            "connections": ["gh-prod"],
            "expiresAt": "2030-01-02T00:00:00Z",
        }
    )
    assert _auth.is_well_formed(key)
    assert record.key_hash == hashlib.sha256(key.encode()).digest()
    assert record.scopes == frozenset({Scope.MCP})
    assert record.connections == frozenset({"gh-prod"})
    assert key not in repr(record)
    assert key not in json.dumps(record.to_json())
    assert (await svc.authenticate(key)).id == record.id

    messages = []
    typo = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    for bad in (typo, "ig_short", "", "Bearer " + key):
        lookups = store.lookups
        with pytest.raises(Unauthorized) as info:
            await svc.authenticate(bad)
        assert store.lookups == lookups, "malformed keys must not reach the store"
        messages.append(info.value.message)
    with pytest.raises(Unauthorized) as info:
        await svc.authenticate(_auth.generate_key())
    messages.append(info.value.message)

    clock.advance(86400)
    with pytest.raises(Unauthorized) as info:
        await svc.authenticate(key)
    messages.append(info.value.message)
    clock.now = T0
    await svc.revoke_api_key(record.id)
    with pytest.raises(Unauthorized) as info:
        await svc.authenticate(key)
    messages.append(info.value.message)
    assert "revoked" in messages[-1]
    assert "expired" in messages[-2]
    assert all(key[3:20] not in m for m in messages)
    listed = await svc.list_api_keys()
    assert [k.id for k in listed] == [record.id]
    assert listed[0].revoked_at == T0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": "admin"}, "scopes"),
        ({"name": "x"}, "scopes"),
        ({"scopes": ["admin"]}, "name"),
        ({"name": "", "scopes": ["admin"]}, "name"),
        ({"name": "x", "scopes": ["admin"], "connections": ["gh-prod"]}, "connections"),
        ({"name": "x", "scopes": ["mcp"], "connections": []}, "connections"),
        ({"name": "x", "scopes": ["mcp"], "connections": ["BAD SLUG"]}, "connections"),
        ({"name": "x", "scopes": ["mcp"], "expiresAt": "2020-01-01T00:00:00Z"}, "expiresAt"),
        ({"name": "x", "scopes": ["mcp"], "expiresAt": "tomorrow"}, "expiresAt"),
        ({"name": "x", "scopes": ["mcp"], "expiresAt": 5}, "expiresAt"),
        ({"name": "x", "scopes": ["mcp"], "key": "ig_x"}, "key"),
        ("admin", "body"),
    ],
)
async def test_bad_api_key_body_names_field(svc: Service, payload: Any, field: str) -> None:
    """Each invalid API key request names its field and stores nothing."""
    with pytest.raises(ValidationError) as info:
        await svc.create_api_key(payload)
    assert info.value.field == field
    assert await svc.list_api_keys() == []


async def test_revoke_unknown_key(svc: Service) -> None:
    """Revoking an unknown key id is NotFound."""
    with pytest.raises(NotFound):
        await svc.revoke_api_key("key_0000000000000000")


async def test_canary_never_leaks(svc: Service) -> None:
    """Across a whole lifecycle and its errors, the credential shows in no message or event."""
    seen: list[object] = []
    conn = await svc.create_connection(body(), actor="key_x")
    seen += [conn, conn.to_json(), await svc.open_credential(conn)]
    for bad in (
        body(slug="other", credential=CANARY + "\n"),
        body(slug="other", authType="basic"),
        body(slug="other", authType="none"),
        {**body(slug="other"), CANARY: CANARY},
    ):
        with pytest.raises(ValidationError) as info:
            await svc.create_connection(bad)
        seen += [str(info.value), repr(info.value), info.value.to_json()]
    with pytest.raises(ValidationError) as info:
        await svc.update_connection("gh-prod", {"credential": CANARY2})
    seen += [str(info.value)]
    with pytest.raises(ValidationError) as info:
        await svc.update_connection("gh-prod", {"authType": "basic"})
    seen += [str(info.value)]
    rotated = await svc.rotate_credential("gh-prod", CANARY2)
    seen += [rotated, rotated.to_json(), await svc.open_credential(rotated)]
    events = await svc.store.audit_chain("gh-prod")
    seen += [json.dumps(e.to_json()) for e in events] + list(events)
    assert_no_canary(*seen)


@pytest.mark.parametrize("auth_type", ["bearer", "header"])
async def test_credential_that_cannot_be_sent_as_a_header_is_refused(auth_type: str) -> None:
    """A non-ASCII bearer/header credential is a 422 at create, never a failure per request."""
    from igris_mw import ValidationError
    from igris_mw._service import Service
    from igris_mw.testing import FixedKeyring, MemoryStore

    svc = Service(MemoryStore(), FixedKeyring())
    body = {
        "slug": "conn-x",
        "name": "X",
        "upstreamUrl": "https://x.example/mcp",
        "authType": auth_type,
        "credential": "tok\u00e9n-\u2603",
    }
    if auth_type == "header":
        body["headerName"] = "X-Api-Key"
    with pytest.raises(ValidationError) as info:
        await svc.create_connection(body)
    assert info.value.field == "credential"
    assert "\u2603" not in str(info.value)
    assert (await svc.list_connections()).items == []
    body["authType"], body["credential"] = "basic", "us\u00e9r:p\u2603ss"
    body.pop("headerName", None)
    assert (await svc.create_connection(body)).auth_type.value == "basic"
