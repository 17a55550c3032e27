"""What ``igris-mw`` prints: tables and key/value blocks for people, JSON for scripts.

Kept apart from the commands so the commands read as what they do, not how they
format. Output goes to ``sys.stdout`` looked up at each call, so it follows
any redirection (``contextlib.redirect_stdout``, pytest's capture).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..models import ApiKey, AuditEvent, Connection, format_time

__all__ = [
    "EVENT_HEADERS",
    "cell",
    "event_row",
    "out",
    "print_events",
    "print_json",
    "show_api_key",
    "show_connection",
    "table",
]


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def print_json(value: Any) -> None:
    out(json.dumps(value, indent=2))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[cell(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def show_fields(pairs: Mapping[str, Any]) -> None:
    width = max(len(k) for k in pairs)
    for key, value in pairs.items():
        out(f"{key.ljust(width)}  {cell(value)}")


def show_connection(conn: Connection, as_json: bool) -> None:
    if as_json:
        print_json(conn.to_json())
    else:
        body = conn.to_json()
        for field in ("caCertificate", "clientCertificate"):
            # A PEM block is many lines: show how many certificates, --json shows the text.
            if body.get(field):
                count = body[field].count("-----BEGIN CERTIFICATE-----")
                body[field] = f"PEM, {count} certificate{'s' if count != 1 else ''}"
        show_fields(body)


def show_api_key(key: ApiKey, as_json: bool) -> None:
    if as_json:
        print_json(key.to_json())
    else:
        body = key.to_json()
        body["scopes"] = ",".join(body["scopes"])
        body["connections"] = ",".join(body["connections"]) if body["connections"] else None
        show_fields(body)


def event_summary(e: AuditEvent) -> str:
    if e.kind == "management":
        return e.action or "-"
    if e.rpc_method:
        return f"{e.rpc_method} {e.tool}" if e.tool else e.rpc_method
    return f"{e.method or ''} {e.path or ''}".strip() or "-"


def event_row(e: AuditEvent) -> list[object]:
    return [
        format_time(e.timestamp),
        e.seq,
        e.kind,
        event_summary(e),
        e.outcome,
        e.status,
        e.api_key_id,
        e.user,
        e.credential_version,
    ]


EVENT_HEADERS = ["TIME", "SEQ", "KIND", "WHAT", "OUTCOME", "STATUS", "KEY", "USER", "CRED"]


def print_events(events: Iterable[AuditEvent], as_json: bool, *, header: bool) -> None:
    if as_json:
        for e in events:
            out(json.dumps(e.to_json()))
    else:
        rows = [event_row(e) for e in events]
        if header or rows:
            table(EVENT_HEADERS if header else [""] * len(EVENT_HEADERS), rows)
    sys.stdout.flush()
