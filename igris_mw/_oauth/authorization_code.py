"""Authorization code with PKCE (RFC 6749 4.1, RFC 7636 S256, RFC 8707, RFC 9207).

``AuthorizationFlows.begin`` builds the URL a person opens; it keeps, on the
server and never in the URL, the PKCE verifier and what the flow is for (the
connection and the end user), in a ``FlowStore``: in memory, or sealed in the
igris-mw store so that any gateway process (or the CLI) may begin a flow and
any gateway process may complete it. ``state`` is ``<slug>.<256 random
bits>``: single-use (the store hands a flow out once), short-lived (``ttl``,
10 minutes by default), and the only key to the flow: the callback finds the
connection and user from it, so a code can be redeemed only for the
connection and user it was requested for.

``complete`` checks the callback (state known, not expired; ``iss`` equal to the
issuer when present and the issuer is known from discovery, and required when
the server promises it). The state is consumed before anything else, so a
replayed callback fails (and never reaches the token endpoint with a used
code, which would make the server revoke what that code issued).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from igris_mw._oauth.errors import InvalidAuthorizationResponse, OAuthError, safe_error_code
from igris_mw._oauth.tokens import ClientAuth, TokenClient, TokenSet
from igris_mw.models import SLUG_RE, Secret

__all__ = [
    "AuthorizationFlows",
    "AuthorizationRequest",
    "FlowStore",
    "MemoryFlowStore",
    "PendingAuthorization",
    "code_challenge",
    "slug_of_state",
]

DEFAULT_TTL = 600.0
MAX_PENDING = 10_000


def code_challenge(verifier: Secret) -> str:
    """RFC 7636 4.2 S256: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.reveal()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def slug_of_state(state: object) -> tuple[str, str] | None:
    """``(slug, random part)`` of a state this module made, else None."""
    if not isinstance(state, str) or len(state) > 200:
        return None
    slug, dot, nonce = state.partition(".")
    if not dot or not SLUG_RE.match(slug) or len(nonce) < 40 or not nonce.isascii():
        return None
    if not all(c.isalnum() or c in "-_" for c in nonce):
        return None
    return slug, nonce


@attrs.frozen
class AuthorizationRequest:
    """What a consent is asked for: the client, the endpoints, the scopes, the resource."""

    authorization_endpoint: str
    token_endpoint: str
    client: ClientAuth
    redirect_uri: str
    scopes: tuple[str, ...] = ()
    resource: str | None = None
    #: The issuer the endpoints belong to (RFC 9207 compares the callback's ``iss``).
    issuer: str | None = None
    #: The server promised ``iss`` in every authorization response.
    iss_required: bool = False


@attrs.frozen
class PendingAuthorization:
    """A flow between ``begin`` and its callback; the verifier never leaves the server."""

    connection: str
    user: str | None
    request: AuthorizationRequest
    code_verifier: Secret = attrs.field(repr=False)
    expires_at: float  # wall clock


class FlowStore(Protocol):
    """Where flows wait for their callback. ``take`` hands a flow out once."""

    async def save(self, state: str, pending: PendingAuthorization) -> None: ...

    async def take(self, state: str) -> PendingAuthorization | None: ...


class MemoryFlowStore:
    """Flows in this process's memory (at most ``max_pending``; the oldest go first)."""

    def __init__(self, *, max_pending: int = MAX_PENDING) -> None:
        self._max = max_pending
        self._pending: dict[str, PendingAuthorization] = {}

    async def save(self, state: str, pending: PendingAuthorization) -> None:
        while len(self._pending) >= self._max:
            del self._pending[next(iter(self._pending))]
        self._pending[state] = pending

    async def take(self, state: str) -> PendingAuthorization | None:
        return self._pending.pop(state, None)

    def peek(self, state: str) -> PendingAuthorization | None:
        return self._pending.get(state)


class AuthorizationFlows:
    """Begin and complete authorization-code flows.

    Args:
        store: where flows wait (default: this process's memory).
        ttl: seconds a ``state`` stays redeemable.
        clock: wall clock (flows may cross processes; injectable for tests).
    """

    def __init__(
        self,
        store: FlowStore | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store: FlowStore = store if store is not None else MemoryFlowStore()
        self._ttl = ttl
        self._clock = clock
        # The URL of the newest flow this process began per (connection, user),
        # so that a user's repeated requests reuse it instead of piling up flows.
        self._urls: dict[tuple[str, str | None], tuple[str, float, AuthorizationRequest]] = {}

    async def begin_or_reuse(
        self,
        request: AuthorizationRequest,
        *,
        connection: str,
        user: str | None = None,
        min_left: float = 60.0,
    ) -> str:
        """Like ``begin``, but hand out the same URL again while its flow (begun
        here, still unused) has ``min_left`` seconds left."""
        known = self._urls.get((connection, user))
        if known is not None:
            url, expires_at, asked = known
            if asked == request and expires_at - self._clock() > min_left:
                return url
        return await self.begin(request, connection=connection, user=user)

    async def begin(
        self, request: AuthorizationRequest, *, connection: str, user: str | None = None
    ) -> str:
        """The authorization URL to open for ``connection`` (and ``user``)."""
        state = f"{connection}.{secrets.token_urlsafe(32)}"
        verifier = Secret(secrets.token_urlsafe(64).encode())  # 86 chars: RFC 7636 43..128
        expires_at = self._clock() + self._ttl
        await self._store.save(
            state,
            PendingAuthorization(
                connection=connection,
                user=user,
                request=request,
                code_verifier=verifier,
                expires_at=expires_at,
            ),
        )
        params = {
            "response_type": "code",
            "client_id": request.client.client_id,
            "redirect_uri": request.redirect_uri,
            "state": state,
            "code_challenge": code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if request.scopes:
            params["scope"] = " ".join(request.scopes)
        if request.resource:
            params["resource"] = request.resource
        parts = urlsplit(request.authorization_endpoint)
        # Keep the endpoint's own query (RFC 6749 3.1); ours go after it.
        query = parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, v) for k, v in query if k not in params]
        query += list(params.items())
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        now = self._clock()
        for key in [k for k, (_, until, _r) in self._urls.items() if now >= until]:
            del self._urls[key]
        self._urls[(connection, user)] = (url, expires_at, request)
        return url

    async def complete(self, query: Mapping[str, str]) -> tuple[PendingAuthorization, Secret]:
        """Check a callback's query and consume its state.

        Returns:
            The flow and the authorization code.

        Raises:
            InvalidAuthorizationResponse: unknown, used or expired state; wrong or
                missing ``iss``; no code.
            OAuthError: the server answered an error (the person declined, ...).
        """
        state = query.get("state")
        pending = None
        if slug_of_state(state) is not None:
            assert isinstance(state, str)
            pending = await self._store.take(state)
        if pending is None or self._clock() >= pending.expires_at:
            raise InvalidAuthorizationResponse(
                "this authorization response is unknown, already used or expired: "
                "start the authorization again"
            )
        self._urls.pop((pending.connection, pending.user), None)
        try:
            request = pending.request
            iss = query.get("iss")
            # Without a known issuer (endpoints configured, not discovered) there is
            # nothing to compare: the code still goes only to this flow's endpoint.
            if iss is not None and request.issuer is not None and iss != request.issuer:
                raise InvalidAuthorizationResponse(
                    "the authorization response came from another issuer than the one asked "
                    "(RFC 9207): start the authorization again"
                )
            if iss is None and request.iss_required:
                raise InvalidAuthorizationResponse(
                    "the authorization response lacks the iss its server promised (RFC 9207)"
                )
            error = query.get("error")
            if error is not None:
                code = safe_error_code(error)
                raise OAuthError(
                    f"the authorization server answered {code or 'an error'}"
                    + (": consent was declined" if code == "access_denied" else ""),
                    error=code,
                )
            code_value = query.get("code")
            if not code_value:
                raise InvalidAuthorizationResponse("the authorization response carries no code")
        except (InvalidAuthorizationResponse, OAuthError) as exc:
            # Say which flow ended, so the caller can audit it on its connection.
            exc.flow = (pending.connection, pending.user or "")
            raise
        return pending, Secret(code_value.encode())

    async def exchange(
        self,
        tokens: TokenClient,
        pending: PendingAuthorization,
        code: Secret,
        *,
        client: ClientAuth | None = None,
    ) -> TokenSet:
        """Redeem ``code`` with the flow's verifier (RFC 6749 4.1.3, RFC 7636 4.5).

        ``client`` replaces the flow's client authentication (a flow read back
        from the store carries no client secret).
        """
        request = pending.request
        return await tokens.authorization_code(
            request.token_endpoint,
            client if client is not None else request.client,
            code=code,
            redirect_uri=request.redirect_uri,
            code_verifier=pending.code_verifier,
            resource=request.resource,
        )
