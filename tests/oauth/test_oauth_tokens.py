"""The token client against the real provider: grants, client authentication, errors."""

from __future__ import annotations

import aiohttp
import pytest
from oauth_harness import (
    CONFIDENTIAL_CLIENT,
    CONFIDENTIAL_SECRET,
    POST_CLIENT,
    POST_SECRET,
    AuthorizationServer,
    ResourceServer,
)

from igris_mw._oauth.errors import InvalidGrant, OAuthError
from igris_mw._oauth.tokens import ClientAuth, TokenClient
from igris_mw.models import Secret


def confidential(method: str = "client_secret_basic") -> ClientAuth:
    if method == "client_secret_post":
        return ClientAuth(POST_CLIENT, Secret(POST_SECRET.encode()), "client_secret_post")
    return ClientAuth(CONFIDENTIAL_CLIENT, Secret(CONFIDENTIAL_SECRET.encode()))


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_credentials_token_is_accepted_by_the_upstream(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
    method: str,
) -> None:
    """Both client-authentication methods get a JWT the upstream accepts, with its lifetime."""
    tokens = TokenClient(session)
    got = await tokens.client_credentials(
        provider.token_endpoint,
        confidential(method),
        scopes=["mcp:tools"],
        resource=resource_server.resource,
    )
    claims = resource_server.guard.validate(got.access_token.reveal().decode())
    assert claims["aud"] == resource_server.resource
    assert got.token_type == "Bearer"
    assert got.expires_in == 3600
    assert got.expires_at is not None
    assert got.refresh_token is None
    assert "mcp:tools" in (got.scope or "")


async def test_a_wrong_client_secret_is_an_oauth_error_without_the_secret(
    provider: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """invalid_client is an OAuthError naming the error code, never the secret tried."""
    canary = "canary-secret-9f8e7d6c5b4a"
    client = ClientAuth(CONFIDENTIAL_CLIENT, Secret(canary.encode()))
    with pytest.raises(OAuthError) as info:
        await TokenClient(session).client_credentials(provider.token_endpoint, client)
    assert info.value.error == "invalid_client"
    assert info.value.status == 502
    assert canary not in str(info.value)
    assert canary not in repr(info.value)
    assert "invalid_client" in info.value.message


async def test_an_unusable_refresh_token_is_invalid_grant_without_the_token(
    provider: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """invalid_grant is the InvalidGrant error (reauthorization_required), the token not in it."""
    canary = "canary-refresh-0a1b2c3d4e5f"
    with pytest.raises(InvalidGrant) as info:
        await TokenClient(session).refresh(
            provider.token_endpoint, confidential(), refresh_token=Secret(canary.encode())
        )
    assert info.value.code == "reauthorization_required"
    assert canary not in str(info.value)
    assert canary not in repr(info.value)


async def test_an_unreachable_token_endpoint_is_an_oauth_error(
    session: aiohttp.ClientSession,
) -> None:
    """A closed port is an OAuthError naming the host only, not the URL's query."""
    from oauth_harness import free_port

    url = f"http://127.0.0.1:{free_port()}/token?secret=canary-q-1234"
    with pytest.raises(OAuthError) as info:
        await TokenClient(session).client_credentials(url, confidential())
    assert "127.0.0.1" in info.value.message
    assert "canary-q-1234" not in str(info.value)


async def test_a_server_error_is_an_oauth_error_with_its_status(
    provider: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """A 503 from the token endpoint is an OAuthError that says 503."""
    await provider.fail_next(1)
    with pytest.raises(OAuthError) as info:
        await TokenClient(session).client_credentials(provider.token_endpoint, confidential())
    assert "503" in info.value.message
    assert not isinstance(info.value, InvalidGrant)


def test_client_auth_repr_hides_the_secret() -> None:
    """A ClientAuth's repr masks its secret."""
    auth = ClientAuth("id", Secret(b"canary-repr-secret"))
    assert "canary-repr-secret" not in repr(auth)


def test_client_auth_rejects_a_secret_for_a_public_client() -> None:
    """A secret with method none (or none without one) is a programming error."""
    with pytest.raises(ValueError, match="secret"):
        ClientAuth("id", Secret(b"x"), "none")
    with pytest.raises(ValueError, match="secret"):
        ClientAuth("id", None, "client_secret_basic")


def test_basic_auth_form_encodes_id_and_secret() -> None:
    """RFC 6749 2.3.1: reserved characters in id and secret are form-encoded first."""
    import base64

    headers: dict[str, str] = {}
    form: dict[str, str] = {}
    ClientAuth("a:b", Secret(b"p@ss word/+")).apply(form, headers)
    decoded = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode()
    assert decoded == "a%3Ab:p%40ss%20word%2F%2B"
    assert form == {}


async def test_the_egress_policy_refuses_a_token_endpoint_before_any_request(
    provider: AuthorizationServer,
) -> None:
    """Under the default policy a loopback token endpoint is refused: nothing is sent."""
    from igris_mw._policy.egress import EgressPolicy

    tokens = TokenClient(egress=EgressPolicy())
    try:
        before = await provider.token_requests(CONFIDENTIAL_CLIENT, "client_credentials")
        with pytest.raises(OAuthError) as info:
            await tokens.client_credentials(provider.token_endpoint, confidential())
        assert info.value.code == "upstream_forbidden"
        assert "loopback" in info.value.message
        assert await provider.token_requests(CONFIDENTIAL_CLIENT, "client_credentials") == before
        allowed = TokenClient(egress=EgressPolicy.from_setting("127.0.0.0/8"))
        try:
            got = await allowed.client_credentials(provider.token_endpoint, confidential())
            assert got.access_token.reveal()
        finally:
            await allowed.close()
    finally:
        await tokens.close()
