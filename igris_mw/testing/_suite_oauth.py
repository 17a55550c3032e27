"""The storage suite: OAuth connections, per-user credentials and their grants."""

from __future__ import annotations

import asyncio

import attrs

from ..models import AuthType, OAuthGrant
from ..storage import Store
from ._suite_base import SuiteBase
from ._suite_data import at, make_api_key, make_connection

__all__ = ["OAuthGrantTests"]


class OAuthGrantTests(SuiteBase):
    """The oauth object and credential scope of connections, API key users, grant rows."""

    async def test_oauth_object_round_trips_and_updates(self, store: Store) -> None:
        """An OAuth connection's oauth object is stored, read back and replaced by update."""
        oauth = {
            "clientId": "client-ü",
            "scopes": ["mcp:tools", "offline_access"],
            "tokenUrl": "https://as.example/token?tenant=1",
            "resource": "https://mcp.example/mcp",
        }
        given = make_connection(
            "oauth-cc", auth_type=AuthType.OAUTH2_CLIENT_CREDENTIALS, oauth=oauth
        )
        created = await store.create_connection(given)
        assert created.oauth == oauth
        assert (await store.get_connection("oauth-cc")).oauth == oauth
        changed = attrs.evolve(created, oauth={**oauth, "scopes": []})
        updated = await store.update_connection(changed, expected_version=1)
        assert (await store.get_connection("oauth-cc")).oauth == updated.oauth
        assert updated.oauth is not None
        assert updated.oauth["scopes"] == []
        plain = await store.create_connection(make_connection("not-oauth"))
        assert plain.oauth is None

    async def test_oauth_grant_compare_and_set(self, store: Store) -> None:
        """put_oauth_grant writes only at the expected version and bumps it by one."""
        assert await store.get_oauth_grant("granted") is None
        first = OAuthGrant(
            slug="granted",
            ciphertext=bytes(range(256)),
            expires_at=at(5),
            lifetime=3600.0,
            updated_at=at(1),
        )
        assert await store.put_oauth_grant(first, expected_version=0)
        assert not await store.put_oauth_grant(first, expected_version=0)
        got = await store.get_oauth_grant("granted")
        assert got == attrs.evolve(first, version=1)
        claim = attrs.evolve(got, status="refreshing", lease_until=at(9), updated_at=at(2))
        assert not await store.put_oauth_grant(claim, expected_version=2)
        assert await store.put_oauth_grant(claim, expected_version=1)
        assert await store.get_oauth_grant("granted") == attrs.evolve(claim, version=2)
        cleared = attrs.evolve(
            claim,
            ciphertext=None,
            expires_at=None,
            lifetime=None,
            lease_until=None,
            status="reauthorization_required",
        )
        assert await store.put_oauth_grant(cleared, expected_version=2)
        assert await store.get_oauth_grant("granted") == attrs.evolve(cleared, version=3)

    async def test_oauth_grants_are_per_user_and_deleted_with_their_connection(
        self, store: Store
    ) -> None:
        """Each (slug, user) is its own row; deleting the connection deletes its grants."""
        await store.create_connection(make_connection("with-grants"))
        for user in ("", "alice", "bob ü/..", "x" * 200):
            grant = OAuthGrant(slug="with-grants", user=user, ciphertext=user.encode() or b"-",
                               updated_at=at(1))  # fmt: skip
            assert await store.put_oauth_grant(grant, expected_version=0)
        alice = await store.get_oauth_grant("with-grants", "alice")
        assert alice is not None
        assert alice.ciphertext == b"alice"
        await store.delete_oauth_grants("with-grants", "alice")
        assert await store.get_oauth_grant("with-grants", "alice") is None
        assert await store.get_oauth_grant("with-grants", "bob ü/..") is not None
        await store.delete_connection("with-grants")
        for user in ("", "bob ü/..", "x" * 200):
            assert await store.get_oauth_grant("with-grants", user) is None

    async def test_per_user_scope_key_user_and_grant_listing_round_trip(self, store: Store) -> None:
        """credential_scope, an API key's user, and list_oauth_grants (ordered by user)."""
        created = await store.create_connection(
            make_connection("per-user", credential_scope="per_user", ciphertext=None)
        )
        assert created.credential_scope == "per_user"
        assert (await store.get_connection("per-user")).credential_scope == "per_user"
        assert (await store.create_connection(make_connection("shared"))).credential_scope == (
            "shared"
        )
        key = await store.create_api_key(make_api_key("key_alice", user="alice ü"))
        assert key.user == "alice ü"
        assert (await store.get_api_key_by_hash(key.key_hash)) == key
        assert (await store.create_api_key(make_api_key("key_nobody"))).user is None
        for user in ("zed", "", "alice"):
            grant = OAuthGrant(slug="per-user", user=user, status="static", updated_at=at(1))
            assert await store.put_oauth_grant(grant, expected_version=0)
        listed = await store.list_oauth_grants("per-user")
        assert [g.user for g in listed] == ["", "alice", "zed"]
        assert all(g.status == "static" for g in listed)
        assert await store.list_oauth_grants("nobody-here") == []

    async def test_concurrent_grant_writers_one_wins(self, store: Store) -> None:
        """Of 10 writers at the same expected version, exactly one writes."""
        base = OAuthGrant(slug="race", updated_at=at(1))
        assert await store.put_oauth_grant(base, expected_version=0)
        results = await asyncio.gather(
            *(
                store.put_oauth_grant(attrs.evolve(base, ciphertext=bytes([i])), expected_version=1)
                for i in range(10)
            )
        )
        assert results.count(True) == 1
        got = await store.get_oauth_grant("race")
        assert got is not None
        assert got.version == 2
        assert got.ciphertext == bytes([results.index(True)])
