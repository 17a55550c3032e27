"""Operations: Prometheus metrics, readiness, OpenTelemetry tracing, JSON logs.

Each concern is a module the gateway imports only when it is switched on
(``metrics``, ``tracing``), or one small enough to cost nothing when idle
(``readiness``, ``logs``). Nothing here imports the gateway: the gateway
hands each of them what it needs (the store, the audit writer).
"""

from collections.abc import Mapping

__all__ = ["endpoint_configured"]

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def endpoint_configured(environ: Mapping[str, str]) -> bool:
    """Whether the environment names an OTLP endpoint for traces (tracing's switch,
    here so that checking it imports nothing of OpenTelemetry)."""
    return any(environ.get(name) for name in _ENDPOINT_VARIABLES)
