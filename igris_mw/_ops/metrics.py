"""Prometheus metrics for the gateway, on the official ``prometheus_client``.

Why ``prometheus_client`` and not a lighter hand-written exposition: it is
the reference implementation of the text format, it has a multiprocess mode
for ``serve --workers``, and on the hot path it costs about 1.5 us per
request here (two counter/histogram children looked up in a local dict and
updated under their own lock; ``benchmarks/metrics_overhead.py`` measures
the whole gateway with metrics on and off side by side), well inside the
5 % budget. A lighter counter would save a microsecond and lose the
multiprocess aggregation.

Metrics (every name is in ``docs/operations.md``)::

    igris_gateway_requests_total{connection,outcome}      counter
    igris_gateway_request_duration_seconds{connection}    histogram (0.1 ms .. 60 s)
    igris_upstream_response_seconds{connection}           histogram, to the response headers
    igris_gateway_open_streams                            gauge, event streams open now
    igris_audit_queue_depth                               gauge, events waiting for the sink
    igris_audit_events_written_total                      counter
    igris_audit_events_spilled_total                      counter
    igris_rate_limited_total{connection}                  counter
    igris_credential_refresh_total{connection,result}     counter

Label cardinality is bounded: ``connection`` is a slug an admin created
(the gateway passes ``UNKNOWN_CONNECTION`` for a request to a slug that is
not a connection, so a flood of random slugs adds no series), ``outcome``
and ``result`` come from fixed sets in the code, and past ``max_series``
label pairs every new pair is counted under ``(UNKNOWN_CONNECTION, "other")``.
A deleted connection's series stay until the process restarts.

The API other modules call (all cheap, none awaits, none raises)::

    m = Metrics()                         # one per gateway; IgrisGateway(metrics=True)
    m.request(slug, outcome, seconds, upstream_seconds)   # the gateway, per request
    m.stream_opened(); m.stream_closed()  # the gateway, around an event stream
    m.rate_limited(slug)                  # a 429 that is *not* a gateway request
                                          # (outcome "rate_limited" is counted by request())
    m.credential_refresh(slug, "ok")      # OAuth renewal: "ok", "failed",
                                          # "reauthorization_required"
    m.add_sampler(fn)                     # fn() runs before every scrape (and every second
                                          # in multiprocess mode): set gauges from state
    m.watch_audit(writer)                 # queue depth, written, spilled from the writer
    body, content_type = m.exposition()
    m.app                                 # ASGI app answering GET with the exposition

Several processes (``serve --workers N``): set ``PROMETHEUS_MULTIPROC_DIR``
to an empty directory before the processes start; every value is then kept
in per-process memory-mapped files and a scrape of any process returns the
sum over all of them (``prometheus_client`` multiprocess mode; gauges are
``livesum``, so a dead worker's open streams vanish). No ``pid`` label is
exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .._asgi import Receive, Scope, Send

__all__ = [
    "BUCKETS",
    "MULTIPROCESS_ENV",
    "UNKNOWN_CONNECTION",
    "Metrics",
    "serve_in_thread",
]

log = logging.getLogger("igris_mw.metrics")

UNKNOWN_CONNECTION: Final = "_unknown"  # never a slug: slugs start with a letter or digit
MULTIPROCESS_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# 0.1 ms (a refusal from the cache) to 60 s (the default upstream timeout).
BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# The text format every Prometheus version reads (prometheus_client >= 0.22 says
# 1.0.0, which differs only for metric names outside the legacy character set).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
REFRESH_RESULTS: Final = frozenset({"ok", "failed", "reauthorization_required"})


class _AuditSource(Protocol):
    """What ``watch_audit`` reads from the audit writer."""

    @property
    def pending(self) -> int: ...

    @property
    def stats(self) -> Any: ...  # .written, .spilled: monotonic event counts


def multiprocess_dir(environ: Any = None) -> str | None:
    """The multiprocess directory when ``PROMETHEUS_MULTIPROC_DIR`` names one, else ``None``."""
    env = os.environ if environ is None else environ
    path = env.get(MULTIPROCESS_ENV) or env.get(MULTIPROCESS_ENV.lower())
    return path or None


class Metrics:
    """The gateway's Prometheus metrics, in a registry of their own.

    Args:
        max_series: most ``(connection, outcome)`` pairs counted apart; the
            rest are counted under ``(UNKNOWN_CONNECTION, "other")``.
    """

    def __init__(self, *, max_series: int = 10_000) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir()
        r = self.registry
        self._requests = Counter(
            "igris_gateway_requests",
            "Gateway requests by connection and audit outcome.",
            ("connection", "outcome"),
            registry=r,
        )
        self._duration = Histogram(
            "igris_gateway_request_duration_seconds",
            "Time from a gateway request's arrival to the end of its response "
            "(streams included).",
            ("connection",),
            buckets=BUCKETS,
            registry=r,
        )
        self._upstream = Histogram(
            "igris_upstream_response_seconds",
            "Time from sending a request upstream to its response headers.",
            ("connection",),
            buckets=BUCKETS,
            registry=r,
        )
        self._streams = Gauge(
            "igris_gateway_open_streams",
            "Event streams (text/event-stream responses) open now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._queue = Gauge(
            "igris_audit_queue_depth",
            "Audit events waiting for the audit sink.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._written = Counter(
            "igris_audit_events_written", "Audit events the sink has taken.", registry=r
        )
        self._spilled = Counter(
            "igris_audit_events_spilled",
            "Audit events written to the local spill file because the sink could not take them.",
            registry=r,
        )
        self._rate_limited = Counter(
            "igris_rate_limited",
            "Requests refused with 429 rate_limited.",
            ("connection",),
            registry=r,
        )
        self._refresh = Counter(
            "igris_credential_refresh",
            "Upstream credential renewals (OAuth) by result.",
            ("connection", "result"),
            registry=r,
        )
        self._max_series = max_series
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()
        self._samplers: list[Callable[[], None]] = []
        self._sampler_task: asyncio.Task[None] | None = None
        self.app = MetricsApp(self)

    # -- the hot path --------------------------------------------------------
    def request(
        self, connection: str, outcome: str, seconds: float, upstream_seconds: float | None
    ) -> None:
        """Count one gateway request. ``connection`` must be an existing
        connection's slug or ``UNKNOWN_CONNECTION``."""
        children = self._children.get((connection, outcome))
        if children is None:
            children = self._new_children(connection, outcome)
        children[0].inc()
        children[1].observe(seconds)
        if upstream_seconds is not None:
            children[2].observe(upstream_seconds)
        if outcome == "rate_limited":
            self._rate_limited.labels(connection).inc()

    def _new_children(self, connection: str, outcome: str) -> tuple[Any, Any, Any]:
        with self._lock:
            if len(self._children) >= self._max_series:
                connection, outcome = UNKNOWN_CONNECTION, "other"
                found = self._children.get((connection, outcome))
                if found is not None:
                    return found
            children = (
                self._requests.labels(connection, outcome),
                self._duration.labels(connection),
                self._upstream.labels(connection),
            )
            self._children[(connection, outcome)] = children
            return children

    def stream_opened(self) -> None:
        self._streams.inc()

    def stream_closed(self) -> None:
        self._streams.dec()

    def rate_limited(self, connection: str | None = None) -> None:
        """Count a 429 that the gateway does not audit as a request with outcome
        ``rate_limited`` (those ``request()`` counts already)."""
        self._rate_limited.labels(self._bounded(connection)).inc()

    def credential_refresh(self, connection: str, result: str) -> None:
        """Count one credential renewal; ``result`` in ``REFRESH_RESULTS``."""
        if result not in REFRESH_RESULTS:
            result = "failed"
        self._refresh.labels(self._bounded(connection), result).inc()

    def _bounded(self, connection: str | None) -> str:
        if not connection:
            return UNKNOWN_CONNECTION
        if len(self._children) >= self._max_series:
            return UNKNOWN_CONNECTION
        return connection

    # -- sampled state -------------------------------------------------------
    def add_sampler(self, sampler: Callable[[], None]) -> None:
        """Run ``sampler()`` before every exposition (and every second in
        multiprocess mode, where another process may answer the scrape)."""
        self._samplers.append(sampler)

    def watch_audit(self, writer: _AuditSource) -> None:
        """Report the audit writer's queue depth and its written/spilled counts."""
        seen = {"written": 0, "spilled": 0}

        def sample() -> None:
            self._queue.set(writer.pending)
            stats = writer.stats
            for name, counter in (("written", self._written), ("spilled", self._spilled)):
                now = int(getattr(stats, name, 0))
                if now > seen[name]:
                    counter.inc(now - seen[name])
                seen[name] = now

        self.add_sampler(sample)

    def sample(self) -> None:
        for sampler in self._samplers:
            try:
                sampler()
            except Exception:  # a broken sampler must not break the scrape
                log.exception("a metrics sampler failed")

    async def start(self) -> None:
        """In multiprocess mode, sample every second (lifespan startup)."""
        if self.multiprocess and self._sampler_task is None and self._samplers:
            self._sampler_task = asyncio.get_running_loop().create_task(
                self._sample_forever(), name="igris-metrics-sampler"
            )

    async def aclose(self) -> None:
        task, self._sampler_task = self._sampler_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample_forever(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(1.0)

    # -- exposition ----------------------------------------------------------
    def collector(self) -> Collector:
        """What a scrape reads: this registry, or every process's files in
        multiprocess mode (samplers run first either way)."""
        return _Exposed(self)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.collector()), CONTENT_TYPE


class _Exposed:
    """A collector for ``generate_latest``: samplers, then the right registry."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        self._metrics.sample()
        if self._metrics.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                registry, path=self._metrics.multiprocess
            )
            return _collect(registry)
        return _collect(self._metrics.registry)


def _collect(registry: CollectorRegistry) -> Iterator[Metric]:
    yield from registry.collect()


class MetricsApp:
    """ASGI app: ``GET`` (or ``HEAD``) at any path answers the exposition.

    Mount it where the scraper looks, e.g. Starlette
    ``Mount("/metrics", app=gateway.metrics_app)``. It needs no admin key:
    mount it on a listener the public cannot reach, or behind your own auth.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed\n", ((b"allow", b"GET, HEAD"),))
            return
        body, content_type = self._metrics.exposition()
        if scope["method"] == "HEAD":
            body = b""
        await _plain(send, 200, body, ((b"content-type", content_type.encode()),))


async def _plain(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    all_headers = [(b"cache-control", b"no-store"), *headers]
    if not any(name == b"content-type" for name, _ in all_headers):
        all_headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


def serve_in_thread(metrics: Metrics, host: str, port: int) -> Callable[[], None]:
    """Serve the exposition at ``http://host:port/metrics`` from a daemon thread
    (``serve --metrics-port``): a busy or blocked event loop does not stop
    scrapes. Returns a function that stops the listener.

    Raises:
        OSError: the address cannot be bound.
    """
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=metrics.collector())

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
