"""The connect-time half of the egress policy: an aiohttp resolver.

Kept apart from ``egress`` so that the policy itself (used by the service and
the CLI) does not import aiohttp.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult

from igris_mw._policy.egress import (
    EgressForbidden,
    Network,
    Refusal,
    check_connect_host,
    classify_address,
)

__all__ = ["EgressResolver"]

log = logging.getLogger("igris_mw.egress")


class EgressResolver(AbstractResolver):
    """An aiohttp resolver that hands aiohttp only the addresses the policy allows.

    Wraps aiohttp's default resolver (or ``inner``). Every address of the
    answer is checked, not only the first (happy eyeballs may try any of
    them): forbidden ones are dropped, so the socket can only go to a checked
    address, and the host is refused (``EgressForbidden``) when none is left,
    or outright when any answer is a cloud metadata address. Dropping rather
    than refusing keeps ``localhost`` usable with only ``127.0.0.0/8``
    allowed on a machine that also answers ``::1``.
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
        usable: list[ResolveResult] = []
        refused: Refusal | None = None
        for answer in answers:
            try:
                refusal = classify_address(answer["host"], self._allowed, host=host)
            except ValueError:
                refusal = Refusal(host, "unparsable", answer["host"])
            if refusal is None:
                usable.append(answer)
            elif refusal.always:
                raise EgressForbidden(refusal)
            elif refused is None:
                refused = refusal
        if refused is not None:
            if not usable:
                raise EgressForbidden(refused)
            log.warning("egress policy: %s; connecting to its other addresses", refused.describe())
        return usable

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
