"""The audit trail: events, the writer that stores them, sinks and the hash chain.

* ``events``: event ids and the JSON-line form of an event.
* ``writer``: ``AuditWriter``, the queue + batch writer + spill file between
  the request path and the sink.
* ``jsonl``: ``JsonlAuditSink``, the trail as a JSON-lines file, and
  ``build_audit_sink`` (choose a sink by URL).
* ``chain``: the hash chain (canonical JSON, hash, seal, verify) every sink
  and ``audit verify`` share; ``igris_mw.storage`` re-exports it.

The JSON-RPC peek the gateway records in events lives in ``igris_mw._jsonrpc``
(with the rest of the MCP parsing) and is re-exported here for old importers.
"""

from __future__ import annotations

from .._jsonrpc import PEEK_LIMIT, peek_jsonrpc
from .events import new_event_id
from .jsonl import JsonlAuditSink, audit_sink_from_url, build_audit_sink
from .writer import AuditStats, AuditWriter

__all__ = [
    "PEEK_LIMIT",
    "AuditStats",
    "AuditWriter",
    "JsonlAuditSink",
    "audit_sink_from_url",
    "build_audit_sink",
    "new_event_id",
    "peek_jsonrpc",
]
