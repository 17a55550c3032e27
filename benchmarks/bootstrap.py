"""Create the benchmark's connections and ``mcp`` key in a store; print the key.

Run by ``run.py`` with the Python of the gateway that will serve the store
(``--before-python`` runs an older checkout: its store is bootstrapped by
its own code, so the schema is the one it knows). Configuration in
``BENCH_BOOTSTRAP`` (JSON: ``store``, ``upstream``, ``token``, ``slugs``);
the master key in ``IGRIS_MASTER_KEY``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


def service_options(environ: dict[str, str]) -> dict[str, object]:
    """``Service`` keyword arguments: the egress allow-list from the environment,
    when this igris-mw has an egress policy (an older checkout has none)."""
    try:
        from igris_mw._policy.egress import EgressPolicy
    except ImportError:
        return {}
    return {"egress": EgressPolicy.from_setting(environ.get("IGRIS_ALLOW_UPSTREAM_NETWORKS"))}


async def bootstrap(cfg: dict[str, object]) -> str:
    from igris_mw._plugins import crypto_from_url, store_from_url
    from igris_mw._service import Service

    store = store_from_url(str(cfg["store"]))
    await store.open()
    try:
        env = dict(os.environ)
        service = Service(store, crypto_from_url(None, env), **service_options(env))  # type: ignore[arg-type]
        for slug in cfg["slugs"]:  # type: ignore[attr-defined]
            await service.create_connection(
                {"slug": slug, "name": slug, "upstreamUrl": cfg["upstream"],
                 "credential": cfg["token"]}
            )  # fmt: skip
        _, key = await service.create_api_key({"name": "bench", "scopes": ["mcp"]})
        return key
    finally:
        await store.close()


if __name__ == "__main__":
    print(asyncio.run(bootstrap(json.loads(os.environ["BENCH_BOOTSTRAP"]))))
    sys.exit(0)
