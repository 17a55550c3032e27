"""Prometheus metrics for the gateway: plain counters on the hot path,
``prometheus_client`` for the exposition and for several processes.

Measured here (``benchmarks/metrics_overhead.py`` and a micro-benchmark of
``Metrics.request``): updating ``prometheus_client``'s objects costs about
4.6 us per request (a counter and two histograms, each behind its own lock,
with a linear bucket scan), about 4 % of the gateway's whole CPU time per
request on the 2-core reference machine, near the 5 % budget. The hot path
therefore counts into plain slotted objects (one dict lookup, ``bisect``
for the bucket, no lock: the event loop is the only writer), about 0.5 us,
and ``prometheus_client`` renders them at scrape time through a custom
collector: the reference text format, its parser and ``promtool`` agree
with it, and nothing is hand-formatted.

Several processes (``serve --workers N``): with ``PROMETHEUS_MULTIPROC_DIR``
naming an empty directory before the processes start, the hot path writes
``prometheus_client``'s memory-mapped values instead (its multiprocess
mode; the slower path, but the only one whose values another process can
read), and a scrape of any process returns the sum over all of them,
without a ``pid`` label. Gauges are ``livesum``: the supervisor calls
``prometheus_client.multiprocess.mark_process_dead(pid)`` when a worker
exits, so a dead worker's open streams stop counting.

Metrics (``docs/operations.md`` is the reference)::

    igris_gateway_requests_total{connection,outcome}      counter
    igris_gateway_request_duration_seconds{connection}    histogram (0.1 ms .. 60 s)
    igris_upstream_response_seconds{connection}           histogram, to the response headers
    igris_gateway_open_streams                            gauge, event streams open now
    igris_audit_queue_depth                               gauge, events waiting for the sink
    igris_audit_events_written_total                      counter
    igris_audit_events_spilled_total                      counter
    igris_audit_events_quarantined_total                  counter (when the writer quarantines)
    igris_rate_limited_total{connection}                  counter
    igris_credential_refresh_total{connection,result}     counter

Label cardinality is bounded: ``connection`` is a slug an admin created
(the gateway passes ``UNKNOWN_CONNECTION`` for a request to a slug that is
not a connection, so a flood of random slugs adds no series), ``outcome``
and ``result`` come from fixed sets in the code, and past ``max_series``
label pairs every new pair is counted under ``(UNKNOWN_CONNECTION, "other")``.
A deleted connection's series stay until the process restarts.

The API other modules call (all cheap, none awaits, none raises). Inside
the gateway ``self._metrics`` is ``None`` while metrics are off, so a caller
writes ``if self._metrics is not None: self._metrics.rate_limited(slug)``;
a module that does not see the gateway (the OAuth token manager, say) is
handed the bound method, e.g. ``on_refresh=metrics.credential_refresh``::

    m = gateway.metrics                   # one per gateway (IgrisGateway(metrics=True))
    m.request(slug, outcome, seconds, upstream_seconds)   # the gateway, per request
    m.stream_opened(); m.stream_closed()  # the gateway, around an event stream
    m.rate_limited(slug)                  # a 429 that is *not* a gateway request
                                          # (outcome "rate_limited" is counted by request())
    m.credential_refresh(slug, "ok")      # OAuth renewal: "ok", "failed",
                                          # "reauthorization_required"
    m.watch_audit(writer)                 # queue depth, written, spilled from the writer
    body, content_type = m.exposition()
    m.app                                 # ASGI app answering GET with the exposition

A new counter: a plain attribute updated on the hot path, rendered in
``_Collector.collect`` (and, for multiprocess mode, a ``prometheus_client``
object in ``_Shared`` updated instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .._asgi import Receive, Scope, Send

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE",
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
_LE: Final = (*(repr(float(b)) for b in BUCKETS), "+Inf")
# The text format every Prometheus version reads (prometheus_client >= 0.22 says
# 1.0.0, which differs only for metric names outside the legacy character set).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# The audit writer's monotonic counts (AuditWriter.stats) exposed as counters;
# "quarantined" only when the writer has it.
_AUDIT_COUNTS: Final = ("written", "spilled", "quarantined")
REFRESH_RESULTS: Final = frozenset({"ok", "failed", "reauthorization_required"})

_DOC: Final = {
    "requests": "Gateway requests by connection and audit outcome.",
    "duration": "Time from a gateway request's arrival to the end of its response "
    "(streams included).",
    "upstream": "Time from sending a request upstream to its response headers.",
    "streams": "Event streams (text/event-stream responses) open now.",
    "queue": "Audit events waiting for the audit sink.",
    "written": "Audit events the sink has taken.",
    "spilled": "Audit events written to the local spill file because the sink could not take them.",
    "quarantined": "Audit events set aside because they could not be stored as they were.",
    "rate_limited": "Requests refused with 429 rate_limited.",
    "refresh": "Upstream credential renewals (OAuth) by result.",
}


class _AuditSource(Protocol):
    """What ``watch_audit`` reads from the audit writer."""

    @property
    def pending(self) -> int: ...

    @property
    def stats(self) -> Any: ...  # .written, .spilled: monotonic event counts


def multiprocess_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """The multiprocess directory when ``PROMETHEUS_MULTIPROC_DIR`` names one, else ``None``."""
    env = os.environ if environ is None else environ
    path = env.get(MULTIPROCESS_ENV) or env.get(MULTIPROCESS_ENV.lower())
    return path or None


class _Histogram:
    """Bucket counts (not cumulative; the last is +Inf) and a sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(BUCKETS, value)] += 1
        self.total += value


class _Series:
    """The hot-path counters of one (connection, outcome) pair."""

    __slots__ = ("count", "duration", "upstream")

    def __init__(self, duration: _Histogram, upstream: _Histogram) -> None:
        self.count = 0
        self.duration = duration  # shared by every outcome of the connection
        self.upstream = upstream


class Metrics:
    """The gateway's metrics (see the module docstring).

    Args:
        max_series: most ``(connection, outcome)`` pairs counted apart; the
            rest are counted under ``(UNKNOWN_CONNECTION, "other")``.
        environ: where ``PROMETHEUS_MULTIPROC_DIR`` is read (default ``os.environ``).
    """

    def __init__(
        self, *, max_series: int = 10_000, environ: Mapping[str, str] | None = None
    ) -> None:
        self.multiprocess = multiprocess_dir(environ)
        self._max_series = max_series
        self._series: dict[tuple[str, str], _Series] = {}
        self._histograms: dict[str, tuple[_Histogram, _Histogram]] = {}
        self._rate_limited: dict[str, int] = {}
        self._refresh: dict[tuple[str, str], int] = {}
        self.open_streams = 0
        self._audit: _AuditSource | None = None
        self._shared = _Shared() if self.multiprocess else None
        self._sampler_task: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        if self._shared is not None:
            self.request = self._shared.request  # type: ignore[method-assign]
        self.app = MetricsApp(self)

    # -- the hot path --------------------------------------------------------
    def request(
        self, connection: str, outcome: str, seconds: float, upstream_seconds: float | None
    ) -> None:
        """Count one gateway request. ``connection`` must be an existing
        connection's slug or ``UNKNOWN_CONNECTION``."""
        series = self._series.get((connection, outcome))
        if series is None:
            series = self._new_series(connection, outcome)
        series.count += 1
        series.duration.observe(seconds)
        if upstream_seconds is not None:
            series.upstream.observe(upstream_seconds)
        if outcome == "rate_limited":
            self._rate_limited[connection] = self._rate_limited.get(connection, 0) + 1

    def _new_series(self, connection: str, outcome: str) -> _Series:
        if len(self._series) >= self._max_series:
            connection, outcome = UNKNOWN_CONNECTION, "other"
            found = self._series.get((connection, outcome))
            if found is not None:
                return found
        histograms = self._histograms.get(connection)
        if histograms is None:
            histograms = self._histograms[connection] = (_Histogram(), _Histogram())
        series = self._series[(connection, outcome)] = _Series(*histograms)
        return series

    def stream_opened(self) -> None:
        if self._shared is not None:
            self._shared.streams.inc()
        self.open_streams += 1

    def stream_closed(self) -> None:
        if self._shared is not None:
            self._shared.streams.dec()
        self.open_streams -= 1

    def rate_limited(self, connection: str | None = None) -> None:
        """Count a 429 that the gateway does not audit as a request with outcome
        ``rate_limited`` (those ``request()`` counts already)."""
        label = self._bounded(connection)
        if self._shared is not None:
            self._shared.rate_limited.labels(label).inc()
        self._rate_limited[label] = self._rate_limited.get(label, 0) + 1

    def credential_refresh(self, connection: str, result: str) -> None:
        """Count one credential renewal; ``result`` in ``REFRESH_RESULTS`` (else "failed")."""
        if result not in REFRESH_RESULTS:
            result = "failed"
        key = (self._bounded(connection), result)
        if self._shared is not None:
            self._shared.refresh.labels(*key).inc()
        self._refresh[key] = self._refresh.get(key, 0) + 1

    def _bounded(self, connection: str | None) -> str:
        if not connection or len(self._series) + len(self._refresh) >= self._max_series:
            return UNKNOWN_CONNECTION
        return connection

    # -- sampled state -------------------------------------------------------
    def watch_audit(self, writer: _AuditSource) -> None:
        """Report the audit writer's queue depth and its written/spilled counts
        (read at scrape time; every second into the shared files in multiprocess mode)."""
        self._audit = writer

    async def start(self) -> None:
        """In multiprocess mode, copy the audit state to the shared files every second."""
        if self._shared is not None and self._sampler_task is None and self._audit is not None:
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

    def sample(self) -> None:
        """Copy the audit writer's state into the shared files (multiprocess mode)."""
        if self._shared is not None and self._audit is not None:
            try:
                self._shared.sample_audit(self._audit)
            except Exception:  # a scrape must not fail for it
                log.exception("reading the audit writer's state failed")

    # -- exposition ----------------------------------------------------------
    def collector(self) -> Collector:
        """What a scrape reads: this process's counters, or every process's files
        in multiprocess mode."""
        return _Exposed(self)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.collector()), CONTENT_TYPE


class _Collector:
    """Renders the plain counters as metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        requests = CounterMetricFamily(
            "igris_gateway_requests", _DOC["requests"], labels=("connection", "outcome")
        )
        for (connection, outcome), series in list(m._series.items()):
            requests.add_metric((connection, outcome), series.count)
        yield requests
        duration = HistogramMetricFamily(
            "igris_gateway_request_duration_seconds", _DOC["duration"], labels=("connection",)
        )
        upstream = HistogramMetricFamily(
            "igris_upstream_response_seconds", _DOC["upstream"], labels=("connection",)
        )
        for connection, (dur, up) in list(m._histograms.items()):
            for family, histogram in ((duration, dur), (upstream, up)):
                buckets, total = list(histogram.buckets), histogram.total
                cumulative, running = [], 0
                for le, n in zip(_LE, buckets, strict=True):
                    running += n
                    cumulative.append((le, float(running)))
                family.add_metric((connection,), cumulative, total)
        yield duration
        yield upstream
        yield GaugeMetricFamily("igris_gateway_open_streams", _DOC["streams"], m.open_streams)
        audit = m._audit
        pending = int(audit.pending) if audit is not None else 0
        stats = audit.stats if audit is not None else None
        yield GaugeMetricFamily("igris_audit_queue_depth", _DOC["queue"], pending)
        for name in _AUDIT_COUNTS:
            if name == "quarantined" and not hasattr(stats, name):
                continue  # only from a writer that quarantines
            value = int(getattr(stats, name, 0)) if stats is not None else 0
            yield CounterMetricFamily(f"igris_audit_events_{name}", _DOC[name], value)
        limited = CounterMetricFamily(
            "igris_rate_limited", _DOC["rate_limited"], labels=("connection",)
        )
        for connection, n in list(m._rate_limited.items()):
            limited.add_metric((connection,), n)
        yield limited
        refresh = CounterMetricFamily(
            "igris_credential_refresh", _DOC["refresh"], labels=("connection", "result")
        )
        for (connection, result), n in list(m._refresh.items()):
            refresh.add_metric((connection, result), n)
        yield refresh


class _Shared:
    """``prometheus_client`` objects whose values live in the multiprocess files."""

    def __init__(self) -> None:
        # Not registered anywhere: in multiprocess mode a scrape reads the files.
        self.requests = Counter(
            "igris_gateway_requests", _DOC["requests"], ("connection", "outcome"), registry=None
        )
        self.duration = Histogram(
            "igris_gateway_request_duration_seconds",
            _DOC["duration"],
            ("connection",),
            buckets=BUCKETS,
            registry=None,
        )
        self.upstream = Histogram(
            "igris_upstream_response_seconds",
            _DOC["upstream"],
            ("connection",),
            buckets=BUCKETS,
            registry=None,
        )
        self.streams = Gauge(
            "igris_gateway_open_streams", _DOC["streams"], registry=None,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue = Gauge(
            "igris_audit_queue_depth", _DOC["queue"], registry=None, multiprocess_mode="livesum"
        )
        self.audit_counts = {
            name: Counter(f"igris_audit_events_{name}", _DOC[name], registry=None)
            for name in _AUDIT_COUNTS
        }
        self.rate_limited = Counter(
            "igris_rate_limited", _DOC["rate_limited"], ("connection",), registry=None
        )
        self.refresh = Counter(
            "igris_credential_refresh", _DOC["refresh"], ("connection", "result"), registry=None
        )
        self._seen = dict.fromkeys(_AUDIT_COUNTS, 0)
        self._series: set[tuple[str, str]] = set()

    def request(
        self, connection: str, outcome: str, seconds: float, upstream_seconds: float | None
    ) -> None:
        self.requests.labels(connection, outcome).inc()
        self.duration.labels(connection).observe(seconds)
        if upstream_seconds is not None:
            self.upstream.labels(connection).observe(upstream_seconds)
        if outcome == "rate_limited":
            self.rate_limited.labels(connection).inc()

    def sample_audit(self, writer: _AuditSource) -> None:
        self.queue.set(writer.pending)
        for name, counter in self.audit_counts.items():
            now = int(getattr(writer.stats, name, 0))
            if now > self._seen[name]:
                counter.inc(now - self._seen[name])
            self._seen[name] = now


class _Exposed:
    """A collector for ``generate_latest``: this registry, or the multiprocess files."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def restricted_registry(self, names: Iterable[str]) -> _Exposed:
        # prometheus_client's HTTP server asks for this on ?name[]=...; the
        # exposition is small, so the whole of it answers.
        return self

    def collect(self) -> Iterable[Metric]:
        if self._metrics.multiprocess:
            from prometheus_client import multiprocess

            self._metrics.sample()
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
    ``Route("/metrics", gateway.metrics_app)``. It needs no admin key:
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
