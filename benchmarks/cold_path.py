"""Cold path client for ``run.py``: the first request for each connection vs warm ones.

For each slug (never requested before, so not in the gateway's cache), over
one keep-alive connection: one timed POST (cold: the gateway reads the
connection from the store and unwraps its data key), then ``warm`` timed
POSTs to the same slug. The extra cost of the cold path is ``cold -
median(warm)`` for that slug; the gateway key is warm throughout (it is
one key), so only the connection's store read + unwrap is in the difference.

Configuration comes as JSON in ``BENCH_COLD`` (it holds the key):
``{"host", "port", "auth", "slugs": [...], "warm": 5}``; prints JSON.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from typing import Any

_BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


def _post_ms(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    conn.request("POST", path, body=_BODY, headers=headers)
    resp = conn.getresponse()
    resp.read()
    elapsed = (time.perf_counter() - started) * 1000
    if resp.status != 200:
        raise RuntimeError(f"{path}: status {resp.status}")
    return elapsed


def measure(config: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection(config["host"], config["port"], timeout=30)
    headers = {
        "Authorization": config["auth"],
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    # Warm the key and the client connection on a slug that is not measured.
    for _ in range(20):
        _post_ms(conn, f"/v1/mcp/{config['warmup_slug']}", headers)
    extra: list[float] = []
    cold: list[float] = []
    for slug in config["slugs"]:
        path = f"/v1/mcp/{slug}"
        first = _post_ms(conn, path, headers)
        warm = statistics.median(_post_ms(conn, path, headers) for _ in range(config["warm"]))
        cold.append(first)
        extra.append(first - warm)
        time.sleep(0.01)
    conn.close()
    return {
        "cold_p50_ms": statistics.median(cold),
        "extra_p50_ms": statistics.median(extra),
        "extra_max_ms": max(extra),
        "n": len(extra),
    }


def main() -> None:
    print(json.dumps(measure(json.loads(os.environ["BENCH_COLD"]))), flush=True)


if __name__ == "__main__":
    main()
