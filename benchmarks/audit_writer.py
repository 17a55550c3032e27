"""The audit writer's costs, each next to its baseline in the same run.

1. Building an event on the request path: without the safe-text step (as
   before it) and with it, for ordinary ASCII fields and for hostile ones
   (NUL, ESC, lone surrogates, a 3 KiB path, metadata with controls).
2. A sink outage at a steady rate of events: a short one (the baseline) and
   one hour at 1,000 events/s (3.6 million events), each in a fresh process,
   on a simulated clock: each simulated second's events are emitted at once,
   then the writer is given the rest of that second (as it would have) only
   if it needs it. Printed: peak RSS of the process, the spill file's size
   at the end of the outage, the events in memory at that moment, the
   seconds to drain once the sink is back, and that every event reached the
   sink exactly once, in order.

    .venv/bin/python benchmarks/audit_writer.py                # ~3 min, ~1.5 GB of spill
    .venv/bin/python benchmarks/audit_writer.py --seconds 600  # a shorter long outage
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from igris_mw._audit.events import new_event_id, safe_fields
from igris_mw._audit.writer import AuditWriter
from igris_mw.models import AuditEvent

_T0 = datetime(2026, 1, 1, tzinfo=UTC)

ORDINARY: dict[str, Any] = {
    "connection": "github-prod",
    "method": "POST",
    "path": "/v1/mcp/github-prod",
    "api_key_id": "key_01hzyx8m3k2v",
    "credential_version": 3,
    "user": "alice@example.com",
    "metadata": {"session": "s-1234", "agent": "claude-code"},
    "rpc_method": "tools/call",
    "tool": "search_repositories",
}
HOSTILE: dict[str, Any] = {
    "connection": "github-prod",
    "method": "POST",
    "path": "/v1/mcp/github-prod/\x00" + "\x1b[2J" * 800,
    "api_key_id": "key_01hzyx8m3k2v",
    "credential_version": 3,
    "user": "\x1b]0;owned\x07alice\ud800",
    "metadata": {"k\x00": "\x1b[31m" * 100, "n": float("nan")},
    "rpc_method": "tools/call\x00",
    "tool": "search\ud800",
}


def _build(fields: dict[str, Any], *, safe: bool) -> AuditEvent:
    copy = dict(fields)
    if safe:
        safe_fields(copy)
    return AuditEvent(
        id=new_event_id(),
        timestamp=_T0,
        kind="gateway",
        latency_ms=1.234,
        status=200,
        outcome="ok",
        bytes_in=120,
        bytes_out=800,
        **copy,
    )


def event_cost() -> list[tuple[str, float]]:
    rows = []
    for name, fields in (("ordinary ASCII", ORDINARY), ("hostile", HOSTILE)):
        for safe in (False, True):
            if name == "hostile" and not safe:
                continue
            n = 20_000 if name == "ordinary ASCII" else 1_000
            best = min(
                timeit.repeat(lambda f=fields, s=safe: _build(f, safe=s), number=n, repeat=5)
            )
            label = f"{name}, {'with' if safe else 'without'} safe_fields"
            rows.append((label, best / n * 1e6))
    return rows


class _Sink:
    def __init__(self) -> None:
        self.down = True
        self.count = 0
        self.last: str | None = None
        self.in_order = True

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        if self.down:
            raise ConnectionRefusedError("down")
        for e in events:
            if self.last is not None and e.id <= self.last:
                self.in_order = False
            self.last = e.id
        self.count += len(events)


def _outage_event(n: int) -> AuditEvent:
    # Ids sort in emission order, so the sink can check the order it sees.
    return AuditEvent(
        id=f"evt_{n:028x}",
        timestamp=_T0,
        kind="gateway",
        latency_ms=1.234,
        status=200,
        outcome="ok",
        bytes_in=120,
        bytes_out=800,
        **ORDINARY,
    )


async def _outage(seconds: int, rate: int, spill: Path) -> dict[str, Any]:
    sink = _Sink()
    writer = AuditWriter(
        sink,
        spill_path=spill,
        max_spill_bytes=8 << 30,
        retry_delay=0.05,
        max_retry_delay=0.5,
    )
    await writer.start()
    started = time.perf_counter()
    n = 0
    for _ in range(seconds):
        for _ in range(rate):
            writer.emit(_outage_event(n))
            n += 1
        # The rest of the simulated second: at 1,000 events/s the writer has
        # all the time it needs to move the queue to disk (a spill of 50,000
        # events takes ~0.4 s), so wait for that rather than outrun it.
        await asyncio.sleep(0)
        while writer.pending_in_memory > writer.max_pending:
            await asyncio.sleep(0.001)
    emit_s = time.perf_counter() - started
    await asyncio.sleep(0.6)  # the writer's last relief of memory
    spill_size = spill.stat().st_size if spill.exists() else 0
    in_memory = writer.pending_in_memory
    sink.down = False
    drained_at = time.perf_counter()
    ok = await writer.flush(3600)
    drain_s = time.perf_counter() - drained_at
    await writer.aclose()
    return {
        "events": n,
        "emit_s": emit_s,
        "spill_mb": spill_size / 1e6,
        "in_memory": in_memory,
        "drain_s": drain_s,
        "stored": sink.count,
        "in_order": sink.in_order and ok,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _run_child(seconds: int, rate: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(seconds), "--rate", str(rate),
             "--spill", str(Path(tmp) / "spill.jsonl")],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3600, help="the long outage (simulated s)")
    parser.add_argument("--baseline", type=int, default=60, help="the short outage (simulated s)")
    parser.add_argument("--rate", type=int, default=1000, help="events per simulated second")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spill", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(asyncio.run(_outage(args.child, args.rate, Path(args.spill)))))
        return

    print("== cost of building one gateway event (best of 5 runs) ==")
    for label, us in event_cost():
        print(f"  {label:<40} {us:6.2f} us/event")
    print()
    print(f"== sink outage at {args.rate} events/s, each in a fresh process ==")
    header = (
        f"  {'outage':>9} {'events':>10} {'emit s':>7} {'peak RSS MB':>12} {'spill MB':>9} "
        f"{'in memory':>10} {'drain s':>8} {'stored':>10} {'in order':>8}"
    )
    print(header)
    for seconds in (args.baseline, args.seconds):
        r = _run_child(seconds, args.rate)
        print(
            f"  {seconds:>8}s {r['events']:>10} {r['emit_s']:>7.1f} {r['peak_rss_mb']:>12.1f} "
            f"{r['spill_mb']:>9.1f} {r['in_memory']:>10} {r['drain_s']:>8.1f} "
            f"{r['stored']:>10} {'yes' if r['in_order'] else 'NO':>8}"
        )
    print(f"\n  (python {sys.version.split()[0]}, {os.cpu_count()} cpus)")


if __name__ == "__main__":
    main()
