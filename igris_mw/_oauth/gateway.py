"""The gateway side of OAuth connections: tokens per request, consent, status.

``OAuthRuntime`` is created once per gateway and holds the process's OAuth
state: one token client (its own aiohttp session: token endpoints are not
upstreams, and a slow one must not hold a slot of the upstream pool), the
``GrantManager`` over the store's sealed grants, the discovery cache, and the
consent flows awaiting their callback.

Per request of an OAuth connection, ``target`` hands the gateway a ``Target``
that injects ``Authorization: Bearer <access token>``, built once per token
and reused: once warm, a dict lookup, two identity checks and a clock read.
``refused`` (the upstream answered 401) drops the token so the next request
gets a fresh one.

Consent: ``begin`` makes the authorization URL (discovering the endpoints
from the upstream when the connection does not name them), ``complete``
checks the callback, redeems the code and stores the grant.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Literal

import aiohttp
import attrs

from igris_mw._errors import IgrisError
from igris_mw._oauth.authorization_code import (
    AuthorizationFlows,
    AuthorizationRequest,
    PendingAuthorization,
)
from igris_mw._oauth.client_credentials import ClientCredentialsConfig
from igris_mw._oauth.discovery import ServerMetadata, discover
from igris_mw._oauth.errors import DiscoveryError, InvalidAuthorizationResponse, OAuthError
from igris_mw._oauth.grants import GrantManager, GrantState, RefreshConfig, Renewal
from igris_mw._oauth.sealed import SealedFlowStore, SealedGrantStore
from igris_mw._oauth.tokens import ClientAuth, TokenClient
from igris_mw._policy.egress import EgressPolicy
from igris_mw._proxy.upstream import Target
from igris_mw.crypto import CryptoProvider
from igris_mw.models import Connection, Secret
from igris_mw.storage import Store

__all__ = ["OAuthConnection", "OAuthEventListener", "OAuthRuntime"]

#: Told about every token request (action ``oauth_token``) and every end of a
#: consent (``oauth_grant``): (slug, user, action, "ok" or the error code).
OAuthEventListener = Callable[[str, str, str, str], None]

#: Discovered endpoints are reused this long.
DISCOVERY_TTL = 3600.0
_CAS_ATTEMPTS = 5


@attrs.frozen
class OAuthConnection:
    """What the resolver knows of an OAuth connection (the client secret included)."""

    kind: Literal["oauth2_client_credentials", "oauth2"]
    upstream_url: str
    oauth: Mapping[str, Any] = attrs.field(repr=False)
    client: ClientAuth = attrs.field(repr=False)

    @classmethod
    def of(cls, conn: Connection, secret: Secret | None) -> OAuthConnection | None:
        if conn.oauth is None or conn.auth_type.value not in (
            "oauth2_client_credentials",
            "oauth2",
        ):
            return None
        kind: Literal["oauth2_client_credentials", "oauth2"] = (
            "oauth2" if conn.auth_type.value == "oauth2" else "oauth2_client_credentials"
        )
        return cls(kind, conn.upstream_url, conn.oauth, ClientAuth.from_oauth(conn.oauth, secret))


class OAuthRuntime:
    """Tokens, grants, discovery and consent for one gateway.

    Args:
        store: where grants live (sealed).
        crypto: seals and opens them.
        on_event: told about every token request and consent, and their results
            (audit, metrics); must not raise or block.
        timeout: seconds for one token or discovery request.
        clock: wall clock (injectable for tests).
        egress: the upstream egress policy, applied to token and discovery requests.
    """

    def __init__(
        self,
        store: Store,
        crypto: CryptoProvider,
        *,
        open_credential: Callable[[Connection], Awaitable[Secret | None]],
        on_event: OAuthEventListener | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        egress: EgressPolicy | None = None,
    ) -> None:
        self.store = store
        self._open_credential = open_credential
        self._on_event = on_event
        self._clock = clock
        # Token and discovery requests obey the upstream egress policy.
        self.tokens = TokenClient(timeout=timeout, clock=clock, egress=egress)
        self.grants = SealedGrantStore(store, crypto)
        self.manager = GrantManager(self.grants, self.tokens, clock=clock, on_refresh=self._told)
        self.flows = AuthorizationFlows(SealedFlowStore(store, crypto), clock=clock)
        self._configs: dict[str, tuple[OAuthConnection, Renewal]] = {}
        self._targets: dict[Hashable, tuple[Secret, Target]] = {}
        self._servers: dict[str, tuple[float, ServerMetadata]] = {}

    async def aclose(self) -> None:
        await self.tokens.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.tokens.session

    def _told(self, key: Hashable, error: OAuthError | None, _: GrantState | None) -> None:
        if isinstance(key, tuple):
            self._event(str(key[0]), str(key[1]), "oauth_token", error)

    def _event(self, slug: str, user: str, action: str, error: IgrisError | None) -> None:
        if self._on_event is not None:
            self._on_event(slug, user, action, "ok" if error is None else error.code)

    # -- the gateway path ------------------------------------------------
    async def target(
        self, slug: str, base: Target, conn: OAuthConnection, *, user: str = ""
    ) -> tuple[Target, Secret]:
        """The Target carrying a valid access token for ``slug`` (and ``user``).

        Raises:
            InvalidGrant: nobody consented, or the grant is gone (502
                ``reauthorization_required``).
            OAuthError: no token could be obtained (502).
        """
        config = await self._config(slug, conn)
        key = (slug, user)
        token = await self.manager.token(key, config)
        memo = self._targets.get(key)
        if memo is not None and memo[0] is token and memo[1].base_url == base.base_url:
            return memo[1], token
        value = "Bearer " + token.reveal().decode("ascii", "replace")
        # evolve keeps the base's URL and strip list and recomputes the rest.
        target = attrs.evolve(base, inject=(("Authorization", value),))
        self._targets[key] = (token, target)
        return target, token

    def refused(self, slug: str, token: Secret, *, user: str = "") -> None:
        """The upstream answered 401 to ``token``: the next request renews."""
        if self.manager.drop((slug, user), token):
            self._targets.pop((slug, user), None)

    async def _config(self, slug: str, conn: OAuthConnection) -> Renewal:
        known = self._configs.get(slug)
        if known is not None and known[0] is conn:
            return known[1]
        config: Renewal
        if conn.kind == "oauth2_client_credentials":
            config = ClientCredentialsConfig(
                token_url=str(conn.oauth["tokenUrl"]),
                client=conn.client,
                scopes=tuple(conn.oauth.get("scopes", ())),
                audience=conn.oauth.get("audience"),
                resource=conn.oauth.get("resource"),
            )
        else:
            token_url = conn.oauth.get("tokenUrl")
            if token_url is None:
                token_url = (await self.server(conn)).token_endpoint
            config = RefreshConfig(
                token_url=str(token_url),
                client=conn.client,
                resource=self.resource(conn),
            )
        self._configs[slug] = (conn, config)
        return config

    # -- discovery and consent -------------------------------------------
    @staticmethod
    def resource(conn: OAuthConnection) -> str:
        """The RFC 8707 resource: the configured one, else the upstream's URL."""
        return str(conn.oauth.get("resource") or conn.upstream_url)

    async def server(self, conn: OAuthConnection) -> ServerMetadata:
        """The authorization server's endpoints: configured, or discovered (cached).

        Raises:
            DiscoveryError: nothing configured and nothing to discover.
        """
        if conn.oauth.get("tokenUrl") and conn.oauth.get("authorizationUrl"):
            return ServerMetadata(
                issuer="",
                authorization_endpoint=str(conn.oauth["authorizationUrl"]),
                token_endpoint=str(conn.oauth["tokenUrl"]),
            )
        now = self._clock()
        cached = self._servers.get(conn.upstream_url)
        if cached is not None and now < cached[0]:
            return cached[1]
        _, server = await discover(
            self.session, conn.upstream_url, check_host=self.tokens.check_host
        )
        if server.authorization_endpoint is None:
            raise DiscoveryError("the authorization server has no authorization endpoint")
        if server.code_challenge_methods_supported and (
            "S256" not in server.code_challenge_methods_supported
        ):
            raise DiscoveryError("the authorization server does not support PKCE S256")
        self._servers[conn.upstream_url] = (now + DISCOVERY_TTL, server)
        return server

    async def begin(
        self, slug: str, conn: OAuthConnection, *, redirect_uri: str, user: str = ""
    ) -> str:
        """The URL a person opens to consent for ``slug`` (and ``user``)."""
        server = await self.server(conn)
        assert server.authorization_endpoint is not None
        request = AuthorizationRequest(
            authorization_endpoint=server.authorization_endpoint,
            token_endpoint=server.token_endpoint,
            client=conn.client,
            redirect_uri=redirect_uri,
            scopes=tuple(conn.oauth.get("scopes", ())),
            resource=self.resource(conn),
            issuer=server.issuer or None,
            iss_required=server.authorization_response_iss_parameter_supported,
        )
        return await self.flows.begin_or_reuse(request, connection=slug, user=user or None)

    async def complete(self, query: Mapping[str, str]) -> tuple[str, str]:
        """Check a callback, redeem its code, store the grant; returns (slug, user).

        Raises:
            InvalidAuthorizationResponse: unknown, used or expired state; bad ``iss``.
            OAuthError: the person declined, or the code could not be redeemed.
        """
        try:
            pending, code = await self.flows.complete(query)
        except (InvalidAuthorizationResponse, OAuthError) as exc:
            if exc.flow is not None:
                self._event(*exc.flow, "oauth_grant", exc)
            raise
        slug, user = pending.connection, pending.user or ""
        try:
            await self._redeem(pending, code)
        except IgrisError as exc:
            self._event(slug, user, "oauth_grant", exc)
            raise
        self._event(slug, user, "oauth_grant", None)
        return slug, user

    async def _redeem(self, pending: PendingAuthorization, code: Secret) -> None:
        slug, user = pending.connection, pending.user or ""
        # The flow keeps no client secret: read the connection as it is now.
        conn = OAuthConnection.of(
            record := await self.store.get_connection(slug),
            await self._open_credential(record),
        )
        if (
            conn is None
            or conn.kind != "oauth2"
            or conn.client.client_id != pending.request.client.client_id
        ):
            raise InvalidAuthorizationResponse(
                "the connection changed since this authorization began: start it again"
            )
        tokens = await self.flows.exchange(self.tokens, pending, code, client=conn.client)
        key = (slug, user)
        for _ in range(_CAS_ATTEMPTS):
            current = await self.grants.load(key)
            expected = current.version if current is not None else 0
            if await self.grants.compare_and_set(
                key, expected, GrantState.from_tokens(tokens, version=expected + 1)
            ):
                break
        else:
            raise OAuthError("the grant could not be stored: too many concurrent writers")
        self.manager.forget(key)
        self._targets.pop(key, None)
