"""Audit events as the dashboard's tables show them, and the filtered global trail.

The global trail is ``Service.list_all_audit``: every chain (the global one
of events about no connection too), newest first, filtered by the store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from .._errors import ValidationError
from .._service import Service
from ..models import AuditEvent, format_time
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
    "Time",
    "Connection",
    "Event",
    "User",
    "Request",
    "RPC method",
    "Tool",
    "Status",
    "Outcome",
    "Latency (ms)",
    "API key",
    "Credential version",
    "Details",
)
# One connection's trail leaves out the column that would repeat its slug.
CONNECTION_AUDIT_COLUMNS: Final = tuple(c for c in AUDIT_COLUMNS if c != "Connection")
FILTERS: Final = ("slug", "kind", "action", "outcome", "user", "since")
PAGE_ROWS: Final = 50


def audit_row(event: AuditEvent, *, with_connection: bool = True) -> dict[str, Any]:
    """An event as a table row: plain strings (escaped wherever they are rendered)."""
    if event.kind == "gateway":
        what = "gateway request"
    else:
        what = f"{event.kind}: {event.action}" if event.action else event.kind
    details = []
    if event.metadata:
        details.append(json.dumps(dict(event.metadata), ensure_ascii=False, sort_keys=True))
    changes = getattr(event, "changes", None)
    if changes:
        details.append("changes " + json.dumps(dict(changes), ensure_ascii=False, sort_keys=True))
    metadata = "; ".join(details)
    cells = [
        format_time(event.timestamp),
        event.connection or "(global)",
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
) -> tuple[dict[str, str], list[dict[str, Any]], dict[str, str], str | None]:
    """The filters as given, the matching rows newest first, errors by filter field,
    and the cursor of the next (older) page."""
    filters = {name: query.get(name, "").strip() for name in FILTERS}
    errors: dict[str, str] = {}
    try:
        since = form_time(filters["since"], "since") if filters["since"] else None
        page = await service.list_all_audit(
            slug=filters["slug"] or None,
            kind=filters["kind"] or None,
            action=filters["action"] or None,
            outcome=filters["outcome"] or None,
            user=filters["user"] or None,
            since=since,
            limit=PAGE_ROWS * 2,
            cursor=query.get("cursor") or None,
        )
    except ValidationError as exc:
        field = exc.field if exc.field in FILTERS else "form"
        errors[field] = field_message(exc)
        return filters, [], errors, None
    return filters, [audit_row(e) for e in page.items], errors, page.next_cursor
