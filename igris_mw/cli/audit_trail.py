"""``igris-mw audit`` without a SLUG: the whole trail, as ``GET /api/v1/audit``.

Every connection's events and the global chain (API-key changes, dashboard
sign-in and sign-out: ``connection`` null), newest first, with the API's
filters; ``--follow`` prints new events of every chain as they land.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .._service import Service
from ..models import AuditEvent
from .output import EVENT_HEADERS, cell, event_row, out, print_json, table

__all__ = ["add_filters", "follow_all", "list_all"]

ALL_HEADERS = ["CONNECTION", *EVENT_HEADERS]


def add_filters(parser: argparse.ArgumentParser) -> None:
    """The whole trail's filters (ignored with a SLUG)."""
    parser.add_argument("--slug", dest="filter_slug", metavar="SLUG",
                        help="without SLUG: only this connection's events")  # fmt: skip
    parser.add_argument("--kind", help="without SLUG: only events of this kind")
    parser.add_argument("--action", help="without SLUG: only this management action")
    parser.add_argument("--outcome", help="without SLUG: only this outcome")
    parser.add_argument("--user", help="without SLUG: only this end user's events")


def _row(e: AuditEvent) -> list[object]:
    return ["-" if e.connection is None else e.connection, *event_row(e)]


async def list_all(args: argparse.Namespace, svc: Service) -> list[AuditEvent]:
    """Print one page of the whole trail; returns it (newest first)."""
    page = await svc.list_all_audit(
        slug=args.filter_slug,
        kind=args.kind,
        action=args.action,
        outcome=args.outcome,
        user=args.user,
        since=args.since,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.follow:
        return page.items
    if args.json:
        print_json({"data": [e.to_json() for e in page.items], "nextCursor": page.next_cursor})
    else:
        table(ALL_HEADERS, (_row(e) for e in page.items))
    return page.items


async def _tail_seqs(svc: Service) -> dict[str | None, int]:
    """Each chain's last seq now: where following starts."""
    last: dict[str | None, int] = {}
    for chain in [None, *await svc.audit.audit_connections()]:
        page = await svc.audit.list_audit_events(chain, limit=1)
        last[chain] = page.items[0].seq if page.items else 0
    return last


async def follow_all(args: argparse.Namespace, svc: Service, interval: float) -> None:
    """``audit --follow`` without SLUG: the backlog page, then every chain's new
    events that pass the same filters (``--slug``, ``--kind``, ...)."""
    # Where following starts is read before the backlog: an event that lands
    # between the two reads is then in the backlog or printed as new (once:
    # what the backlog showed is skipped), never in neither.
    last = await _tail_seqs(svc)
    backlog = list(reversed(await list_all(args, svc)))
    shown = {e.id for e in backlog}
    _print(backlog, args.json, header=not args.json)
    while True:
        await asyncio.sleep(interval)
        fresh: list[AuditEvent] = []
        chains = [args.filter_slug] if args.filter_slug is not None else None
        for chain in chains or [None, *await svc.audit.audit_connections()]:
            found = await svc.audit.audit_chain(chain, after_seq=last.get(chain, 0), limit=1000)
            if found:
                last[chain] = found[-1].seq
                fresh.extend(e for e in found if e.id not in shown and _wanted(e, args))
        shown.clear()  # only the first poll can meet the backlog's events again
        fresh.sort(key=lambda e: e.id)
        _print(fresh, args.json, header=False)


def _wanted(e: AuditEvent, args: argparse.Namespace) -> bool:
    """The whole trail's filters (as ``GET /api/v1/audit`` applies them) on one new event."""
    return (
        (args.kind is None or e.kind == args.kind)
        and (args.action is None or e.action == args.action)
        and (args.outcome is None or e.outcome == args.outcome)
        and (args.user is None or e.user == args.user)
    )


def _print(events: list[AuditEvent], as_json: bool, *, header: bool) -> None:
    if as_json:
        for e in events:
            out(json.dumps(e.to_json()))
    elif header:
        table(ALL_HEADERS, (_row(e) for e in events))
    else:
        # Column widths differ per batch; compact rows beat a re-printed header.
        for e in events:
            out("  ".join(cell(c) for c in _row(e)))
    sys.stdout.flush()
