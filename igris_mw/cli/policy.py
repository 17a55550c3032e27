"""The access policy options of the CLI: ``--rate-limit``, ``--tools-allow``,
``--tools-deny``, ``--no-tools``, ``--max-concurrent``, and ``api-keys update``.

They build the same JSON the management API takes, so the service validates
both the same way (a bad value is one line on stderr, nothing stored).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from typing import Any

from .._service import Service
from ._common import UsageError
from .output import print_json, show_api_key

__all__ = ["add_policy_options", "policy_changes", "register_api_keys_update"]

_RATE = re.compile(r"^(\d{1,7})(?:/(\d{1,7}))?\Z")
_NONE = ("none", "null", "off")

Handler = Callable[[argparse.Namespace, Service], Awaitable[int]]
Leaf = Callable[..., argparse.ArgumentParser]


def add_policy_options(parser: argparse.ArgumentParser, *, key: bool) -> None:
    """Add the policy options to a create or update parser (``key``: an API key's)."""
    parser.add_argument(
        "--rate-limit",
        metavar="RPM[/BURST]",
        help="requests per minute, optionally /burst (e.g. 30/5); 'none' removes the limit",
    )
    parser.add_argument(
        "--tools-allow",
        action="append",
        metavar="GLOB",
        help="only tools matching this glob may be called (repeatable)",
    )
    parser.add_argument(
        "--tools-deny",
        action="append",
        metavar="GLOB",
        help="tools matching this glob may not be called (repeatable; deny wins)",
    )
    parser.add_argument(
        "--no-tools", action="store_true", help="remove the tool policy (every tool allowed)"
    )
    if key:
        parser.add_argument(
            "--max-concurrent",
            metavar="N",
            help="at most N requests and streams open at once; 'none' removes the cap",
        )


def _rate_limit(text: str) -> dict[str, int] | None:
    if text.strip().lower() in _NONE:
        return None
    found = _RATE.match(text.strip())
    if found is None:
        raise UsageError(
            f"--rate-limit must be RPM or RPM/BURST (e.g. 30 or 30/5) or none, got {text!r}"
        )
    out = {"requestsPerMinute": int(found.group(1))}
    if found.group(2) is not None:
        out["burst"] = int(found.group(2))
    return out


def _count(text: str, option: str) -> int | None:
    if text.strip().lower() in _NONE:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{option} must be a whole number or none, got {text!r}") from None


def policy_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The policy fields the options ask for, as contract JSON (only those given)."""
    changes: dict[str, Any] = {}
    if args.rate_limit is not None:
        changes["rateLimit"] = _rate_limit(args.rate_limit)
    if args.no_tools:
        if args.tools_allow or args.tools_deny:
            raise UsageError("--no-tools cannot be combined with --tools-allow/--tools-deny")
        changes["tools"] = None
    elif args.tools_allow or args.tools_deny:
        changes["tools"] = {"allow": args.tools_allow or [], "deny": args.tools_deny or []}
    if getattr(args, "max_concurrent", None) is not None:
        changes["maxConcurrent"] = _count(args.max_concurrent, "--max-concurrent")
    return changes


async def _api_keys_update(args: argparse.Namespace, svc: Service) -> int:
    changes = policy_changes(args)
    if args.name is not None:
        changes["name"] = args.name
    if args.all_connections:
        if args.connection:
            raise UsageError("--all-connections cannot be combined with --connection")
        changes["connections"] = None
    elif args.connection:
        changes["connections"] = args.connection
    if args.expires_at is not None:
        changes["expiresAt"] = None if args.expires_at.lower() in _NONE else args.expires_at
    if not changes:
        raise UsageError(
            "nothing to change: give --name, --connection, --expires-at, --rate-limit, "
            "--tools-allow/--tools-deny/--no-tools or --max-concurrent"
        )
    record = await svc.update_api_key(args.id, changes)
    if args.json:
        print_json(record.to_json())
    else:
        show_api_key(record, False)
    return 0


def register_api_keys_update(leaves: Any, common: argparse.ArgumentParser, leaf: Leaf) -> None:
    """``igris-mw api-keys update ID [...]``: the twin of ``PATCH /api/v1/api-keys/{id}``."""
    update = leaf(
        leaves, "update", common, _api_keys_update,
        "change a key's name, connections, expiry or access policy",
    )  # fmt: skip
    update.add_argument("id", metavar="ID")
    update.add_argument("--name")
    update.add_argument(
        "--connection", action="append", metavar="SLUG",
        help="limit the key to these connections (replaces the list; repeatable)",
    )  # fmt: skip
    update.add_argument("--all-connections", action="store_true", help="lift the connection limit")
    update.add_argument(
        "--expires-at", metavar="RFC3339", help="new expiry (e.g. 2030-01-01T00:00:00Z) or none"
    )
    add_policy_options(update, key=True)
