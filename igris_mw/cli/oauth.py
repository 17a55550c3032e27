"""CLI commands for OAuth connections and per-user credentials.

    connections authorize SLUG [--user U] [--public-url URL]
    connections users SLUG
    connections set-user-credential SLUG USER [--credential-file F]
    connections delete-user-credential SLUG USER

``authorize`` seals the consent flow in the store, so the gateway serving
``<public URL>/api/v1/oauth/callback`` completes it; it prints the URL to
open. Nothing here imports aiohttp until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import ValidationError
from .._service import Service
from ..models import AuthType
from ._common import UsageError, settings_for
from .output import out, print_json, table

__all__ = [
    "add_create_options",
    "needs_credential",
    "oauth_create_body",
    "parse_oauth_option",
    "register_connection_oauth",
]

Handler = Callable[[argparse.Namespace, Service], Awaitable[int]]
Leaf = Callable[..., argparse.ArgumentParser]


def parse_oauth_option(text: str) -> dict[str, Any]:
    """The ``--oauth`` JSON object (its fields are checked by the service)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise UsageError('--oauth must be a JSON object, e.g. \'{"clientId": "..."}\'') from None
    if not isinstance(value, dict):
        raise UsageError("--oauth must be a JSON object")
    return value


def oauth_create_body(args: argparse.Namespace) -> dict[str, Any]:
    """The create fields these options add (oauth, credentialScope)."""
    body: dict[str, Any] = {}
    if getattr(args, "oauth", None) is not None:
        body["oauth"] = parse_oauth_option(args.oauth)
    if getattr(args, "credential_scope", None) is not None:
        body["credentialScope"] = args.credential_scope
    return body


def needs_credential(args: argparse.Namespace) -> bool:
    """Whether ``connections create`` reads a connection-wide credential."""
    if args.credential_file is not None:
        return True
    if args.auth_type in (AuthType.NONE.value, AuthType.OAUTH2.value):
        return False  # none has none; an oauth2 public client has none
    return getattr(args, "credential_scope", None) != "per_user"


async def _authorize(args: argparse.Namespace, svc: Service) -> int:
    from .._oauth.gateway import OAuthConnection, OAuthRuntime

    conn = await svc.get_connection(args.slug)
    if conn.auth_type is not AuthType.OAUTH2:
        raise ValidationError("authType", "only an oauth2 connection is authorized by consent")
    if (conn.credential_scope == "per_user") != (args.user is not None):
        raise UsageError(
            "--user is required for a per_user connection"
            if args.user is None
            else "--user is only for a per_user connection"
        )
    public = args.public_url or settings_for(args, os.environ).public_url
    if not public:
        raise UsageError(
            "give --public-url (or set IGRIS_PUBLIC_URL): the gateway's external URL, "
            "whose /api/v1/oauth/callback the provider redirects to"
        )
    target = OAuthConnection.of(conn, await svc.open_credential(conn))
    assert target is not None
    runtime = OAuthRuntime(
        svc.store, svc.crypto, open_credential=svc.open_credential, egress=svc.egress
    )
    try:
        url = await runtime.begin(
            conn.slug,
            target,
            redirect_uri=f"{public.rstrip('/')}/api/v1/oauth/callback",
            user=args.user or "",
        )
    finally:
        await runtime.aclose()
    if args.json:
        print_json({"authorizeUrl": url})
    else:
        out(url)
    return 0


async def _users(args: argparse.Namespace, svc: Service) -> int:
    from .._user_credentials import UserCredentials

    users = await UserCredentials(svc).list(args.slug)
    if args.json:
        print_json({"data": users})
        return 0
    table(
        ["USER", "KIND", "STATUS", "UPDATED"],
        ([u["user"], u["kind"], u.get("oauthStatus", ""), u["updatedAt"]] for u in users),
    )
    return 0


def _set_user(read_credential: Callable[[str | None], str]) -> Handler:
    async def run(args: argparse.Namespace, svc: Service) -> int:
        from .._user_credentials import UserCredentials

        await svc.get_connection(args.slug)  # an unknown slug fails before the prompt
        shown = await UserCredentials(svc).put(
            args.slug, args.user, {"credential": read_credential(args.credential_file)}
        )
        if args.json:
            print_json(shown)
        else:
            out(f"set the credential of {shown['user']} on {args.slug}")
        return 0

    return run


async def _delete_user(args: argparse.Namespace, svc: Service) -> int:
    from .._user_credentials import UserCredentials

    await UserCredentials(svc).delete(args.slug, args.user)
    if args.json:
        print_json({"deleted": True})
    else:
        out(f"deleted the credential of {args.user} on {args.slug}")
    return 0


def register_connection_oauth(
    leaves: Any,
    common: argparse.ArgumentParser,
    leaf: Leaf,
    read_credential: Callable[[str | None], str],
    cred_help: str,
) -> None:
    """Add the OAuth and per-user commands under ``connections``."""
    authorize = leaf(
        leaves, "authorize", common, _authorize,
        "print the URL where a person consents for an oauth2 connection",
    )  # fmt: skip
    authorize.add_argument("slug", metavar="SLUG")
    authorize.add_argument("--user", metavar="U", help="the end user (per_user connections)")
    authorize.add_argument(
        "--public-url", metavar="URL",
        help="the gateway's external URL (default: $IGRIS_PUBLIC_URL)",
    )  # fmt: skip
    users = leaf(leaves, "users", common, _users, "list a per_user connection's users")
    users.add_argument("slug", metavar="SLUG")
    put = leaf(
        leaves, "set-user-credential", common, _set_user(read_credential),
        "set one end user's credential on a per_user connection",
    )  # fmt: skip
    put.add_argument("slug", metavar="SLUG")
    put.add_argument("user", metavar="USER")
    put.add_argument("--credential-file", metavar="F", help=cred_help)
    delete = leaf(
        leaves, "delete-user-credential", common, _delete_user,
        "forget one end user's credential or grant",
    )  # fmt: skip
    delete.add_argument("slug", metavar="SLUG")
    delete.add_argument("user", metavar="USER")


def add_create_options(parser: argparse.ArgumentParser) -> None:
    """``--oauth`` and ``--credential-scope`` on ``connections create``."""
    parser.add_argument(
        "--oauth", metavar="JSON",
        help='the oauth object of an OAuth auth type, e.g. \'{"clientId": "c", "scopes": []}\'',
    )  # fmt: skip
    parser.add_argument(
        "--credential-scope", choices=["shared", "per_user"],
        help="per_user: one credential per end user (set-user-credential)",
    )  # fmt: skip
