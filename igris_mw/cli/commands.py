"""The management commands of ``igris-mw``, straight against the store:
``api-keys``, ``connections``, ``audit`` and ``crypto``.

Each handler takes the parsed arguments and a ``Service`` on the opened
store; ``_store_command`` opens and closes everything around it. A little
over 400 lines: each group's handlers and its parser stay side by side, so
an option and the code that reads it are read together.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .._errors import IgrisError
from .._policy.egress import EgressPolicy
from .._service import Service
from ..models import AuthType, Connection, Scope, format_time
from . import audit_trail
from ._common import (
    EXIT_ERROR,
    LazyCrypto,
    UsageError,
    audit_url_for,
    close_audit_sink,
    make_data_dir,
    open_audit_sink,
    settings_for,
)
from .oauth import (
    add_create_options,
    needs_credential,
    oauth_create_body,
    parse_oauth_option,
    register_connection_oauth,
)
from .output import (
    EVENT_HEADERS,
    cell,
    event_row,
    out,
    print_events,
    print_json,
    show_api_key,
    show_connection,
    table,
    terminal_safe,
)
from .policy import add_policy_options, policy_changes, register_api_keys_update

__all__ = ["FOLLOW_INTERVAL", "REGISTRARS"]

FOLLOW_INTERVAL = 0.5


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
    body.update(policy_changes(args))
    if args.user is not None:
        body["user"] = args.user
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
    body.update(policy_changes(args))
    if needs_credential(args):
        body["credential"] = _read_credential(args.credential_file)
    body.update(_tls_body(args))
    body.update(oauth_create_body(args))
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
    changes.update(policy_changes(args))
    if args.oauth is not None:
        changes["oauth"] = parse_oauth_option(args.oauth)
    if not changes:
        raise UsageError(
            "nothing to change: give --name, --upstream-url, --auth-type, --header-name, "
            "--ca-file, --remove-ca, --remove-client-cert, --rate-limit or "
            "--tools-allow/--tools-deny/--no-tools"
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
    if args.target is None:
        # No SLUG: the whole trail (GET /api/v1/audit), see cli/audit_trail.py.
        if args.follow:
            await audit_trail.follow_all(args, svc, FOLLOW_INTERVAL)
        await audit_trail.list_all(args, svc)
        return 0
    if args.extra is not None:
        raise UsageError(f"unexpected argument {args.extra!r}")
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
                out(terminal_safe(f"{slug}: {problem}"))
    if broken:
        sys.stderr.write(f"igris-mw: error: {len(broken)} audit chain(s) failed verification\n")
        return EXIT_ERROR
    return 0


# -- running a command -----------------------------------------------------


def _store_command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Run ``handler`` with a Service on the opened store, closing both after."""

    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_with_service(args, handler))

    return run


async def _with_service(args: argparse.Namespace, handler: Handler) -> int:
    from .._plugins import store_from_url

    environ = os.environ
    settings = settings_for(args, environ)
    store = store_from_url(settings.store_url)
    if settings.store is None:
        # The embedded default lives in the data dir; make it on first use.
        make_data_dir(settings)
    audit_url, _ = audit_url_for(settings, store)
    crypto = LazyCrypto(settings, environ)
    await store.open()
    audit: Any = None
    try:
        audit = await open_audit_sink(audit_url)
        egress = EgressPolicy.from_setting(settings.allow_upstream_networks)
        return await handler(args, Service(store, crypto, audit=audit, egress=egress))
    finally:
        try:
            await crypto.aclose()
        finally:
            try:
                await close_audit_sink(audit, store)
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
    create.add_argument("--user", metavar="U", help="bind the key to this end user")
    add_policy_options(create, key=True)
    register_api_keys_update(leaves, common, _leaf)
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
    add_policy_options(create, key=False)
    add_create_options(create)

    _leaf(leaves, "list", common, _connections_list, "list connections")
    for name, handler, help_ in (
        ("show", _connections_show, "show one connection"),
        ("disable", _connections_disable, "revoke a connection at once"),
        ("enable", _connections_enable, "restore a disabled connection"),
        ("delete", _connections_delete, "delete a connection (its audit trail stays)"),
    ):
        _leaf(leaves, name, common, handler, help_).add_argument("slug", metavar="SLUG")

    update = _leaf(
        leaves,
        "update",
        common,
        _connections_update,
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
        "--remove-client-cert",
        action="store_true",
        help="drop the client certificate and key (replace them with rotate)",
    )
    add_policy_options(update, key=False)
    update.add_argument("--oauth", metavar="JSON", help="replace the oauth object")

    rotate = _leaf(leaves, "rotate", common, _connections_rotate, "replace the credential")
    rotate.add_argument("slug", metavar="SLUG")
    rotate.add_argument("--credential-file", metavar="F", help=cred_help)
    rotate.add_argument(
        "--auth-type",
        choices=[t for t in auth_types if t != AuthType.NONE.value],
        help="switch the auth type along with the credential",
    )
    rotate.add_argument("--header-name", metavar="H")
    _add_tls_options(rotate, ca=False)
    register_connection_oauth(leaves, common, _leaf, _read_credential, cred_help)


def _add_tls_options(parser: argparse.ArgumentParser, *, ca: bool) -> None:
    if ca:
        parser.add_argument(
            "--ca-file",
            metavar="PEM",
            help="trust this CA (PEM) for the https upstream, besides the system's",
        )
    parser.add_argument(
        "--client-cert-file",
        metavar="PEM",
        help="client certificate chain (PEM, leaf first) for an upstream requiring mTLS",
    )
    parser.add_argument(
        "--client-key-file",
        metavar="PEM",
        help="its private key (PEM, unencrypted; sealed like the credential, never shown)",
    )


def _register_audit(sub: Any, common: argparse.ArgumentParser) -> None:
    audit = _leaf(
        sub,
        "audit",
        common,
        _audit,
        "show a connection's audit trail (audit SLUG) or check the hash chains "
        "(audit verify [SLUG])",
    )
    audit.add_argument("target", metavar="SLUG|verify", nargs="?",
                       help="a connection; none: the whole trail, every connection and "
                            "the global chain of API-key events")  # fmt: skip
    audit.add_argument("extra", nargs="?", metavar="SLUG", help="with verify: one connection")
    audit.add_argument("--limit", type=int, default=50, help="events to show (1-200)")
    audit.add_argument("--cursor", help="nextCursor of the previous page")
    audit.add_argument("--since", metavar="RFC3339", help="only events at or after this time")
    audit.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    audit_trail.add_filters(audit)


async def _crypto_rewrap(args: argparse.Namespace, svc: Service) -> int:
    from .._rewrap import rewrap_all

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
        leaves,
        "rewrap",
        common,
        _crypto_rewrap,
        "re-seal every stored credential under the primary master key (or the newest "
        "Transit key version), online; run after adding a new master key first",
    )


REGISTRARS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    _register_api_keys,
    _register_connections,
    _register_audit,
    _register_crypto,
]
