"""Discovery: RFC 9728 protected resource metadata, then RFC 8414 / OpenID metadata."""

from __future__ import annotations

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oauth_harness import AuthorizationServer, ResourceServer, free_port

from igris_mw._oauth.discovery import (
    authorization_server_metadata_urls,
    discover,
    discover_resource,
    discover_server,
    protected_resource_metadata_urls,
    resource_metadata_hint,
)
from igris_mw._oauth.errors import DiscoveryError


async def test_discovers_the_provider_from_the_upstream(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """From the upstream URL alone: its metadata names the provider, whose endpoints follow."""
    resource, server = await discover(session, resource_server.resource)
    assert resource.resource == resource_server.resource
    assert resource.authorization_servers == (provider.issuer,)
    assert server.issuer == provider.issuer
    assert server.token_endpoint == provider.token_endpoint
    assert server.authorization_endpoint == f"{provider.issuer}/auth"
    assert server.revocation_endpoint == provider.revocation_endpoint
    assert "S256" in server.code_challenge_methods_supported
    assert server.authorization_response_iss_parameter_supported


async def test_discovery_follows_the_www_authenticate_hint(
    provider: AuthorizationServer,
    resource_server: ResourceServer,
    session: aiohttp.ClientSession,
) -> None:
    """The 401's resource_metadata hint is used as the metadata URL."""
    async with session.post(resource_server.resource, json={}) as resp:
        assert resp.status == 401
        challenge = resp.headers["WWW-Authenticate"]
    found = await discover_resource(session, resource_server.resource, www_authenticate=challenge)
    assert found.authorization_servers == (provider.issuer,)


async def test_metadata_for_another_resource_is_refused(
    resource_server: ResourceServer, session: aiohttp.ClientSession
) -> None:
    """RFC 9728 3.3: a document naming another resource is not used."""
    other = f"{resource_server.base_url}/other"
    hint = f'Bearer resource_metadata="{resource_server.guard.metadata_url}"'
    with pytest.raises(DiscoveryError):
        await discover_resource(session, other, www_authenticate=hint)


async def test_issuer_mismatch_is_refused(
    provider: AuthorizationServer, session: aiohttp.ClientSession
) -> None:
    """RFC 8414 3.3: metadata whose issuer differs from the one asked is refused."""
    with pytest.raises(DiscoveryError, match="another issuer"):
        await discover_server(session, provider.issuer.replace("127.0.0.1", "localhost"))


async def test_no_metadata_anywhere_is_a_discovery_error(
    session: aiohttp.ClientSession,
) -> None:
    """An upstream with no metadata at all (here: nothing listening) is a DiscoveryError."""
    with pytest.raises(DiscoveryError, match="tokenUrl"):
        await discover_resource(session, f"http://127.0.0.1:{free_port()}/mcp")


def test_well_known_urls_insert_before_the_path() -> None:
    """RFC 9728 3.1 and RFC 8414 3.1 insert the well-known segment before the path."""
    assert protected_resource_metadata_urls("https://mcp.example.com/v1/mcp") == [
        "https://mcp.example.com/.well-known/oauth-protected-resource/v1/mcp",
        "https://mcp.example.com/.well-known/oauth-protected-resource",
    ]
    assert authorization_server_metadata_urls("https://as.example.com/tenant1") == [
        "https://as.example.com/.well-known/oauth-authorization-server/tenant1",
        "https://as.example.com/.well-known/openid-configuration/tenant1",
        "https://as.example.com/tenant1/.well-known/openid-configuration",
    ]
    assert authorization_server_metadata_urls("https://as.example.com") == [
        "https://as.example.com/.well-known/oauth-authorization-server",
        "https://as.example.com/.well-known/openid-configuration",
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Bearer resource_metadata="https://x/.well-known/a"', "https://x/.well-known/a"),
        (
            'Bearer error="invalid_token", resource_metadata="https://x/m"',
            "https://x/m",
        ),
        ("Bearer resource_metadata=https://x/m, scope=a", "https://x/m"),
        ('Bearer realm="x"', None),
        ('Bearer not_resource_metadata="https://x"', None),
    ],
)
def test_resource_metadata_hint_parsing(header: str, expected: str | None) -> None:
    """The hint is read from quoted and token forms, and only from its own parameter."""
    assert resource_metadata_hint(header) == expected


@given(st.text(max_size=2000))
def test_resource_metadata_hint_never_raises(header: str) -> None:
    """Any header text gives a string or None, never an exception."""
    result = resource_metadata_hint(header)
    assert result is None or isinstance(result, str)


async def test_discovery_never_follows_a_hint_into_a_forbidden_network(
    resource_server: ResourceServer, session: aiohttp.ClientSession
) -> None:
    """An upstream's resource_metadata hint naming a metadata endpoint is not fetched."""
    from igris_mw._policy.egress import EgressPolicy

    policy = EgressPolicy.from_setting("127.0.0.0/8")
    hint = 'Bearer resource_metadata="http://169.254.169.254/latest/meta-data/"'
    with pytest.raises(DiscoveryError):
        await discover_resource(
            session,
            resource_server.resource,
            www_authenticate=hint,
            check_host=policy.check_connect_host,
        )
    with pytest.raises(DiscoveryError):
        await discover(
            session, resource_server.resource, check_host=EgressPolicy().check_connect_host
        )
    found, _ = await discover(
        session, resource_server.resource, check_host=policy.check_connect_host
    )
    assert found.resource == resource_server.resource
