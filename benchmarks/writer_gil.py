"""How late the event loop runs while the SQLite audit writer appends: GIL hand-offs on/off.

The writer thread seals each event in Python with the GIL held; a request on
the event loop waits until it lets go. This appends 100-event batches
continuously in the store's thread while the loop sleeps 1 ms 400 times and
records how late each wake-up is, with the store's GIL hand-off every
``_SEALS_PER_HOLD`` events and with none, in alternating blocks:

    python benchmarks/writer_gil.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

import igris_mw._sqlite.store as sqlite_store
from igris_mw._sqlite import SQLiteStore
from igris_mw.testing.storage_suite import make_event


async def main() -> None:
    store = SQLiteStore(Path(tempfile.mkdtemp()) / "gil.db")
    await store.open()
    settings = {"hand-off": sqlite_store._SEALS_PER_HOLD, "none": 1 << 30}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in settings}
    batch_no = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal batch_no
        while not stop.is_set():
            batch_no += 1
            await store.append_audit_events(
                [make_event("gil", ms=batch_no * 1000 + i) for i in range(100)]
            )

    for block in range(8):
        order = list(settings.items())
        for name, every in order if block % 2 else reversed(order):
            sqlite_store._SEALS_PER_HOLD = every  # type: ignore[misc]
            stop.clear()
            task = asyncio.ensure_future(writer())
            late: list[float] = []
            for _ in range(400):
                start = time.perf_counter()
                await asyncio.sleep(0.001)
                late.append((time.perf_counter() - start - 0.001) * 1000)
            stop.set()
            await task
            late.sort()
            results[name].append((late[len(late) // 2], late[int(len(late) * 0.99)], late[-1]))
    for name, values in results.items():
        p50, p99, top = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"{name}: loop lateness p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {top:.3f} ms"
              " (medians over blocks)")  # fmt: skip
    await store.close()


if __name__ == "__main__":
    uvloop.run(main())
