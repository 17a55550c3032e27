"""``igris-mw serve``: the standalone gateway on uvicorn.

First start with no configuration works: the embedded SQLite store and a
master key file (mode 0600) are created in the data directory
(``IGRIS_HOME``, default ``./.igris``), and when the store has no admin key
yet, one is issued and printed once. A store that keeps no audit events
(``vault://``) gets a JSON-lines audit sink in the data directory unless
``--audit`` / ``IGRIS_AUDIT`` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._settings import LOG_FORMATS, LOG_LEVELS, Settings
from ._common import (
    LazyCrypto,
    add_location_options,
    audit_url_for,
    close_audit_sink,
    load_crypto,
    make_data_dir,
    open_audit_sink,
)

if TYPE_CHECKING:
    from ..storage import Store

__all__ = ["ensure_master_key", "register", "run_serve"]


def ensure_master_key(settings: Settings, *, create: bool) -> Path | None:
    """Create ``<data dir>/master.key`` (0600) when ``create`` and no master
    key is configured (``Settings.master_key_configured``) and it does not
    exist yet. A configured key is never replaced by a generated one.

    Returns the path of a key file created now, else ``None``.
    """
    path = settings.default_master_key_file
    if settings.master_key_configured or not create or path.exists():
        return None
    from .._keyring import Keyring

    make_data_dir(settings)
    Keyring.generate_key_file(path)
    return path


def _port(text: str) -> int:
    # The same rule as IGRIS_PORT, with argparse's one-line error.
    try:
        return int(Settings.from_env({"IGRIS_PORT": text}).port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("IGRIS_PORT ", "")) from None


def _workers_count(text: str) -> int:
    try:
        return int(Settings.from_env({"IGRIS_WORKERS": text}).workers)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("IGRIS_WORKERS ", "")) from None


def _positive(text: str) -> float:
    try:
        return float(Settings.from_env({"IGRIS_UPSTREAM_TIMEOUT": text}).upstream_timeout)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None


def _bytes(text: str) -> int:
    # The same rule as IGRIS_MAX_REQUEST_BODY: a bad value is argparse's one line, not a traceback.
    try:
        return int(Settings.from_env({"IGRIS_MAX_REQUEST_BODY": text}).max_request_body)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of bytes, got {text!r}"
        ) from None


def _at_least_one(text: str) -> int:
    try:
        return int(
            Settings.from_env({"IGRIS_AUTH_FAILURES_PER_MINUTE": text}).auth_failures_per_minute
        )
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``serve`` to the ``igris-mw`` parser. Defaults are ``None`` so the
    environment (``Settings``) fills them in when the command runs."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the standalone gateway", description=__doc__
    )
    p.add_argument("--host", help="address to listen on (default: $IGRIS_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to listen on (default: $IGRIS_PORT, else 8080)")
    p.add_argument(
        "--upstream-timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="wait for upstream response headers (default: $IGRIS_UPSTREAM_TIMEOUT, else 60)",
    )
    p.add_argument(
        "--upstream-ca-file",
        default=None,
        metavar="PEM",
        help="CA certificates trusted for every https upstream, besides the system's "
        "(default: $IGRIS_UPSTREAM_CA_FILE)",
    )
    p.add_argument(
        "--upstream-proxy",
        default=None,
        metavar="URL",
        help="forward proxy http://[user:pass@]host:port for all upstream traffic, CONNECT "
        "for https (default: $IGRIS_UPSTREAM_PROXY; prefer the variable for a password, "
        "which other local users can see in a command line)",
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
        help="base URL for gatewayUrl (default: $IGRIS_PUBLIC_URL, else from each request)",
    )
    p.add_argument(
        "--cache-ttl",
        type=_positive,
        default=5.0,
        metavar="SECONDS",
        help="bound on how long an unnotified change can go unseen (default 5)",
    )
    p.add_argument(
        "--max-stale",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="serve a cached key or connection at most this long after its last successful "
        "check while the store is unreachable, then 503 (default: $IGRIS_MAX_STALE, else 60)",
    )
    p.add_argument(
        "--rate-limit-store",
        default=None,
        metavar="URL",
        help="redis://host:port/db to share rate-limit buckets across replicas "
        "(default: $IGRIS_RATE_LIMIT_STORE, else per process)",
    )
    p.add_argument(
        "--auth-failures-per-minute",
        type=_at_least_one,
        default=None,
        metavar="N",
        help="failed authentications per client address per minute before 429 "
        "(default: $IGRIS_AUTH_FAILURES_PER_MINUTE, else 30)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="bound on shutdown: open requests, then the audit queue (rest spilled; default 10)",
    )
    p.add_argument(
        "--audit-failure",
        choices=("closed", "open"),
        help="when the audit sink is down and the spill is full: refuse gateway requests "
        "with 503 audit_unavailable (closed) or serve them unrecorded (open); "
        "default: $IGRIS_AUDIT_FAILURE, else closed",
    )
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="uvicorn log level (default: $IGRIS_LOG_LEVEL, else info)",
    )
    p.add_argument(
        "--allow-upstream-network",
        action="append",
        default=None,
        metavar="CIDR",
        help="let upstreams reach this internal network (repeat; default: "
        "$IGRIS_ALLOW_UPSTREAM_NETWORKS); cloud metadata stays refused",
    )
    p.add_argument(
        "--max-request-body",
        type=_bytes,
        default=None,
        metavar="BYTES",
        help="largest request body on gateway paths (default: $IGRIS_MAX_REQUEST_BODY, else 8 MiB)",
    )
    p.add_argument(
        "--stream-idle-timeout",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="close an upstream stream silent this long "
        "(default: $IGRIS_STREAM_IDLE_TIMEOUT, else 300)",
    )
    p.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        help="text (uvicorn's lines) or json (one object per line on stdout, an access "
        "line per request with its request id); default: $IGRIS_LOG_FORMAT, else text",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="log each request line (always on with --log-format json)",
    )
    p.add_argument(
        "--metrics-port",
        type=_port,
        help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics "
        "(default: $IGRIS_METRICS_PORT, else no metrics listener)",
    )
    p.add_argument(
        "--metrics-host",
        help="address of the metrics listener (default: $IGRIS_METRICS_HOST, else 127.0.0.1)",
    )
    p.add_argument(
        "--workers",
        type=_workers_count,
        help="processes serving the port (default: $IGRIS_WORKERS, else 1; docs/workers.md)",
    )
    add_location_options(p)
    p.set_defaults(run=run_serve)


def _networks_option(values: list[str] | None) -> tuple[str, ...] | None:
    """``--allow-upstream-network`` (repeatable), checked like the variable."""
    if values is None:
        return None
    from .._policy.egress import parse_networks

    return tuple(str(n) for n in parse_networks(values))


def _say(message: str) -> None:
    if _JSON_LINES:
        # serve's own notices are log lines too under --log-format json.
        print(_json_notice(message), file=sys.stderr, flush=True)
    else:
        print(f"igris-mw: {message}", file=sys.stderr, flush=True)


_JSON_LINES = False


def _json_notice(message: str) -> str:
    import logging

    from .._ops.logs import JsonFormatter

    record = logging.LogRecord("igris_mw.serve", logging.INFO, "", 0, message, None, None)
    return JsonFormatter().format(record)


async def _bootstrap_admin_key(
    store: Store, settings: Settings, environ: Mapping[str, str]
) -> str | None:
    """Issue an admin key when the store has never had one; ``None`` if it has.

    Only a store that never held an admin key gets one: with every admin key
    revoked, a restart must not mint (and print) a new one.
    """
    from .._service import Service
    from ..models import Scope

    crypto = LazyCrypto(settings, environ)
    audit_url, defaulted = audit_url_for(settings, store)
    if defaulted:
        make_data_dir(settings)
    await store.open()
    audit: Any = None
    try:
        keys = await store.list_api_keys()
        if any(Scope.ADMIN in k.scopes for k in keys):
            return None
        # The key's creation is audited where the gateway will audit (the
        # store, --audit, or a vault store's default JSON-lines file).
        audit = await open_audit_sink(audit_url)
        service = Service(store, crypto, audit=audit)
        _, key = await service.create_api_key({"name": "bootstrap admin", "scopes": ["admin"]})
        return key
    finally:
        try:
            await crypto.aclose()
        finally:
            try:
                await close_audit_sink(audit, store)
            finally:
                await store.close()


def run_serve(args: argparse.Namespace) -> int:
    from .._gateway import IgrisGateway
    from .._plugins import redact_url, store_from_url
    from ._shutdown import run_bounded
    from ._workers import fork_workers, worker_path, worker_slot

    environ = dict(os.environ)
    settings = Settings.from_env(environ).override(
        store=args.store,
        crypto=args.crypto,
        audit=args.audit,
        host=args.host,
        port=args.port,
        upstream_timeout=args.upstream_timeout,
        public_url=args.public_url,
        log_level=args.log_level,
        log_format=args.log_format,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        allow_upstream_networks=_networks_option(args.allow_upstream_network),
        max_request_body=args.max_request_body,
        stream_idle_timeout=args.stream_idle_timeout,
        max_stale=args.max_stale,
        rate_limit_store=args.rate_limit_store,
        auth_failures_per_minute=args.auth_failures_per_minute,
        workers=args.workers,
    )
    global _JSON_LINES
    _JSON_LINES = settings.log_format == "json"
    # Only the embedded store gets a generated key: a shared store's key
    # must come from its operator, or each process would make its own.
    embedded = settings.store_url.startswith("sqlite:")
    created = ensure_master_key(settings, create=embedded)
    if created is not None:
        _say(f"created master key file {created} (mode 0600); back it up")
    if embedded:
        make_data_dir(settings)
    crypto = load_crypto(settings, environ)
    admin_key = asyncio.run(
        _bootstrap_admin_key(store_from_url(settings.store_url), settings, environ)
    )
    if admin_key is not None:
        _say(
            "first start: an admin key was issued. It is shown this once only:\n\n"
            f"    {admin_key}\n"
        )
    if settings.workers > 1:
        if settings.rate_limit_store is None:
            _say(
                f"{settings.workers} workers without --rate-limit-store: rate limits, "
                "maxConcurrent and the failed-authentication throttle count per worker "
                f"(up to {settings.workers}x each limit in all; docs/workers.md)"
            )
        _say(
            f"{settings.workers} workers: dashboard sign-in sessions live in one worker, and a "
            "browser may reach another; serve the dashboard with --workers 1 (docs/workers.md)"
        )
        status = fork_workers(
            settings.host,
            settings.port,
            settings.workers,
            shutdown_timeout=args.shutdown_timeout,
            on_exit=_shared_metrics(settings, environ),
        )
        if status is not None:  # the parent, once every worker has stopped
            return status
    store = store_from_url(settings.store_url)
    audit_url, defaulted = audit_url_for(settings, store)
    if defaulted:
        make_data_dir(settings)
        _say(
            f"the store keeps no audit events; the audit trail goes to {audit_url} "
            "(choose another with --audit or IGRIS_AUDIT)"
        )
    app = IgrisGateway(
        None,
        store=store,
        crypto=crypto,
        audit=audit_url,
        upstream_timeout=settings.upstream_timeout,
        allowed_origins=args.allowed_origin or (),
        public_url=settings.public_url,
        cache_ttl=args.cache_ttl,
        max_stale=settings.max_stale,
        rate_limit_store=settings.rate_limit_store,
        auth_failures_per_minute=settings.auth_failures_per_minute,
        audit_spill=worker_path(settings.audit_spill_path),
        metrics=settings.metrics_port is not None,
        environ=environ,
        audit_failure=args.audit_failure or settings.audit_failure,
        allow_upstream_networks=settings.allow_upstream_networks,
        max_request_body=settings.max_request_body,
        stream_idle_timeout=settings.stream_idle_timeout,
        upstream_ca_file=args.upstream_ca_file,
        upstream_proxy=args.upstream_proxy,
        dashboard=True,
    )
    # Half the bound for open requests, 3/10 for the audit queue; the rest
    # is for closing the store and exiting. What the sink has not taken then
    # is in the spill file (docs/shutdown.md).
    app.audit.close_timeout = args.shutdown_timeout * 0.3
    # With workers, one listens: any worker's scrape sums them all (_shared_metrics).
    stop_metrics = _start_metrics(app, settings) if worker_slot() in (None, 0) else None
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    _say(
        f"serving on http://{settings.host}:{settings.port} "
        f"(store {redact_url(settings.store_url)})"
    )
    from .._ops.logs import log_config

    json_logs = settings.log_format == "json"
    config = log_config(settings.log_format, settings.log_level, access_log=args.access_log)
    try:
        run_bounded(
            app,
            shutdown_timeout=args.shutdown_timeout,
            host=settings.host,
            port=settings.port,
            loop=loop,
            http="httptools",
            lifespan="on",
            log_level=settings.log_level,
            access_log=args.access_log or json_logs,
            server_header=False,
            date_header=False,
            log_config=config,
        )
    finally:
        if stop_metrics is not None:
            stop_metrics()
    return 0


def _shared_metrics(settings: Settings, environ: dict[str, str]) -> Any:
    """Before forking workers with metrics on: point them at one multiprocess
    directory (``PROMETHEUS_MULTIPROC_DIR``; when unset, ``<data dir>/metrics``,
    wiped now), so a scrape returns the sum over every worker. Returns what
    the supervisor calls with a dead worker's pid, else ``None``."""
    if settings.metrics_port is None:
        return None
    # Not imported from _ops.metrics: that imports prometheus_client, which
    # picks its value class from the environment once, at import.
    variable = "PROMETHEUS_MULTIPROC_DIR"
    path = environ.get(variable) or environ.get(variable.lower())
    if not path:
        directory = settings.home / "metrics"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        path = str(directory)
        # Read by prometheus_client when a worker first imports it, after the fork.
        os.environ[variable] = environ[variable] = path

    def dead(pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]

    return dead


def _start_metrics(app: Any, settings: Settings) -> Any:
    """Start the metrics listener when a port is set; its stop function, else ``None``."""
    if settings.metrics_port is None:
        return None
    from .._errors import ConfigurationError
    from .._ops.metrics import serve_in_thread

    host, port = settings.metrics_host, settings.metrics_port
    if port == settings.port:
        raise ConfigurationError(f"--metrics-port {port} is the gateway's own port: choose another")
    try:
        stop = serve_in_thread(app.metrics, host, port)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen for metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    _say(f"metrics on http://{host}:{port}/metrics")
    return stop
