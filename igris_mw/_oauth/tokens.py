"""The token endpoint client (RFC 6749 section 4 and 6, RFC 7636, RFC 8707, RFC 7009).

One ``TokenClient`` speaks to any token endpoint over an ``aiohttp.ClientSession``
(the gateway's upstream client; injectable, so the gateway can hand it its own
session and egress policy). Every token it returns is held as a ``Secret``; a
failure is an ``OAuthError`` whose message names the endpoint's host and the
RFC 6749 ``error`` code at most.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast
from urllib.parse import quote, urlsplit

import aiohttp
import attrs

from igris_mw._oauth.errors import InvalidGrant, OAuthError, safe_error_code
from igris_mw._policy.egress import EgressForbidden, EgressPolicy
from igris_mw._policy.resolver import EgressResolver
from igris_mw.models import Secret

__all__ = ["ClientAuth", "TokenClient", "TokenSet"]

AuthMethod = Literal["client_secret_basic", "client_secret_post", "none"]

# A token response is a few kilobytes; anything past this is not one.
MAX_RESPONSE_BYTES = 256 * 1024


@attrs.frozen
class ClientAuth:
    """How the client proves itself at the token endpoint.

    ``client_secret_basic`` (the RFC 6749 default) sends the form-encoded id and
    secret in ``Authorization: Basic``; ``client_secret_post`` sends them in the
    body; ``none`` is a public client (PKCE is its only proof).
    """

    client_id: str
    client_secret: Secret | None = None
    method: AuthMethod = "client_secret_basic"

    def __attrs_post_init__(self) -> None:
        if (self.method == "none") != (self.client_secret is None):
            raise ValueError("a client secret goes with client_secret_basic/post, none with none")

    @classmethod
    def from_oauth(cls, oauth: Mapping[str, Any], secret: Secret | None) -> ClientAuth:
        """From a connection's checked ``oauth`` object; no secret is a public client."""
        if secret is None:
            return cls(str(oauth["clientId"]), None, "none")
        method = cast(AuthMethod, oauth.get("tokenEndpointAuthMethod", "client_secret_basic"))
        return cls(str(oauth["clientId"]), secret, method)

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> None:
        if self.client_secret is None:
            form["client_id"] = self.client_id
            return
        secret = self.client_secret.reveal().decode()
        if self.method == "client_secret_post":
            form["client_id"] = self.client_id
            form["client_secret"] = secret
            return
        # RFC 6749 2.3.1: both parts are form-urlencoded before base64.
        pair = f"{quote(self.client_id, safe='')}:{quote(secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()


@attrs.frozen
class TokenSet:
    """A token response. ``expires_at`` is wall-clock seconds, counted from when the
    request was sent (None: the server did not say)."""

    access_token: Secret
    token_type: str
    expires_in: float | None
    expires_at: float | None
    refresh_token: Secret | None = None
    scope: str | None = None


def _host(url: str) -> str:
    return urlsplit(url).hostname or "the authorization server"


def _number(value: object) -> float | None:
    # Some servers send expires_in as a string; bool is an int in Python.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if parsed >= 0 and parsed == parsed else None
    return None


class TokenClient:
    """Token requests over one aiohttp session.

    Args:
        session: the session to use (never following redirects, no cookies);
            None makes one on first use, closed by ``close()``.
        timeout: seconds for one whole token request.
        clock: wall clock, for ``TokenSet.expires_at`` (injectable for tests).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        egress: EgressPolicy | None = None,
    ) -> None:
        self._session = session
        self._own_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self.egress = egress

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Under an egress policy every address a name resolves to is
            # checked at connect time, as on the upstream path.
            resolver = EgressResolver(self.egress.allowed) if self.egress is not None else None
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(resolver=resolver),
            )
        return self._session

    def check_host(self, host: str) -> None:
        """Refuse a host (an IP literal is never resolved) the egress policy forbids.

        Raises:
            EgressForbidden: the host is a forbidden address.
        """
        if self.egress is not None:
            self.egress.check_connect_host(host)

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> TokenClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def client_credentials(
        self,
        token_url: str,
        client: ClientAuth,
        *,
        scopes: Iterable[str] = (),
        audience: str | None = None,
        resource: str | None = None,
    ) -> TokenSet:
        """RFC 6749 4.4: a token for the client itself."""
        form = {"grant_type": "client_credentials"}
        _optional(form, scopes=scopes, audience=audience, resource=resource)
        return await self._token(token_url, client, form)

    async def authorization_code(
        self,
        token_url: str,
        client: ClientAuth,
        *,
        code: Secret,
        redirect_uri: str,
        code_verifier: Secret,
        resource: str | None = None,
    ) -> TokenSet:
        """RFC 6749 4.1.3 with the RFC 7636 verifier."""
        form = {
            "grant_type": "authorization_code",
            "code": code.reveal().decode(),
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier.reveal().decode(),
        }
        _optional(form, resource=resource)
        return await self._token(token_url, client, form)

    async def refresh(
        self,
        token_url: str,
        client: ClientAuth,
        *,
        refresh_token: Secret,
        scopes: Iterable[str] = (),
        resource: str | None = None,
    ) -> TokenSet:
        """RFC 6749 6. When the server does not rotate, the old refresh token stays in the set."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token.reveal().decode()}
        _optional(form, scopes=scopes, resource=resource)
        tokens = await self._token(token_url, client, form)
        if tokens.refresh_token is None:
            tokens = attrs.evolve(tokens, refresh_token=refresh_token)
        return tokens

    async def revoke(
        self,
        revocation_url: str,
        client: ClientAuth,
        token: Secret,
        *,
        hint: Literal["refresh_token", "access_token"] = "refresh_token",
    ) -> None:
        """RFC 7009: tell the server a token is no longer needed."""
        form = {"token": token.reveal().decode(), "token_type_hint": hint}
        await self._post(revocation_url, client, form)

    async def _token(self, url: str, client: ClientAuth, form: dict[str, str]) -> TokenSet:
        # Lifetimes count from before the request: the server's clock started
        # after this, so the token cannot outlive what we compute.
        sent_at = self._clock()
        body = await self._post(url, client, form)
        return self._parse(url, body, sent_at)

    async def _post(self, url: str, client: ClientAuth, form: dict[str, str]) -> bytes:
        headers = {"Accept": "application/json"}
        client.apply(form, headers)
        host = _host(url)
        try:
            self.check_host(urlsplit(url).hostname or "")
            async with self.session.post(
                url,
                data=form,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as resp:
                body = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status = resp.status
        except TimeoutError as exc:
            raise OAuthError(f"the token request to {host} timed out") from exc
        except EgressForbidden as exc:
            # Its message names the host, never the address it resolved to.
            raise OAuthError(
                f"the token endpoint is refused by the egress policy: {exc.message}",
                code="upstream_forbidden",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            # Never str(exc): aiohttp's messages may carry the URL and its query.
            raise OAuthError(f"the token endpoint at {host} could not be reached") from exc
        if len(body) > MAX_RESPONSE_BYTES:
            raise OAuthError(f"the token endpoint at {host} sent an oversized response")
        if status == 200:
            return body
        error = _error_code(body)
        if error == "invalid_grant":
            raise InvalidGrant(
                f"the authorization server at {host} no longer accepts the grant "
                "(invalid_grant): authorize the connection again",
                error=error,
            )
        detail = f" ({error})" if error else ""
        raise OAuthError(f"the token endpoint at {host} answered {status}{detail}", error=error)

    def _parse(self, url: str, body: bytes, sent_at: float) -> TokenSet:
        host = _host(url)
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            raise OAuthError(f"the token endpoint at {host} did not answer a JSON object")
        access = data.get("access_token")
        if not isinstance(access, str) or not access or not access.isprintable():
            raise OAuthError(f"the token endpoint at {host} sent no usable access_token")
        token_type = data.get("token_type")
        # RFC 6749 5.1: the type is case-insensitive. Only bearer tokens are
        # injected as they are; DPoP or MAC tokens would need a proof per request.
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise OAuthError(f"the token endpoint at {host} sent a token type other than Bearer")
        refresh = data.get("refresh_token")
        if refresh is not None and (not isinstance(refresh, str) or not refresh):
            raise OAuthError(f"the token endpoint at {host} sent a malformed refresh_token")
        scope = data.get("scope")
        expires_in = _number(data.get("expires_in"))
        return TokenSet(
            access_token=Secret(access.encode()),
            token_type="Bearer",  # noqa: S106 (a token type, not a secret)
            expires_in=expires_in,
            expires_at=None if expires_in is None else sent_at + expires_in,
            refresh_token=Secret(refresh.encode()) if refresh else None,
            scope=scope if isinstance(scope, str) else None,
        )


def _optional(
    form: dict[str, str],
    *,
    scopes: Iterable[str] = (),
    audience: str | None = None,
    resource: str | None = None,
) -> None:
    scope = " ".join(scopes)
    if scope:
        form["scope"] = scope
    if audience:
        form["audience"] = audience
    if resource:
        form["resource"] = resource


def _error_code(body: bytes) -> str | None:
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return safe_error_code(data.get("error")) if isinstance(data, Mapping) else None
