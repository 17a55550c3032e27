"""Authorization code with PKCE (RFC 6749 4.1, RFC 7636 S256, RFC 8707, RFC 9207).

``AuthorizationFlows.begin`` builds the URL a person opens; it keeps, on the
server and never in the URL, the PKCE verifier and what the flow is for (the
connection and the end user). ``state`` is 256 random bits, single-use and
short-lived (``ttl``, 10 minutes by default), and it is the only key to that
record: the callback finds the connection and user from it, so a code can be
redeemed only for the connection and user it was requested for.
``complete`` checks the callback (state known, not expired; ``iss`` equal to the
issuer when present and the issuer is known from discovery, and required when
the server promises it) and consumes the state before anything else, so a
replayed callback fails.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from igris_mw._oauth.errors import InvalidAuthorizationResponse, OAuthError, safe_error_code
from igris_mw._oauth.tokens import ClientAuth, TokenClient, TokenSet
from igris_mw.models import Secret

__all__ = [
    "AuthorizationFlows",
    "AuthorizationRequest",
    "PendingAuthorization",
    "code_challenge",
]

DEFAULT_TTL = 600.0
MAX_PENDING = 10_000


def code_challenge(verifier: Secret) -> str:
    """RFC 7636 4.2 S256: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.reveal()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


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
    expires_at: float  # monotonic


class AuthorizationFlows:
    """Flows awaiting their callback, in this process's memory.

    Args:
        ttl: seconds a ``state`` stays redeemable.
        clock: monotonic clock (injectable for tests).
        max_pending: flows kept at most; the oldest go first.
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max = max_pending
        self._pending: dict[str, PendingAuthorization] = {}
        # The URL of the newest open flow per (connection, user), for reuse.
        self._urls: dict[tuple[str, str | None], tuple[str, float]] = {}

    def begin_or_reuse(
        self,
        request: AuthorizationRequest,
        *,
        connection: str,
        user: str | None = None,
        min_left: float = 60.0,
    ) -> str:
        """Like ``begin``, but hand out the same URL again while its flow has
        ``min_left`` seconds left (a user's repeated requests do not pile up flows)."""
        known = self._urls.get((connection, user))
        if known is not None:
            url, expires_at = known
            state = _state_of(url)
            pending = self._pending.get(state) if state else None
            if pending is not None and pending.request == request and (
                expires_at - self._clock() > min_left
            ):
                return url
        return self.begin(request, connection=connection, user=user)

    def begin(
        self, request: AuthorizationRequest, *, connection: str, user: str | None = None
    ) -> str:
        """The authorization URL to open for ``connection`` (and ``user``)."""
        self._expire()
        state = secrets.token_urlsafe(32)
        verifier = Secret(secrets.token_urlsafe(64).encode())  # 86 chars: RFC 7636 43..128
        self._pending[state] = PendingAuthorization(
            connection=connection,
            user=user,
            request=request,
            code_verifier=verifier,
            expires_at=self._clock() + self._ttl,
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
        self._urls[(connection, user)] = (url, self._pending[state].expires_at)
        return url

    def complete(self, query: Mapping[str, str]) -> tuple[PendingAuthorization, Secret]:
        """Check a callback's query and consume its state.

        Returns:
            The flow and the authorization code.

        Raises:
            InvalidAuthorizationResponse: unknown, used or expired state; wrong or
                missing ``iss``; no code.
            OAuthError: the server answered an error (the person declined, ...).
        """
        state = query.get("state")
        pending = self._pending.pop(state, None) if isinstance(state, str) else None
        if pending is None or self._clock() >= pending.expires_at:
            raise InvalidAuthorizationResponse(
                "this authorization response is unknown, already used or expired: "
                "start the authorization again"
            )
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
        return pending, Secret(code_value.encode())

    async def exchange(
        self, tokens: TokenClient, pending: PendingAuthorization, code: Secret
    ) -> TokenSet:
        """Redeem ``code`` with the flow's verifier (RFC 6749 4.1.3, RFC 7636 4.5)."""
        request = pending.request
        return await tokens.authorization_code(
            request.token_endpoint,
            request.client,
            code=code,
            redirect_uri=request.redirect_uri,
            code_verifier=pending.code_verifier,
            resource=request.resource,
        )

    def pending_for(self, connection: str) -> Iterable[PendingAuthorization]:
        """Flows still open for ``connection`` (for ``oauthStatus: pending``)."""
        now = self._clock()
        return [
            p for p in self._pending.values() if p.connection == connection and now < p.expires_at
        ]

    def _expire(self) -> None:
        now = self._clock()
        for state in [s for s, p in self._pending.items() if now >= p.expires_at]:
            del self._pending[state]
        for key in [k for k, (_, until) in self._urls.items() if now >= until]:
            del self._urls[key]
        while len(self._pending) >= self._max:
            del self._pending[next(iter(self._pending))]


def _state_of(url: str) -> str | None:
    for name, value in parse_qsl(urlsplit(url).query):
        if name == "state":
            return value
    return None
