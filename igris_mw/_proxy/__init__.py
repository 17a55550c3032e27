"""The streaming proxy to MCP upstreams.

- ``upstream``: pure: ``Target``, the upstream URL and its path-escape
  rules, the header policy both ways.
- ``forward``: I/O: ``Forwarder`` sends a request upstream and relays the
  response, streaming both ways.
- ``sse``: the legacy HTTP+SSE ``endpoint`` event rewrite.

The names the gateway (and tests) use are re-exported here.
"""

from __future__ import annotations

from .forward import (
    BodyFilter,
    BodyFilterFactory,
    BodyPrefix,
    Forwarder,
    ProxyResult,
    read_body_prefix,
)
from .upstream import ALWAYS_STRIP, HOP_BY_HOP, Target, upstream_url

__all__ = [
    "ALWAYS_STRIP",
    "HOP_BY_HOP",
    "BodyFilter",
    "BodyFilterFactory",
    "BodyPrefix",
    "Forwarder",
    "ProxyResult",
    "Target",
    "read_body_prefix",
    "upstream_url",
]
