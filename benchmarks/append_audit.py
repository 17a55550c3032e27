"""CPU per audit event of ``SQLiteStore.append_audit_events`` (keyed, a WAL file), old vs new.

    python benchmarks/append_audit.py                                  # this checkout
    python benchmarks/append_audit.py --old-python /work/main/.venv/bin/python

Each block is a fresh process (this script run by an interpreter whose
``igris_mw`` is the checkout to measure) that opens a store in a temporary
WAL file under an audit key, warms up, then appends batches of typical
gateway events to a few connections' chains, and reports the process's CPU
time (``time.process_time``: the event loop and the store's worker thread)
per event. Blocks alternate between the two interpreters (``--blocks`` each,
order flipped every round); printed: median and min per batch size.

With ``--callgrind`` each block runs under ``valgrind --tool=callgrind``
twice, with ``--events`` and 3x as many, and reports the instructions per
event of the difference (start-up, warm-up and close cancel out; user-space
instructions only, so no write to the WAL file is counted): steady on a
loaded machine, where CPU time is not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

_T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _child(batch: int, events: int, chains: int, build: int) -> float:
    from igris_mw._audit.chain import derive_audit_key
    from igris_mw._audit.events import new_event_id
    from igris_mw._sqlite import SQLiteStore
    from igris_mw.models import AuditEvent

    def event(n: int) -> AuditEvent:
        return AuditEvent(
            id=new_event_id(), timestamp=_T0 + timedelta(milliseconds=n),
            connection=f"bench-{n % chains}", method="POST", path="/v1/mcp/bench",
            rpc_method="tools/call", tool="echo", status=200, latency_ms=0.412,
            bytes_in=90, bytes_out=60, credential_version=1, api_key_id="key_abc",
            user="alice@example.com",
        )  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        await store.open()
        await store.use_audit_key(derive_audit_key("k1", b"x" * 32))
        n = 0
        for _ in range(max(1, 1000 // batch)):  # warm-up: chains and heads exist
            await store.append_audit_events([event(n + i) for i in range(batch)])
            n += batch
        # Built up front (as many for both runs under callgrind, so only appends differ).
        built = [event(n + i) for i in range(max(build, events // batch * batch))]
        batches = [built[b * batch : (b + 1) * batch] for b in range(events // batch)]
        start = time.process_time()
        for pending in batches:
            await store.append_audit_events(pending)
        spent = time.process_time() - start
        await store.close()
    return spent / (len(batches) * batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-python", help="an interpreter whose igris_mw is the old code")
    parser.add_argument("--batches", default="15,100", help="batch sizes (comma-separated)")
    parser.add_argument(
        "--events", type=int, help="events per block (default 6000; 1500 under --callgrind)"
    )
    parser.add_argument("--chains", type=int, default=3, help="connections the events go to")
    parser.add_argument("--blocks", type=int, default=8, help="blocks per variant and batch size")
    parser.add_argument("--callgrind", action="store_true", help="instructions, not CPU time")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.events is None:
        args.events = 1500 if args.callgrind else 6000
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.events, args.chains, args.build))))
        return
    variants = {"new": sys.executable}
    if args.old_python:
        variants["old"] = args.old_python
    for batch in (int(b) for b in args.batches.split(",")):
        results: dict[str, list[float]] = {name: [] for name in variants}
        for block in range(args.blocks):
            order = list(variants.items())
            for name, python in order if block % 2 else reversed(order):
                results[name].append(
                    _block(python, batch, args.events, args.chains, args.callgrind)
                )
        unit = "instructions" if args.callgrind else "us of CPU"
        for name, values in results.items():
            print(f"batch {batch:>3}, {name}: median {statistics.median(values):,.2f}, "
                  f"min {min(values):,.2f} {unit} per event ({args.blocks} blocks)")  # fmt: skip


def _block(python: str, batch: int, events: int, chains: int, callgrind: bool) -> float:
    def run(n: int) -> subprocess.CompletedProcess[str]:
        cmd = [python, __file__, "--child", str(batch), "--events", str(n), "--chains", str(chains),
               "--build", str(3 * events)]  # fmt: skip
        if callgrind:
            cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True)

    if not callgrind:
        return float(json.loads(run(events).stdout))
    counts = []
    for n in (events, 3 * events):
        match = re.search(r"Collected : (\d+)", run(n).stderr)
        assert match is not None
        counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) / (2 * events // batch * batch)


if __name__ == "__main__":
    main()
