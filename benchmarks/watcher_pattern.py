"""The per-request task machinery of the forwarder, before and after issue 16, in isolation.

Before: a receive-watcher task and a request task per request, an
``asyncio.Event``, the watcher cancelled and awaited at the end. After: a
``call_later`` handle (the watcher starts only if the headers take longer
than 5 ms) and the request awaited in the handler's own task. The upstream
wait is one ``asyncio.sleep(0)``; the client never leaves. Interleaved
blocks in one process, CPU time (``time.process_time``), uvloop:

    python benchmarks/watcher_pattern.py
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop


async def main(n: int = 5000, blocks: int = 12) -> None:
    loop = asyncio.get_running_loop()

    async def receive() -> None:
        await loop.create_future()  # the client never leaves

    async def work() -> int:
        await asyncio.sleep(0)  # stands for the wait on the upstream
        return 1

    async def before() -> int:
        asyncio.Event()
        watcher = asyncio.ensure_future(receive())
        request = asyncio.ensure_future(work())
        try:
            async with asyncio.timeout(60):
                return await request
        finally:
            if not request.done():
                request.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def after() -> int:
        later = loop.call_later(0.005, lambda: None)
        try:
            async with asyncio.timeout(60):
                return await work()
        finally:
            later.cancel()

    variants: dict[str, Callable[[], Awaitable[int]]] = {"before": before, "after": after}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for block in range(blocks):
        order = list(variants.items())
        for name, fn in order if block % 2 else reversed(order):
            start = time.process_time()
            for _ in range(n):
                await fn()
            results[name].append((time.process_time() - start) / n * 1e6)
    for name, values in results.items():
        print(f"{name}: median {statistics.median(values):.2f} us, min {min(values):.2f} us"
              " of CPU per request")  # fmt: skip


if __name__ == "__main__":
    uvloop.run(main())
