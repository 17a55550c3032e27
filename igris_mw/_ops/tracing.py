"""OpenTelemetry tracing of gateway requests (the ``igris-mw[otel]`` extra).

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set
and the extra is installed (spans go out by OTLP over HTTP/protobuf), or
when a ``tracer_provider`` is given to ``IgrisGateway``. Off, this module
is never imported and a request pays one ``is None`` check.

Per gateway request:

* a SERVER span ``igris <rpc method>`` (or ``igris <HTTP method>``), child
  of the client's trace context: the ``traceparent``/``tracestate``
  request headers, else (MCP 2026-07-28) ``params._meta.traceparent`` /
  ``tracestate`` in the JSON-RPC body the gateway already peeks for the
  audit; the header wins when both are sent;
* for a forwarded request, a CLIENT span ``igris upstream`` under it,
  covering the upstream exchange to the end of the response, whose context
  replaces the client's ``traceparent``/``tracestate`` on the upstream
  request (the body, ``_meta`` included, passes untouched: the upstream
  sees one trace either way).

Attributes: ``igris.connection``, ``igris.api_key_id``, ``igris.request_id``,
``mcp.method.name``, ``gen_ai.tool.name``, ``igris.outcome``,
``http.request.method``, ``http.response.status_code``, and on the client
span ``server.address`` (the upstream's host[:port]). Never a credential,
a key, a header value or a URL (an upstream URL may carry a secret in its
query).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._asgi import Scope
from . import endpoint_configured

__all__ = ["Tracing", "endpoint_configured"]

log = logging.getLogger("igris_mw.tracing")

_TRACE_HEADERS = (b"traceparent", b"tracestate")


class Tracing:
    """Spans for gateway requests from ``tracer_provider``.

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider``.
        owned: shut the provider down (flushing its spans) in ``shutdown``.
    """

    def __init__(self, tracer_provider: Any, *, owned: bool = False) -> None:
        from .. import __version__

        self._provider = tracer_provider
        self._owned = owned
        self._tracer = tracer_provider.get_tracer("igris_mw", __version__)
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Tracing | None:
        """A ``Tracing`` exporting by OTLP/HTTP, or ``None`` when no endpoint
        is configured or the ``otel`` extra is missing (logged once)."""
        if not endpoint_configured(environ):
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed "
                "(pip install 'igris-mw[otel]'); tracing is off"
            )
            return None
        defaults = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "igris-mw"}
        provider = TracerProvider(resource=Resource.create(defaults))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider, owned=True)

    def shutdown(self) -> None:
        if self._owned:
            self._provider.shutdown()

    # -- per request ---------------------------------------------------------
    def _parent(self, scope: Scope, body: bytes | None) -> Context:
        carrier: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = bytes(name).lower()
            if key in _TRACE_HEADERS and key.decode() not in carrier:
                carrier[key.decode()] = bytes(value).decode("latin-1")
        if "traceparent" not in carrier and body:
            carrier = _meta_trace_context(body)
        return self._propagator.extract(carrier)

    def _server_span(
        self, scope: Scope, fields: Mapping[str, Any], started: float, body: bytes | None
    ) -> Any:
        rpc_method = fields.get("rpc_method")
        span = self._tracer.start_span(
            f"igris {rpc_method or scope['method']}",
            context=self._parent(scope, body),
            kind=SpanKind.SERVER,
            start_time=_ns_since(started),
        )
        _set_request_attributes(span, scope, fields)
        return span

    def refused(
        self, scope: Scope, fields: Mapping[str, Any], started: float, status: int, outcome: str
    ) -> None:
        """One SERVER span for a request the gateway answered itself."""
        span = self._server_span(scope, fields, started, None)
        _finish(span, status, outcome)

    async def forward(
        self,
        forward: Callable[..., Awaitable[Any]],
        scope: Scope,
        *args: Any,
        fields: Mapping[str, Any],
        started: float,
        body: bytes | None,
        **kwargs: Any,
    ) -> Any:
        """Run ``forward(scope, *args, **kwargs)`` inside a SERVER and a CLIENT
        span, with the CLIENT span's context in the upstream request headers."""
        server = self._server_span(scope, fields, started, body)
        parent = trace.set_span_in_context(server)
        target = args[2] if len(args) > 2 else None
        client = self._tracer.start_span(
            "igris upstream",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": scope["method"],
                "server.address": getattr(target, "label", "") or "",
            },
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, trace.set_span_in_context(client))
        headers = [h for h in scope["headers"] if bytes(h[0]).lower() not in _TRACE_HEADERS]
        headers.extend((k.encode(), v.encode()) for k, v in carrier.items())
        result = None
        try:
            result = await forward({**scope, "headers": headers}, *args, **kwargs)
            return result
        finally:
            status = getattr(result, "status", 0) or 0
            outcome = getattr(result, "outcome", None) or "error"
            _finish(client, status, outcome)
            _finish(server, status, outcome)


def _ns_since(started: float) -> int:
    """Wall-clock nanoseconds of the ``perf_counter`` instant ``started``."""
    return time.time_ns() - int((time.perf_counter() - started) * 1e9)


def _set_request_attributes(span: Any, scope: Scope, fields: Mapping[str, Any]) -> None:
    span.set_attribute("http.request.method", scope["method"])
    for attribute, key in (
        ("igris.connection", "connection"),
        ("igris.api_key_id", "api_key_id"),
        ("igris.request_id", "id"),
        ("mcp.method.name", "rpc_method"),
        ("gen_ai.tool.name", "tool"),
    ):
        value = fields.get(key)
        if isinstance(value, str):
            span.set_attribute(attribute, value[:256])


def _finish(span: Any, status: int, outcome: str) -> None:
    span.set_attribute("igris.outcome", outcome)
    if status:
        span.set_attribute("http.response.status_code", status)
    if status >= 500 or not status:
        span.set_status(Status(StatusCode.ERROR, outcome))
    span.end()


def _meta_trace_context(body: bytes) -> dict[str, str]:
    """``traceparent``/``tracestate`` from ``params._meta`` of one JSON-RPC message."""
    if b'"traceparent"' not in body:
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    params = doc.get("params") if isinstance(doc, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {
        key: meta[key][:512]
        for key in ("traceparent", "tracestate")
        if isinstance(meta.get(key), str)
    }
