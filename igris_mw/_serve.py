"""``igris-mw serve``: the standalone gateway on uvicorn.

First start with no configuration works: the embedded SQLite store and a
master key file (mode 0600) are created in the data directory
(``IGRIS_HOME``, default ``./.igris``), and when the store has no admin key
yet, one is issued and printed once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .cli import data_dir, resolve_store_url

__all__ = ["add_serve_parser", "ensure_master_key", "run_serve"]


def ensure_master_key(environ: dict[str, str], *, create: bool) -> Path | None:
    """Point ``IGRIS_MASTER_KEY_FILE`` at the data directory's key file when
    no master key is configured; create the file (0600) if ``create``.

    A configured key (env var or file) is never replaced by a generated one.
    Returns the path of a key file created now, else ``None``.
    """
    if "IGRIS_MASTER_KEY" in environ or environ.get("IGRIS_MASTER_KEY_FILE"):
        return None
    path = data_dir(environ) / "master.key"
    environ["IGRIS_MASTER_KEY_FILE"] = str(path)
    if path.exists() or not create:
        return None
    from ._keyring import Keyring

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    Keyring.generate_key_file(path)
    return path


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="run the standalone gateway", description=__doc__
    )
    p.add_argument("--host", default=os.environ.get("IGRIS_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("IGRIS_PORT", "8080")))
    p.add_argument(
        "--upstream-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wait for upstream response headers (default IGRIS_UPSTREAM_TIMEOUT or 60)",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="browser Origin allowed to call the gateway (repeat; '*' for any)",
    )
    p.add_argument(
        "--public-url",
        default=os.environ.get("IGRIS_PUBLIC_URL"),
        help="base URL for gatewayUrl (default: from each request)",
    )
    p.add_argument(
        "--cache-ttl",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="bound on how long an unnotified change can go unseen (default 5)",
    )
    p.add_argument("--log-level", default=os.environ.get("IGRIS_LOG_LEVEL", "info"))
    p.add_argument("--access-log", action="store_true", help="log each request line")
    return p


async def _bootstrap_admin_key(
    store_url: str, crypto: str | None, environ: Mapping[str, str]
) -> str | None:
    from ._plugins import crypto_from_url, store_from_url
    from ._service import Service
    from .models import Scope

    store = store_from_url(store_url)
    await store.open()
    try:
        keys = await store.list_api_keys()
        if any(Scope.ADMIN in k.scopes and k.revoked_at is None for k in keys):
            return None
        service = Service(store, crypto_from_url(crypto, environ))
        _, key = await service.create_api_key({"name": "bootstrap admin", "scopes": ["admin"]})
        return key
    finally:
        await store.close()


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ._gateway import IgrisGateway

    environ = dict(os.environ)
    store_url: str = resolve_store_url(args.store, environ)
    created = (
        ensure_master_key(environ, create=True)
        if store_url.startswith("sqlite:")
        else ensure_master_key(environ, create=False)
    )
    if created is not None:
        print(
            f"igris-mw: created master key file {created} (mode 0600); back it up", file=sys.stderr
        )
    crypto = getattr(args, "crypto", None) or environ.get("IGRIS_CRYPTO")
    if store_url.startswith("sqlite:"):
        data_dir(environ).mkdir(parents=True, exist_ok=True, mode=0o700)
    admin_key = asyncio.run(_bootstrap_admin_key(store_url, crypto, environ))
    if admin_key is not None:
        print(
            "igris-mw: first start: an admin key was issued. It is shown this once only:\n\n"
            f"    {admin_key}\n",
            file=sys.stderr,
            flush=True,
        )
    app = IgrisGateway(
        None,
        store=store_url,
        crypto=crypto,
        audit=args.audit,
        upstream_timeout=args.upstream_timeout,
        allowed_origins=args.allowed_origin or (),
        public_url=args.public_url,
        cache_ttl=args.cache_ttl,
        audit_spill=data_dir(environ) / "audit-spill.jsonl",
        environ=environ,
        dashboard=True,
    )
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    print(
        f"igris-mw: serving on http://{args.host}:{args.port} (store {_redact(store_url)})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop=loop,
        http="httptools",
        lifespan="on",
        log_level=args.log_level,
        access_log=args.access_log,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _redact(url: str) -> str:
    from ._plugins import redact_url

    return redact_url(url)
