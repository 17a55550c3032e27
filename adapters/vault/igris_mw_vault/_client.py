"""Vault's HTTP API over an ``httpx.AsyncClient``, with token upkeep.

The one boundary where Vault's HTTP failures become igris-mw errors: a
transport failure or a sealed server is the caller's ``ServiceUnavailable``
subclass (``StoreUnavailable`` for the KV store, ``CryptoUnavailable`` for
Transit) with code ``vault_unreachable`` / ``vault_sealed`` and a
``retry_after``; a refused token is ``vault_auth_failed``. Nothing about a
failure is remembered, so the first request after an unseal just works.

Tokens are renewed (``auth/token/renew-self``) once two thirds of their TTL
have passed, both before a request and from a background task, so an idle
gateway keeps its token too; when renewal is impossible (not renewable,
max TTL reached, revoked) an AppRole login is made afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, NoReturn

import httpx

from igris_mw.errors import ServiceUnavailable

from ._config import Credentials, Endpoint

__all__ = ["RETRY_AFTER", "VaultClient", "errors_text", "json_of"]

log = logging.getLogger("igris_mw.vault")

RETRY_AFTER = 5
TIMEOUT = httpx.Timeout(connect=5.0, read=10.0, write=10.0, pool=5.0)
# Renew once this share of the TTL has gone, leaving a third as margin.
_RENEW_AT = 2 / 3
_MIN_SLEEP = 1.0


class VaultClient:
    """An authenticated Vault session for one endpoint.

    Args:
        endpoint: where Vault is.
        credentials: token or AppRole.
        unavailable: the error class raised when Vault cannot serve.
        where: how messages name this backend (a URL without secrets).
        transport: an httpx transport, for tests.
        timeout: connect / read bounds, so that a stuck Vault never hangs a request.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        *,
        unavailable: type[ServiceUnavailable],
        where: str,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self._credentials = credentials
        self._unavailable = unavailable
        self.where = where
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._token: str | None = credentials.token
        self._renew_at: float | None = None  # monotonic; None: never expires
        self._renewable = False
        self._authenticated = False
        self._auth_lock = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None
        self._ttl = 0
        self._timeout = timeout
        #: how many renewals and AppRole logins this session made (for metrics and tests)
        self.renewals = 0
        self.logins = 0

    def __repr__(self) -> str:
        return f"VaultClient({self.where!r}, auth={self._credentials.method!r})"

    # -- HTTP --------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            headers = {"X-Vault-Request": "true"}
            if self.endpoint.namespace:
                headers["X-Vault-Namespace"] = self.endpoint.namespace
            verify: Any = self.endpoint.ca_file or True
            self._http = httpx.AsyncClient(
                base_url=self.endpoint.base_url,
                headers=headers,
                timeout=self._timeout,
                verify=verify,
                transport=self._transport,
                follow_redirects=False,
                trust_env=False,
            )
        return self._http

    def _down(
        self, code: str, message: str, retry_after: int | None = RETRY_AFTER
    ) -> ServiceUnavailable:
        return self._unavailable(f"{self.where}: {message}", code=code, retry_after=retry_after)

    async def _send(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> httpx.Response:
        headers = {"X-Vault-Token": token} if token else None
        try:
            response = await self._client().request(
                method, f"/v1/{path}", json=body, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise self._down("vault_unreachable", "Vault did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise self._down(
                "vault_unreachable", f"cannot reach Vault ({type(exc).__name__})"
            ) from exc
        if response.status_code == 503:
            if "sealed" in errors_text(response):
                raise self._down("vault_sealed", "Vault is sealed; unseal it and retry")
            raise self._down("vault_unavailable", "Vault is unavailable (503)")
        if response.status_code >= 500 and response.status_code != 501:
            raise self._down(
                "vault_error", f"Vault answered {response.status_code}: {errors_text(response)}"
            )
        return response

    async def request(
        self, method: str, path: str, body: Any = None, *, expect: Iterable[int] = ()
    ) -> httpx.Response:
        """An authenticated request; returns any response below 500.

        A 403 is retried once after a fresh AppRole login; otherwise it
        raises ``vault_auth_failed`` (the token is not valid) or
        ``vault_permission_denied`` (valid, but its policies do not allow
        ``path``), unless 403 is in ``expect``.
        """
        await self._ensure_auth()
        response = await self._send(method, path, body, self._token)
        if response.status_code != 403:
            return response
        if self._credentials.method == "approle":
            await self._login(force=True)
            response = await self._send(method, path, body, self._token)
            if response.status_code != 403:
                return response
        if 403 in set(expect):
            return response
        return await self._explain_403(method, path)

    async def _explain_403(self, method: str, path: str) -> NoReturn:
        probe = await self._send("GET", "auth/token/lookup-self", token=self._token)
        if probe.status_code == 403:
            self._authenticated = False
            raise self._down("vault_auth_failed", self._auth_failed_message(), retry_after=None)
        raise self._down(
            "vault_permission_denied",
            f"the Vault token's policies do not allow {method} on {path!r}",
            retry_after=None,
        )

    def _auth_failed_message(self) -> str:
        if self._credentials.method == "approle":
            return "Vault refused the AppRole login (check VAULT_ROLE_ID / VAULT_SECRET_ID)"
        return "Vault refused VAULT_TOKEN: it is invalid, expired or revoked"

    # -- authentication ----------------------------------------------------
    async def _ensure_auth(self) -> None:
        if self._authenticated and (self._renew_at is None or time.monotonic() < self._renew_at):
            return
        async with self._auth_lock:
            if not self._authenticated:
                if self._credentials.method == "approle":
                    await self._login(force=True)
                else:
                    await self._lookup()
            elif self._renew_at is not None and time.monotonic() >= self._renew_at:
                await self._refresh()
        self._start_renewer()

    async def _lookup(self) -> None:
        response = await self._send("GET", "auth/token/lookup-self", token=self._token)
        if response.status_code in (400, 401, 403):
            raise self._down("vault_auth_failed", self._auth_failed_message(), retry_after=None)
        data = json_of(response).get("data") or {}
        self._schedule(int(data.get("ttl") or 0), bool(data.get("renewable")))
        self._authenticated = True

    async def _login(self, *, force: bool = False) -> None:
        if not force and self._authenticated:
            return
        creds = self._credentials
        response = await self._send(
            "POST",
            f"auth/{creds.approle_mount}/login",
            {"role_id": creds.role_id, "secret_id": creds.secret_id},
        )
        auth = json_of(response).get("auth") if response.status_code == 200 else None
        if not isinstance(auth, dict) or not auth.get("client_token"):
            self._authenticated = False
            raise self._down("vault_auth_failed", self._auth_failed_message(), retry_after=None)
        self._token = str(auth["client_token"])
        self.logins += 1
        self._schedule(int(auth.get("lease_duration") or 0), bool(auth.get("renewable")))
        self._authenticated = True

    def _schedule(self, ttl: int, renewable: bool, *, keep_ttl: bool = False) -> None:
        self._renewable = renewable
        if not keep_ttl:
            self._ttl = ttl
        self._renew_at = None if ttl <= 0 else time.monotonic() + ttl * _RENEW_AT

    async def _refresh(self) -> None:
        """Renew the token; log in again when that is not possible."""
        approle = self._credentials.method == "approle"
        if self._renewable:
            try:
                response = await self._send("POST", "auth/token/renew-self", {}, token=self._token)
            except ServiceUnavailable as exc:
                # Vault answers 500 "past the max TTL, cannot renew": not an outage.
                if exc.code != "vault_error":
                    raise
                response = None
            auth = None
            if response is not None and response.status_code == 200:
                auth = json_of(response).get("auth")
            if isinstance(auth, dict):
                ttl = int(auth.get("lease_duration") or 0)
                # Renewal is capped by the token's max TTL: once it stops
                # extending the token fully, log in afresh rather than ride
                # it to expiry (a plain token has no such fallback).
                if not approle or ttl >= self._ttl // 2 > 0:
                    self.renewals += 1
                    self._schedule(ttl, bool(auth.get("renewable")), keep_ttl=True)
                    return
        if approle:
            await self._login(force=True)
        else:
            # A plain token that cannot be renewed: stop trying; requests will
            # report vault_auth_failed once it expires.
            self._renew_at = None

    def _start_renewer(self) -> None:
        if self._renewer is None and self._renew_at is not None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while self._renew_at is not None:
            await asyncio.sleep(max(_MIN_SLEEP, self._renew_at - time.monotonic()))
            try:
                async with self._auth_lock:
                    if self._renew_at is not None and time.monotonic() >= self._renew_at:
                        await self._refresh()
            except ServiceUnavailable as exc:
                # Vault down or sealed: keep the loop; the next request retries.
                log.warning("Vault token renewal failed: %s", exc.code)
                await asyncio.sleep(RETRY_AFTER)
        self._renewer = None

    @property
    def token_renews_at(self) -> float | None:
        """Monotonic time of the next renewal (``None``: the token never expires)."""
        return self._renew_at

    async def aclose(self) -> None:
        """Stop renewing and close the HTTP session; idempotent."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._authenticated = False


def json_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def errors_text(response: httpx.Response) -> str:
    """Vault's ``errors`` list, joined on one line (Vault never echoes a token there)."""
    errors = json_of(response).get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors).replace("\n", " ")[:300]
    return f"HTTP {response.status_code}"
