"""Moved to ``igris_mw._audit.jsonl``; this name stays for importers not yet
updated (``_gateway``, ``cli``). Import from ``igris_mw._audit`` instead.
"""

from __future__ import annotations

from ._audit.jsonl import JsonlAuditSink, audit_sink_from_url, build_audit_sink, event_from_json

__all__ = ["JsonlAuditSink", "audit_sink_from_url", "build_audit_sink", "event_from_json"]
