"""The ``igris-mw`` command: the management operations, straight against the store.

Defaults (every command takes ``--store`` and ``--crypto``):

* data directory: ``$IGRIS_HOME``, else ``./.igris``;
* store: ``--store``, else ``$IGRIS_STORE``, else ``sqlite:///<data dir>/igris.db``;
* crypto: ``--crypto``, else ``$IGRIS_CRYPTO``, else ``keyring:``, whose master
  key comes from ``$IGRIS_MASTER_KEY`` or ``$IGRIS_MASTER_KEY_FILE``, else
  from ``<data dir>/master.key`` if that file exists (``serve`` creates it).

User errors print one line (``igris-mw: error: ...``) and exit 2 for usage
and configuration errors, 1 for the others; Ctrl-C exits 130. Startup stays
light: nothing here imports the gateway or its HTTP client.

Commands are registered from ``_REGISTRARS``; ``serve`` joins them from
``igris_mw._serve`` (``register(subparsers, common)`` if it defines one, else
``add_serve_parser(subparsers)`` + ``run_serve(args)``) when that module exists.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import importlib.util
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from ._cli_output import (
    EVENT_HEADERS,
    cell,
    event_row,
    out,
    print_events,
    print_json,
    show_api_key,
    show_connection,
    table,
)
from ._errors import ConfigurationError, IgrisError
from ._service import Service
from .crypto import CryptoProvider
from .models import AuthType, Connection, Scope, format_time

__all__ = [
    "build_parser",
    "crypto_environ",
    "data_dir",
    "default_master_key_file",
    "default_store_url",
    "main",
    "resolve_store_url",
]

ENV_HOME = "IGRIS_HOME"
ENV_STORE = "IGRIS_STORE"
ENV_CRYPTO = "IGRIS_CRYPTO"
ENV_MASTER_KEY = "IGRIS_MASTER_KEY"
ENV_MASTER_KEY_FILE = "IGRIS_MASTER_KEY_FILE"
DEFAULT_HOME = ".igris"
FOLLOW_INTERVAL = 0.5

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# -- defaults shared with `serve` -------------------------------------------


def data_dir(environ: Mapping[str, str]) -> Path:
    """``$IGRIS_HOME``, else ``./.igris`` (absolute)."""
    return Path(environ.get(ENV_HOME) or DEFAULT_HOME).expanduser().absolute()


def default_store_url(environ: Mapping[str, str]) -> str:
    """``sqlite:///<data dir>/igris.db`` (an absolute path: four slashes)."""
    return f"sqlite:///{data_dir(environ) / 'igris.db'}"


def resolve_store_url(option: str | None, environ: Mapping[str, str]) -> str:
    """``--store``, else ``$IGRIS_STORE``, else the embedded default."""
    return option or environ.get(ENV_STORE) or default_store_url(environ)


def default_master_key_file(environ: Mapping[str, str]) -> Path:
    """``<data dir>/master.key``."""
    return data_dir(environ) / "master.key"


def crypto_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment the keyring reads, with the default key file filled in
    when neither ``IGRIS_MASTER_KEY`` nor ``IGRIS_MASTER_KEY_FILE`` is set
    and it exists."""
    env = dict(environ)
    if not env.get(ENV_MASTER_KEY) and not env.get(ENV_MASTER_KEY_FILE):
        env.pop(ENV_MASTER_KEY, None)
        default = default_master_key_file(environ)
        if default.exists():
            env[ENV_MASTER_KEY_FILE] = str(default)
    return env


def _load_crypto(url: str | None, environ: Mapping[str, str]) -> CryptoProvider:
    from ._plugins import crypto_from_url

    url = url or environ.get(ENV_CRYPTO) or "keyring:"
    env = crypto_environ(environ)
    if url.split(":", 1)[0].lower() == "keyring" and not (
        env.get(ENV_MASTER_KEY) or env.get(ENV_MASTER_KEY_FILE)
    ):
        raise ConfigurationError(
            f"no master key configured: set {ENV_MASTER_KEY} (base64 of 32 random bytes) "
            f"or {ENV_MASTER_KEY_FILE} (a file holding it), or run 'igris-mw serve' once "
            f"to create {default_master_key_file(environ)}"
        )
    return crypto_from_url(url, env)


class _LazyCrypto:
    """Builds the real provider on first use, so commands that never touch a
    credential (list, disable, audit ...) need no master key."""

    name = "lazy"

    def __init__(self, url: str | None, environ: Mapping[str, str]) -> None:
        self._url = url
        self._environ = environ
        self._provider: CryptoProvider | None = None

    def _get(self) -> CryptoProvider:
        if self._provider is None:
            self._provider = _load_crypto(self._url, self._environ)
        return self._provider

    async def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        return await self._get().encrypt(plaintext, associated_data)

    async def decrypt(self, envelope: bytes, associated_data: bytes) -> bytes:
        return await self._get().decrypt(envelope, associated_data)

    async def rewrap(self, envelope: bytes, associated_data: bytes) -> bytes:
        return await self._get().rewrap(envelope, associated_data)

    def key_id_of(self, envelope: bytes) -> str | None:
        return self._get().key_id_of(envelope)

    @property
    def primary_key_id(self) -> str:
        return self._get().primary_key_id

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()

    def __repr__(self) -> str:
        return f"_LazyCrypto(loaded={self._provider is not None})"


# -- credential input ------------------------------------------------------


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _read_credential(path: str | None) -> str:
    """From ``path``, else standard input when piped, else a hidden prompt."""
    if path is not None:
        try:
            return _strip_newline(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IgrisError(f"credential file {path!r} does not exist") from None
        except UnicodeDecodeError:
            raise IgrisError(f"credential file {path!r} is not UTF-8 text") from None
        except OSError as exc:
            raise IgrisError(f"credential file {path!r} cannot be read: {exc.strerror}") from None
    if not sys.stdin.isatty():
        return _strip_newline(sys.stdin.read())
    return getpass.getpass("Credential (input hidden): ")


def _read_pem(path: str, what: str) -> str:
    """A PEM file's text (a certificate, a chain, or a client key)."""
    try:
        return Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise IgrisError(f"{what} file {path!r} does not exist") from None
    except UnicodeDecodeError:
        raise IgrisError(f"{what} file {path!r} is not PEM text") from None
    except OSError as exc:
        raise IgrisError(f"{what} file {path!r} cannot be read: {exc.strerror}") from None


def _tls_body(args: argparse.Namespace) -> dict[str, Any]:
    """``caCertificate``, ``clientCertificate``, ``clientKey`` from the --*-file options."""
    body: dict[str, Any] = {}
    if getattr(args, "ca_file", None) is not None:
        body["caCertificate"] = _read_pem(args.ca_file, "CA certificate")
    if args.client_cert_file is not None:
        body["clientCertificate"] = _read_pem(args.client_cert_file, "client certificate")
    if args.client_key_file is not None:
        body["clientKey"] = _read_pem(args.client_key_file, "client key")
    return body


# -- commands ---------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Service], Awaitable[int]]


async def _api_keys_create(args: argparse.Namespace, svc: Service) -> int:
    body: dict[str, Any] = {"name": args.name, "scopes": args.scope}
    if args.connection:
        body["connections"] = args.connection
    if args.expires_at is not None:
        body["expiresAt"] = args.expires_at
    record, key = await svc.create_api_key(body)
    if args.json:
        print_json({**record.to_json(), "key": key})
    else:
        show_api_key(record, False)
        out(f"key          {key}")
        sys.stderr.write("igris-mw: store this key now; it is not shown again\n")
    return 0


async def _api_keys_list(args: argparse.Namespace, svc: Service) -> int:
    keys = await svc.list_api_keys()
    if args.json:
        print_json({"data": [k.to_json() for k in keys], "nextCursor": None})
        return 0
    table(
        ["ID", "NAME", "SCOPES", "CONNECTIONS", "CREATED", "EXPIRES", "REVOKED"],
        (
            [
                k.id,
                k.name,
                ",".join(sorted(s.value for s in k.scopes)),
                ",".join(sorted(k.connections)) if k.connections is not None else "*",
                format_time(k.created_at),
                format_time(k.expires_at) if k.expires_at else None,
                format_time(k.revoked_at) if k.revoked_at else None,
            ]
            for k in keys
        ),
    )
    return 0


async def _api_keys_revoke(args: argparse.Namespace, svc: Service) -> int:
    record = await svc.revoke_api_key(args.id)
    if args.json:
        print_json(record.to_json())
    else:
        out(f"revoked {record.id}")
    return 0


async def _connections_create(args: argparse.Namespace, svc: Service) -> int:
    body: dict[str, Any] = {
        "slug": args.slug,
        "name": args.name,
        "upstreamUrl": args.upstream_url,
        "authType": args.auth_type,
        "enabled": not args.disabled,
    }
    if args.header_name is not None:
        body["headerName"] = args.header_name
    if args.auth_type != AuthType.NONE.value or args.credential_file is not None:
        body["credential"] = _read_credential(args.credential_file)
    body.update(_tls_body(args))
    show_connection(await svc.create_connection(body), args.json)
    return 0


async def _connections_list(args: argparse.Namespace, svc: Service) -> int:
    conns: list[Connection] = []
    cursor: str | None = None
    while True:
        page = await svc.list_connections(limit=200, cursor=cursor)
        conns.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    if args.json:
        print_json({"data": [c.to_json() for c in conns], "nextCursor": None})
        return 0
    table(
        ["SLUG", "NAME", "AUTH", "ENABLED", "CRED", "UPSTREAM"],
        (
            [c.slug, c.name, c.auth_type.value, c.enabled, c.credential_version, c.upstream_url]
            for c in conns
        ),
    )
    return 0


async def _connections_show(args: argparse.Namespace, svc: Service) -> int:
    show_connection(await svc.get_connection(args.slug), args.json)
    return 0


async def _connections_update(args: argparse.Namespace, svc: Service) -> int:
    changes: dict[str, Any] = {}
    for attr, field in (
        ("name", "name"),
        ("upstream_url", "upstreamUrl"),
        ("auth_type", "authType"),
        ("header_name", "headerName"),
    ):
        if getattr(args, attr) is not None:
            changes[field] = getattr(args, attr)
    if args.ca_file is not None:
        changes["caCertificate"] = _read_pem(args.ca_file, "CA certificate")
    if args.remove_ca:
        changes["caCertificate"] = None
    if args.remove_client_cert:
        changes["clientCertificate"] = None
    if not changes:
        raise _UsageError(
            "nothing to change: give --name, --upstream-url, --auth-type, --header-name, "
            "--ca-file, --remove-ca or --remove-client-cert"
        )
    show_connection(await svc.update_connection(args.slug, changes), args.json)
    return 0


async def _connections_rotate(args: argparse.Namespace, svc: Service) -> int:
    # Fail on an unknown slug before asking for a credential.
    await svc.get_connection(args.slug)
    tls = _tls_body(args)
    # With only a new client certificate/key, the stored credential is kept.
    credential = (
        _read_credential(args.credential_file)
        if args.credential_file is not None or not tls
        else None
    )
    conn = await svc.rotate_credential(
        args.slug,
        credential,
        auth_type=args.auth_type,
        header_name=args.header_name,
        client_certificate=tls.get("clientCertificate"),
        client_key=tls.get("clientKey"),
    )
    show_connection(conn, args.json)
    return 0


async def _connections_disable(args: argparse.Namespace, svc: Service) -> int:
    show_connection(await svc.set_enabled(args.slug, False), args.json)
    return 0


async def _connections_enable(args: argparse.Namespace, svc: Service) -> int:
    show_connection(await svc.set_enabled(args.slug, True), args.json)
    return 0


async def _connections_delete(args: argparse.Namespace, svc: Service) -> int:
    await svc.delete_connection(args.slug)
    if args.json:
        print_json({"deleted": args.slug})
    else:
        out(f"deleted {args.slug}")
    return 0


async def _audit(args: argparse.Namespace, svc: Service) -> int:
    if args.target == "verify":
        return await _audit_verify(args, svc)
    if args.extra is not None:
        raise _UsageError(f"unexpected argument {args.extra!r}")
    page = await svc.list_audit(args.target, limit=args.limit, cursor=args.cursor, since=args.since)
    if not args.follow:
        if args.json:
            print_json({"data": [e.to_json() for e in page.items], "nextCursor": page.next_cursor})
        else:
            table(EVENT_HEADERS, (event_row(e) for e in page.items))
        return 0
    # Following reads like `tail -f`: oldest first, then new events as they land.
    backlog = list(reversed(page.items))
    print_events(backlog, args.json, header=not args.json)
    last = backlog[-1].seq if backlog else 0
    while True:
        await asyncio.sleep(FOLLOW_INTERVAL)
        fresh = await svc.audit.audit_chain(args.target, after_seq=last, limit=1000)
        if fresh:
            if not args.json:
                # Column widths differ per batch; compact rows beat a re-printed header.
                for e in fresh:
                    out("  ".join(cell(c) for c in event_row(e)))
                sys.stdout.flush()
            else:
                print_events(fresh, True, header=False)
            last = fresh[-1].seq


async def _audit_verify(args: argparse.Namespace, svc: Service) -> int:
    report = await svc.verify_audit(args.extra)
    broken = {slug: problems for slug, problems in report.items() if problems}
    if args.json:
        print_json({"ok": not broken, "connections": report})
    elif not broken:
        out("ok")
    else:
        for slug, problems in broken.items():
            for problem in problems:
                out(f"{slug}: {problem}")
    if broken:
        sys.stderr.write(
            f"igris-mw: error: the audit trail of {len(broken)} connection(s) "
            "failed verification\n"
        )
        return EXIT_ERROR
    return 0


# -- parser -----------------------------------------------------------------


class _UsageError(IgrisError):
    """A command line that parses but makes no sense; exits 2."""


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, like every other user error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"igris-mw: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(EXIT_USAGE)


def _add_location_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help=f"store URL (default: ${ENV_STORE}, else sqlite:///<data dir>/igris.db, "
        f"data dir = ${ENV_HOME} or ./{DEFAULT_HOME})",
    )
    parser.add_argument(
        "--crypto",
        metavar="URL",
        help=f"crypto provider URL (default: ${ENV_CRYPTO}, else keyring:, keyed by "
        f"${ENV_MASTER_KEY} / ${ENV_MASTER_KEY_FILE} / <data dir>/master.key)",
    )
    parser.add_argument(
        "--audit",
        metavar="URL",
        help="separate audit sink: a store URL that keeps audit events, or jsonl:///path "
        "(default: $IGRIS_AUDIT, else the store itself; a vault:// store needs one)",
    )


def _common() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    _add_location_options(common)
    common.add_argument("--json", action="store_true", help="print JSON")
    return common


def _store_command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Run ``handler`` with a Service on the opened store, closing both after."""

    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_with_service(args, handler))

    return run


async def _with_service(args: argparse.Namespace, handler: Handler) -> int:
    from ._plugins import store_from_url

    environ = os.environ
    url = resolve_store_url(args.store, environ)
    store = store_from_url(url)
    if not args.store and not environ.get(ENV_STORE):
        # The embedded default lives in the data dir; make it on first use.
        home = data_dir(environ)
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the data directory {str(home)!r} ({exc.strerror}); "
                f"set {ENV_HOME} or --store"
            ) from None
    crypto = _LazyCrypto(args.crypto, environ)
    audit_url = getattr(args, "audit", None) or environ.get("IGRIS_AUDIT")
    await store.open()
    audit: Any = None
    try:
        if audit_url:
            from ._audit_file import audit_sink_from_url

            audit = await audit_sink_from_url(audit_url)
        return await handler(args, Service(store, crypto, audit=audit))
    finally:
        try:
            await crypto.aclose()
        finally:
            try:
                if audit is not None and audit is not store:
                    await audit.close()
            finally:
                await store.close()


def _leaf(
    sub: Any, name: str, common: argparse.ArgumentParser, handler: Handler, help_: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[common], help=help_, description=help_
    )
    parser.set_defaults(run=_store_command(handler))
    return parser


def _register_api_keys(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("api-keys", help="issue, list and revoke gateway API keys")
    leaves = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = _leaf(leaves, "create", common, _api_keys_create, "issue a key; it is printed once")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope",
        required=True,
        action="append",
        choices=[s.value for s in Scope],
        help="admin (management API) or mcp (gateway); repeatable",
    )
    create.add_argument(
        "--connection",
        action="append",
        metavar="SLUG",
        help="limit an mcp key to this connection; repeatable",
    )
    create.add_argument("--expires-at", metavar="RFC3339", help="e.g. 2030-01-01T00:00:00Z")
    _leaf(leaves, "list", common, _api_keys_list, "list keys (never the keys themselves)")
    revoke = _leaf(leaves, "revoke", common, _api_keys_revoke, "revoke a key at once")
    revoke.add_argument("id", metavar="ID")


def _register_connections(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("connections", help="manage connections (virtual keys)")
    leaves = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    auth_types = [t.value for t in AuthType]
    cred_help = (
        "read the credential from this file (default: standard input, or a hidden prompt "
        "on a terminal); one trailing newline is dropped"
    )

    create = _leaf(leaves, "create", common, _connections_create, "create a connection")
    create.add_argument("--slug", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--upstream-url", required=True, metavar="URL")
    create.add_argument("--auth-type", default=AuthType.BEARER.value, choices=auth_types)
    create.add_argument("--header-name", metavar="H", help="with --auth-type header")
    create.add_argument("--credential-file", metavar="F", help=cred_help)
    create.add_argument("--disabled", action="store_true", help="create it disabled")
    _add_tls_options(create, ca=True)

    _leaf(leaves, "list", common, _connections_list, "list connections")
    for name, handler, help_ in (
        ("show", _connections_show, "show one connection"),
        ("disable", _connections_disable, "revoke a connection at once"),
        ("enable", _connections_enable, "restore a disabled connection"),
        ("delete", _connections_delete, "delete a connection (its audit trail stays)"),
    ):
        _leaf(leaves, name, common, handler, help_).add_argument("slug", metavar="SLUG")

    update = _leaf(
        leaves, "update", common, _connections_update,
        "change name, upstream URL, auth type or header name",
    )
    update.add_argument("slug", metavar="SLUG")
    update.add_argument("--name")
    update.add_argument("--upstream-url", metavar="URL")
    update.add_argument("--auth-type", choices=auth_types)
    update.add_argument("--header-name", metavar="H")
    update.add_argument(
        "--ca-file", metavar="PEM", help="trust this CA (PEM) for the https upstream"
    )
    update.add_argument("--remove-ca", action="store_true", help="drop the connection's CA")
    update.add_argument(
        "--remove-client-cert", action="store_true",
        help="drop the client certificate and key (replace them with rotate)",
    )

    rotate = _leaf(leaves, "rotate", common, _connections_rotate, "replace the credential")
    rotate.add_argument("slug", metavar="SLUG")
    rotate.add_argument("--credential-file", metavar="F", help=cred_help)
    rotate.add_argument(
        "--auth-type", choices=[t for t in auth_types if t != AuthType.NONE.value],
        help="switch the auth type along with the credential",
    )
    rotate.add_argument("--header-name", metavar="H")
    _add_tls_options(rotate, ca=False)


def _add_tls_options(parser: argparse.ArgumentParser, *, ca: bool) -> None:
    if ca:
        parser.add_argument(
            "--ca-file", metavar="PEM",
            help="trust this CA (PEM) for the https upstream, besides the system's",
        )
    parser.add_argument(
        "--client-cert-file", metavar="PEM",
        help="client certificate chain (PEM, leaf first) for an upstream requiring mTLS",
    )
    parser.add_argument(
        "--client-key-file", metavar="PEM",
        help="its private key (PEM, unencrypted; sealed like the credential, never shown)",
    )


def _register_audit(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = _leaf(
        sub, "audit", common, _audit,
        "show a connection's audit trail (audit SLUG) or check the hash chains "
        "(audit verify [SLUG])",
    )
    audit.add_argument("target", metavar="SLUG|verify")
    audit.add_argument("extra", nargs="?", metavar="SLUG", help="with verify: one connection")
    audit.add_argument("--limit", type=int, default=50, help="events to show (1-200)")
    audit.add_argument("--cursor", help="nextCursor of the previous page")
    audit.add_argument("--since", metavar="RFC3339", help="only events at or after this time")
    audit.add_argument("--follow", "-f", action="store_true", help="keep printing new events")


def _register_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    # `serve` pulls in the gateway (aiohttp, uvicorn) only when it runs: its
    # module imports them inside `run_serve`, so listing it here stays light.
    if importlib.util.find_spec("igris_mw._serve") is None:
        return
    module = importlib.import_module("igris_mw._serve")
    register = getattr(module, "register", None)
    if register is not None:
        register(sub, common)
        return
    parser = module.add_serve_parser(sub)
    _add_location_options(parser)
    parser.set_defaults(run=module.run_serve)


async def _crypto_rewrap(args: argparse.Namespace, svc: Service) -> int:
    from ._rewrap import rewrap_all

    moved = await rewrap_all(svc)
    if args.json:
        print_json({"rewrapped": moved, "primaryKeyId": svc.crypto.primary_key_id})
    else:
        out(f"re-sealed {moved} credential(s) under key {svc.crypto.primary_key_id}")
    return 0


def _register_crypto(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("crypto", help="master-key maintenance")
    leaves = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    _leaf(
        leaves, "rewrap", common, _crypto_rewrap,
        "re-seal every stored credential under the primary master key (or the newest "
        "Transit key version), online; run after adding a new master key first",
    )


_REGISTRARS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    _register_serve,
    _register_api_keys,
    _register_connections,
    _register_audit,
    _register_crypto,
]


def build_parser() -> argparse.ArgumentParser:
    """The whole ``igris-mw`` parser; each leaf sets ``run(args) -> exit code``."""
    parser = _Parser(
        prog="igris-mw",
        description="Credential-injecting gateway for MCP servers.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"igris-mw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()
    for register in _REGISTRARS:
        register(sub, common)
    return parser


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _fail(message: str, code: int, stream: TextIO | None = None) -> int:
    (stream or sys.stderr).write(f"igris-mw: error: {_one_line(message)}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``igris-mw``; returns the exit code (the console script exits with it)."""
    try:
        args = build_parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (ConfigurationError, _UsageError) as exc:
        return _fail(exc.message, EXIT_USAGE)
    except IgrisError as exc:
        return _fail(exc.message, EXIT_ERROR)
    except BrokenPipeError:
        # `igris-mw ... | head`: stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
