"""Audit events as the dashboard's tables show them, and the filtered global trail.

The global trail is read per connection through ``Service.list_audit`` and
merged newest first, reading at most ``SCAN_LIMIT`` events per connection
for one page. (A store-side global listing, ``GET /api/v1/audit``, replaces
this scan when it exists.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from .._errors import NotFound, ValidationError
from .._service import Service
from ..models import AuditEvent, format_time, parse_time
from .forms import field_message, form_time

__all__ = [
    "AUDIT_COLUMNS",
    "CONNECTION_AUDIT_COLUMNS",
    "FILTERS",
    "PAGE_ROWS",
    "audit_row",
    "global_audit",
    "last_used",
]

AUDIT_COLUMNS: Final = (
    "Time", "Connection", "Event", "User", "Request", "RPC method", "Tool", "Status",
    "Outcome", "Latency (ms)", "API key", "Credential version", "Metadata",
)
# One connection's trail leaves out the column that would repeat its slug.
CONNECTION_AUDIT_COLUMNS: Final = tuple(c for c in AUDIT_COLUMNS if c != "Connection")
FILTERS: Final = ("slug", "outcome", "user", "since")
PAGE_ROWS: Final = 50
SCAN_LIMIT: Final = 1000


def audit_row(event: AuditEvent, *, with_connection: bool = True) -> dict[str, Any]:
    """An event as a table row: plain strings (escaped wherever they are rendered)."""
    if event.kind == "gateway":
        what = "gateway request"
    else:
        what = f"{event.kind}: {event.action}" if event.action else event.kind
    metadata = (
        json.dumps(dict(event.metadata), ensure_ascii=False, sort_keys=True)
        if event.metadata
        else ""
    )
    cells = [
        format_time(event.timestamp),
        event.connection or "",
        what,
        event.user or "",
        " ".join(p for p in (event.method, event.path) if p),
        event.rpc_method or "",
        event.tool or "",
        "" if event.status is None else str(event.status),
        event.outcome,
        "" if event.latency_ms is None else f"{event.latency_ms:.1f}",
        event.api_key_id or "",
        "" if event.credential_version is None else str(event.credential_version),
        metadata,
    ]
    count = getattr(event, "count", None)
    if count:
        cells[8] = f"{event.outcome} \u00d7{count}"  # refusals aggregated into one event
    if not with_connection:
        del cells[1]
    return {"id": event.id, "outcome": event.outcome, "cells": cells}


async def last_used(service: Service, slug: str) -> str | None:
    """When the connection last served a gateway request (management events skipped)."""
    cursor: str | None = None
    for _ in range(2):
        page = await service.list_audit(slug, limit=100, cursor=cursor)
        for event in page.items:
            if event.kind == "gateway":
                return format_time(event.timestamp)
        if page.next_cursor is None:
            return None
        cursor = page.next_cursor
    return None


async def global_audit(
    service: Service, query: Mapping[str, str]
) -> tuple[dict[str, str], list[dict[str, Any]], dict[str, str]]:
    """The filters as given, the matching rows newest first, and errors by filter field."""
    filters = {name: query.get(name, "").strip() for name in FILTERS}
    errors: dict[str, str] = {}
    since: datetime | None = None
    if filters["since"]:
        try:
            since = parse_time(form_time(filters["since"], "since"), field="since")
        except ValidationError as exc:
            errors["since"] = field_message(exc)
            return filters, [], errors
    slugs = [filters["slug"]] if filters["slug"] else await service.audit.audit_connections()
    found: list[AuditEvent] = []
    for slug in slugs:
        try:
            found.extend(await _scan(service, slug, since, filters))
        except NotFound:
            errors["slug"] = "No connection or audit trail has this slug."
        except ValidationError as exc:
            errors[exc.field] = field_message(exc)
    found.sort(key=lambda e: (e.timestamp, e.seq), reverse=True)
    return filters, [audit_row(e) for e in found[: PAGE_ROWS * 2]], errors


async def _scan(
    service: Service, slug: str, since: datetime | None, filters: Mapping[str, str]
) -> list[AuditEvent]:
    out: list[AuditEvent] = []
    cursor: str | None = None
    read = 0
    while read < SCAN_LIMIT and len(out) < PAGE_ROWS * 2:
        page = await service.list_audit(slug, limit=200, cursor=cursor, since=since)
        read += len(page.items)
        for event in page.items:
            if filters["outcome"] and event.outcome != filters["outcome"]:
                continue
            if filters["user"] and event.user != filters["user"]:
                continue
            out.append(event)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return out
