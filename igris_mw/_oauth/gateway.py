"""The gateway side of OAuth connections: the access token for this request, as a Target.

``OAuthInjector`` holds the process's token caches and one token client (its
own aiohttp session: token endpoints are not upstreams, and a slow one must
not hold a slot of the upstream pool). For each request of an OAuth
connection it hands the gateway a ``Target`` that injects ``Authorization:
Bearer <access token>``; the Target is built once per token and reused, so
the warm path costs a dict lookup, a clock read and an identity check.
When the upstream refuses the token (401), ``refused`` drops it so the next
request gets a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import attrs

from igris_mw._oauth.client_credentials import ClientCredentialsCache, ClientCredentialsConfig
from igris_mw._oauth.errors import OAuthError
from igris_mw._oauth.tokens import TokenClient
from igris_mw._proxy.upstream import Target
from igris_mw.models import Secret

__all__ = ["OAuthInjector", "RefreshListener"]

#: Called after every token request: (connection slug, "ok" or the error code).
RefreshListener = Callable[[str, str], None]


class OAuthInjector:
    """Access tokens for OAuth connections, turned into Targets.

    Args:
        on_refresh: told about every token request and its result (audit, metrics).
        timeout: seconds for one token request.
    """

    def __init__(self, *, on_refresh: RefreshListener | None = None, timeout: float = 10.0) -> None:
        self._on_refresh = on_refresh
        self.tokens = TokenClient(timeout=timeout)
        self.client_credentials = ClientCredentialsCache(self.tokens, on_refresh=self._refreshed)
        self._targets: dict[str, tuple[Secret, Target]] = {}

    async def aclose(self) -> None:
        await self.tokens.close()

    def _refreshed(self, key: Hashable, result: str, error: OAuthError | None) -> None:
        if self._on_refresh is not None:
            self._on_refresh(str(key), result if error is None else error.code)

    async def client_credentials_target(
        self, slug: str, base: Target, config: ClientCredentialsConfig
    ) -> tuple[Target, Secret]:
        """The Target carrying a valid token for ``slug``, and that token.

        Raises:
            OAuthError: no token could be obtained (502).
        """
        token = await self.client_credentials.token(slug, config)
        return self._target(slug, base, token), token

    def _target(self, slug: str, base: Target, token: Secret) -> Target:
        memo = self._targets.get(slug)
        if memo is not None and memo[0] is token and memo[1].base_url == base.base_url:
            return memo[1]
        value = "Bearer " + token.reveal().decode("ascii", "replace")
        # evolve keeps the base's URL and strip list and recomputes the rest.
        target = attrs.evolve(base, inject=(("Authorization", value),))
        self._targets[slug] = (token, target)
        return target

    def refused(self, slug: str, token: Secret) -> None:
        """The upstream answered 401 to ``token``: forget it (if it is still current)."""
        if self.client_credentials.drop(slug, token):
            self._targets.pop(slug, None)

    def forget(self, slug: str) -> None:
        """The connection changed or went away."""
        self.client_credentials.forget(slug)
        self._targets.pop(slug, None)
