"""The connect-time half of the egress policy: an aiohttp resolver.

Kept apart from ``egress`` so that the policy itself (used by the service and
the CLI) does not import aiohttp.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult

from igris_mw._policy.egress import Network, check_address, check_connect_host

__all__ = ["EgressResolver"]


class EgressResolver(AbstractResolver):
    """An aiohttp resolver that refuses a host when any resolved address is forbidden.

    Wraps aiohttp's default resolver (or ``inner``). Every address of the
    answer is checked, not only the first: happy eyeballs may try any of them.
    """

    def __init__(
        self, allowed: Sequence[Network] = (), inner: AbstractResolver | None = None
    ) -> None:
        self._allowed = tuple(allowed)
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        check_connect_host(host, self._allowed)
        if self._inner is None:
            # Built here, not in __init__: aiohttp's resolvers need a running loop.
            from aiohttp.resolver import DefaultResolver

            self._inner = DefaultResolver()
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            check_address(answer["host"], self._allowed, host=host)
        return answers

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
