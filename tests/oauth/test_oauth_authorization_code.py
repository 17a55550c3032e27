"""Authorization code + PKCE against the real provider: consent, callback, refresh, revoke."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from oauth_harness import (
    CONFIDENTIAL_CLIENT,
    CONFIDENTIAL_SECRET,
    PUBLIC_CLIENT,
    AuthorizationServer,
    ResourceServer,
    drive_consent,
)

from igris_mw._oauth.authorization_code import (
    AuthorizationFlows,
    AuthorizationRequest,
    code_challenge,
)
from igris_mw._oauth.discovery import discover
from igris_mw._oauth.errors import InvalidAuthorizationResponse, InvalidGrant, OAuthError
from igris_mw._oauth.tokens import ClientAuth, TokenClient
from igris_mw.models import Secret

REDIRECT = "http://127.0.0.1:8765/api/v1/oauth/callback"


async def request_for(
    session: aiohttp.ClientSession, resource_server: ResourceServer, client: ClientAuth
) -> AuthorizationRequest:
    _, server = await discover(session, resource_server.resource)
    assert server.authorization_endpoint is not None
    return AuthorizationRequest(
        authorization_endpoint=server.authorization_endpoint,
        token_endpoint=server.token_endpoint,
        client=client,
        redirect_uri=REDIRECT,
        scopes=("mcp:tools",),
        resource=resource_server.resource,
        issuer=server.issuer,
        iss_required=server.authorization_response_iss_parameter_supported,
    )


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def confidential() -> ClientAuth:
    return ClientAuth(CONFIDENTIAL_CLIENT, Secret(CONFIDENTIAL_SECRET.encode()))


def public() -> ClientAuth:
    return ClientAuth(PUBLIC_CLIENT, None, "none")


@pytest.mark.slow
@pytest.mark.parametrize("client", [confidential(), public()], ids=["confidential", "public"])
async def test_consent_code_refresh_rotation_and_revocation(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
    short_tokens: int,
    client: ClientAuth,
) -> None:
    """Consent by the forms, code for tokens, 3 rotations, then revoked: invalid_grant."""
    tokens = TokenClient(session)
    flows = AuthorizationFlows()
    url = await flows.begin(
        await request_for(session, resource_server, client), connection="notion", user="alice"
    )
    params = query(url)
    assert params["code_challenge_method"] == "S256"
    assert params["resource"] == resource_server.resource
    assert "code_verifier" not in url

    callback = await drive_consent(url, account="alice", redirect_prefix=REDIRECT)
    answer = query(callback)
    assert answer["iss"] == provider.issuer
    pending, code = await flows.complete(answer)
    assert (pending.connection, pending.user) == ("notion", "alice")
    got = await flows.exchange(tokens, pending, code)
    assert got.refresh_token is not None
    claims = resource_server.guard.validate(got.access_token.reveal().decode())
    assert claims["sub"] == "alice"
    assert got.expires_in == short_tokens

    refresh_tokens = [got.refresh_token]
    request = pending.request
    for _ in range(3):
        await asyncio.sleep(short_tokens + 0.5)
        got = await tokens.refresh(
            request.token_endpoint,
            request.client,
            refresh_token=refresh_tokens[-1],
            resource=request.resource,
        )
        assert got.refresh_token is not None
        assert got.refresh_token not in refresh_tokens  # rotated every time
        refresh_tokens.append(got.refresh_token)
        assert resource_server.guard.validate(got.access_token.reveal().decode())["sub"] == "alice"

    assert request.client.client_id == client.client_id
    _, server = await discover(session, resource_server.resource)
    assert server.revocation_endpoint is not None
    await tokens.revoke(server.revocation_endpoint, request.client, refresh_tokens[-1])
    with pytest.raises(InvalidGrant):
        await tokens.refresh(
            request.token_endpoint, request.client, refresh_token=refresh_tokens[-1]
        )


async def test_reusing_a_rotated_refresh_token_strands_the_grant(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """Why rotation must be stored atomically: the old token revokes the whole grant."""
    tokens = TokenClient(session)
    flows = AuthorizationFlows()
    request = await request_for(session, resource_server, public())
    url = await flows.begin(request, connection="conn-c")
    pending, code = await flows.complete(
        query(await drive_consent(url, account="bob", redirect_prefix=REDIRECT))
    )
    first = await flows.exchange(tokens, pending, code)
    assert first.refresh_token is not None
    second = await tokens.refresh(
        request.token_endpoint, request.client, refresh_token=first.refresh_token
    )
    assert second.refresh_token is not None
    with pytest.raises(InvalidGrant):
        await tokens.refresh(
            request.token_endpoint, request.client, refresh_token=first.refresh_token
        )
    with pytest.raises(InvalidGrant):
        await tokens.refresh(
            request.token_endpoint, request.client, refresh_token=second.refresh_token
        )


async def test_state_is_single_use(
    resource_server: ResourceServer, session: aiohttp.ClientSession
) -> None:
    """A replayed callback (same state) is refused."""
    flows = AuthorizationFlows()
    request = await request_for(session, resource_server, public())
    url = await flows.begin(request, connection="conn-c")
    answer = query(await drive_consent(url, account="carol", redirect_prefix=REDIRECT))
    await flows.complete(answer)
    with pytest.raises(InvalidAuthorizationResponse, match="already used"):
        await flows.complete(answer)


async def test_state_expires() -> None:
    """A state older than the ttl is refused, and it is consumed by the attempt."""
    now = [0.0]
    flows = AuthorizationFlows(ttl=600, clock=lambda: now[0])
    request = AuthorizationRequest("https://as/auth", "https://as/token", public(), REDIRECT)
    state = query(await flows.begin(request, connection="conn-c"))["state"]
    now[0] = 600.0
    with pytest.raises(InvalidAuthorizationResponse):
        await flows.complete({"state": state, "code": "x"})


async def test_unknown_state_is_refused() -> None:
    """A callback with a state this process never issued is refused."""
    with pytest.raises(InvalidAuthorizationResponse):
        await AuthorizationFlows().complete({"state": "forged", "code": "x"})


async def test_iss_mismatch_is_refused() -> None:
    """RFC 9207: an iss other than the issuer asked is a mix-up, refused."""
    flows = AuthorizationFlows()
    request = AuthorizationRequest(
        "https://as/auth", "https://as/token", public(), REDIRECT, issuer="https://as"
    )
    state = query(await flows.begin(request, connection="conn-c"))["state"]
    with pytest.raises(InvalidAuthorizationResponse, match="another issuer"):
        await flows.complete({"state": state, "code": "x", "iss": "https://evil"})


async def test_missing_iss_is_refused_when_the_server_promised_it() -> None:
    """RFC 9207: a server that advertises iss must send it."""
    flows = AuthorizationFlows()
    request = AuthorizationRequest(
        "https://as/auth",
        "https://as/token",
        public(),
        REDIRECT,
        issuer="https://as",
        iss_required=True,
    )
    state = query(await flows.begin(request, connection="conn-c"))["state"]
    with pytest.raises(InvalidAuthorizationResponse, match="iss"):
        await flows.complete({"state": state, "code": "x"})


async def test_an_error_answer_is_an_oauth_error_with_only_the_code() -> None:
    """access_denied says consent was declined; the free-text description is not echoed."""
    flows = AuthorizationFlows()
    request = AuthorizationRequest("https://as/auth", "https://as/token", public(), REDIRECT)
    state = query(await flows.begin(request, connection="conn-c"))["state"]
    with pytest.raises(OAuthError, match="declined") as info:
        await flows.complete(
            {"state": state, "error": "access_denied", "error_description": "<script>canary"}
        )
    assert "canary" not in str(info.value)


async def test_the_authorize_url_keeps_the_endpoint_query_and_hides_the_verifier() -> None:
    """Endpoint query parameters survive; the challenge is S256 of a verifier kept server-side."""
    flows = AuthorizationFlows()
    request = AuthorizationRequest(
        "https://as/auth?tenant=t1",
        "https://as/token",
        public(),
        REDIRECT,
        scopes=("a", "b"),
        resource="https://mcp.example/mcp",
    )
    url = await flows.begin(request, connection="conn-c", user="u")
    params = query(url)
    assert params["tenant"] == "t1"
    assert params["scope"] == "a b"
    assert params["client_id"] == PUBLIC_CLIENT
    pending, _ = await flows.complete({"state": params["state"], "code": "x"})
    assert params["code_challenge"] == code_challenge(pending.code_verifier)
    assert pending.code_verifier.reveal().decode() not in url
    assert "Secret('**********')" in repr(pending) or "code_verifier" not in repr(pending)
