"""Grants and consent flows sealed in the store: shared by processes, single-use, bound."""

from __future__ import annotations

import asyncio
import time

import attrs
import pytest

from igris_mw._oauth.authorization_code import AuthorizationFlows, AuthorizationRequest
from igris_mw._oauth.errors import InvalidAuthorizationResponse
from igris_mw._oauth.grants import GrantState
from igris_mw._oauth.sealed import FLOW_PREFIX, SealedFlowStore, SealedGrantStore
from igris_mw._oauth.tokens import ClientAuth
from igris_mw.models import Secret
from igris_mw.testing import FixedKeyring, MemoryStore

REDIRECT = "https://gw.example/api/v1/oauth/callback"


def request() -> AuthorizationRequest:
    return AuthorizationRequest(
        "https://as.example/auth",
        "https://as.example/token",
        ClientAuth("client-1", None, "none"),
        REDIRECT,
        scopes=("a",),
        resource="https://mcp.example/mcp",
        issuer="https://as.example",
    )


def state_of(url: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)["state"][0]


async def test_a_flow_begun_in_one_process_completes_in_another_once() -> None:
    """Two AuthorizationFlows over one store: B completes A's flow, only once."""
    store, crypto = MemoryStore(), FixedKeyring("k1")
    a = AuthorizationFlows(SealedFlowStore(store, crypto))
    b = AuthorizationFlows(SealedFlowStore(store, crypto))
    url = await a.begin(request(), connection="notion", user="alice")
    state = state_of(url)
    pending, code = await b.complete(
        {"state": state, "code": "the-code", "iss": "https://as.example"}
    )
    assert (pending.connection, pending.user) == ("notion", "alice")
    assert code.reveal() == b"the-code"
    assert pending.request.resource == "https://mcp.example/mcp"
    with pytest.raises(InvalidAuthorizationResponse):
        await a.complete({"state": state, "code": "the-code"})
    assert await store.list_oauth_grants("notion") == []


async def test_concurrent_callbacks_of_one_state_redeem_it_once() -> None:
    """Ten callbacks with the same state at once: exactly one gets the flow."""
    store, crypto = MemoryStore(), FixedKeyring("k1")
    flows = [AuthorizationFlows(SealedFlowStore(store, crypto)) for _ in range(10)]
    state = state_of(await flows[0].begin(request(), connection="notion"))
    results = await asyncio.gather(
        *(f.complete({"state": state, "code": "c"}) for f in flows), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(
        isinstance(r, InvalidAuthorizationResponse) for r in results if isinstance(r, BaseException)
    )


async def test_the_stored_flow_hides_the_verifier_and_expired_flows_are_swept() -> None:
    """The row holds an envelope, not the verifier; an abandoned flow goes at the next begin."""
    store, crypto = MemoryStore(), FixedKeyring("k1")
    past = AuthorizationFlows(SealedFlowStore(store, crypto), clock=lambda: time.time() - 700)
    abandoned = await past.begin(request(), connection="notion")
    rows = await store.list_oauth_grants("notion")
    assert len(rows) == 1
    assert rows[0].user.startswith(FLOW_PREFIX)
    assert rows[0].status == "flow"
    assert rows[0].ciphertext is not None
    assert b"code_verifier" not in rows[0].ciphertext
    assert b'"v"' not in rows[0].ciphertext
    fresh = AuthorizationFlows(SealedFlowStore(store, crypto))
    url = await fresh.begin(request(), connection="notion")
    rows = await store.list_oauth_grants("notion")
    assert len(rows) == 1
    assert rows[0].user.endswith(state_of(url).split(".", 1)[1])
    with pytest.raises(InvalidAuthorizationResponse):
        await fresh.complete({"state": state_of(abandoned), "code": "c"})


async def test_sealed_grant_tokens_are_bound_to_their_user() -> None:
    """A grant row copied onto another user opens to no tokens."""
    store, crypto = MemoryStore(), FixedKeyring("k1")
    grants = SealedGrantStore(store, crypto)
    state = GrantState(Secret(b"access-canary"), Secret(b"refresh-canary"), time.time() + 60)
    assert await grants.compare_and_set(("notion", "alice"), 0, state)
    loaded = await grants.load(("notion", "alice"))
    assert loaded is not None
    assert loaded.access_token == Secret(b"access-canary")
    row = await store.get_oauth_grant("notion", "alice")
    assert row is not None
    assert row.ciphertext is not None
    assert b"access-canary" not in row.ciphertext
    assert await store.put_oauth_grant(attrs.evolve(row, user="mallory"), expected_version=0)
    stolen = await SealedGrantStore(store, crypto).load(("notion", "mallory"))
    assert stolen is not None
    assert stolen.access_token is None
    assert stolen.refresh_token is None
