"""ASGI app factories for ``servers.py`` (any ASGI server imports them by name).

``bare()``: the bare proxy to ``$BENCH_UPSTREAM``; ``gateway()``: ``IgrisGateway``
on ``$BENCH_STORE`` (audit on, spill at ``$BENCH_SPILL``).
"""

from __future__ import annotations

import os
from typing import Any


def bare() -> Any:
    from bare_proxy import make_app

    return make_app(os.environ["BENCH_UPSTREAM"], os.environ["BENCH_UPSTREAM_TOKEN"])


def gateway() -> Any:
    from igris_mw import IgrisGateway

    store, spill = os.environ["BENCH_STORE"], os.environ["BENCH_SPILL"]
    return IgrisGateway(None, store=store, audit_spill=spill)
