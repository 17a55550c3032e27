"""The gateway's own cost per warm request, in instructions (valgrind) or CPU time.

Wall-clock figures are noise on a shared machine; instruction counts are not.
This drives ``IgrisGateway`` in-process, with no HTTP server in front (an ASGI
call per request, the way uvicorn makes it: the body in one message, then a
``receive`` that waits until the response is done), against the fast
upstream (``upstream.py``, a separate process), SQLite store, audit on.

    # CPU time per request, this checkout:
    python benchmarks/hotpath.py --requests 3000
    # instructions per request of two checkouts, interleaved (needs valgrind):
    python benchmarks/hotpath.py --callgrind --compare /path/to/old/checkout

With ``--callgrind``, each variant runs under ``valgrind --tool=callgrind``
twice, with ``--requests`` and ``3 x --requests`` requests; the difference of
the totals over the difference of the counts is the per-request figure, with
start-up and teardown cancelled out. ``--compare DIR`` runs the same with
``PYTHONPATH=DIR`` (another checkout of igris-mw) before each run of this one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"hello"}}}'
)


async def drive(
    requests: int, upstream: str, token: str, work: Path, latencies: list[float] | None = None
) -> float:
    """Run ``requests`` warm requests; the process CPU seconds they took
    (each one's wall time appended to ``latencies``)."""
    from igris_mw import IgrisGateway
    from igris_mw._plugins import crypto_from_url, store_from_url
    from igris_mw._service import Service

    store_url = f"sqlite:///{work / 'hot.db'}"
    store = store_from_url(store_url)
    await store.open()
    from bootstrap import service_options

    env = dict(os.environ)
    service = Service(store, crypto_from_url(None, env), **service_options(env))  # type: ignore[arg-type]
    await service.create_connection(
        {"slug": "hot", "name": "hot", "upstreamUrl": upstream, "credential": token}
    )
    _, key = await service.create_api_key({"name": "hot", "scopes": ["mcp"]})
    await store.close()

    gateway = IgrisGateway(None, store=store_url, audit_spill=work / "spill.jsonl")
    await gateway.startup()
    if os.environ.get("BENCH_WATCH_AFTER"):
        # Under valgrind a request takes ~50x longer: a time threshold set for
        # real speed would be crossed by every request. Scaled here, it keeps
        # the decision a real-speed request gets.
        from igris_mw._proxy import forward

        if hasattr(forward, "_WATCH_AFTER"):
            forward._WATCH_AFTER = float(os.environ["BENCH_WATCH_AFTER"])  # type: ignore[attr-defined]
    if os.environ.get("BENCH_NO_AUDIT"):
        # The event is still built; only the writer thread (whose batch sizes,
        # and so cost per event, follow the timing) is left out.
        gateway.audit.emit = lambda event: None  # type: ignore[method-assign]
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"authorization", b"Bearer " + key.encode()),
        (b"content-length", str(len(_BODY)).encode()),
    ]
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/mcp/hot", "raw_path": b"/v1/mcp/hot", "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }  # fmt: skip

    async def one() -> int:
        done = asyncio.Event()
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": _BODY, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body", False):
                done.set()

        await gateway(dict(scope), receive, send)
        return status

    for _ in range(50):  # warm: caches, pool, first allocations
        assert await one() == 200
    await asyncio.sleep(0.1)
    cpu = time.process_time()
    clock = time.perf_counter
    for _ in range(requests):
        if latencies is None:
            await one()
        else:
            start = clock()
            await one()
            latencies.append(clock() - start)
    await gateway.aclose()  # the audit writer's last batch is counted too
    return time.process_time() - cpu


async def _switch_blocks(requests: int, upstream: str, token: str, work: Path) -> dict[str, Any]:
    intervals = [float(x) for x in os.environ["BENCH_SWITCH"].split(",")]
    samples: dict[float, list[float]] = {s: [] for s in intervals}
    for block in range(10):
        for s in intervals if block % 2 == 0 else reversed(intervals):
            sys.setswitchinterval(s)
            await drive(requests, upstream, token, work / f"{block}-{s}", samples[s])
    out: dict[str, Any] = {}
    for s, values in samples.items():
        values.sort()
        out[f"{s * 1000:g} ms"] = {
            "p50_ms": round(values[len(values) // 2] * 1000, 3),
            "p99_ms": round(values[int(len(values) * 0.99)] * 1000, 3),
            "n": len(values),
        }
    return out


def wait_for_port(port: int, seconds: float = 20.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port`` (the upstream started)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "upstream did not start"
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_variant(
    pythonpath: str | None, requests: int, callgrind: bool, env: dict[str, str]
) -> float:
    """Instructions (callgrind) or CPU seconds for ``requests`` requests in a fresh process."""
    run_env = dict(env)
    if pythonpath:
        run_env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, str(Path(__file__)), "--child", str(requests)]
    if callgrind:
        run_env.setdefault("BENCH_WATCH_AFTER", "0.25")
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd]
    out = subprocess.run(cmd, env=run_env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-4:])} failed:\n{out.stderr[-3000:]}")
    if callgrind:
        match = re.search(r"Collected : (\d+)", out.stderr)
        assert match, out.stderr[-2000:]
        return float(match.group(1))
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--compare", metavar="DIR", help="another checkout to run first")
    parser.add_argument(
        "--switch-intervals", metavar="S,S",
        help="p50/p99 of sequential requests with sys.setswitchinterval at each value, "
        "in alternating blocks in one process (the audit writer thread's GIL holds)",
    )  # fmt: skip
    parser.add_argument(
        "--no-audit", action="store_true",
        help="events are built but not written: the request path alone, steadier counts",
    )  # fmt: skip
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        import uvloop

        work = Path(tempfile.mkdtemp(prefix="igris-hot-"))
        up, tok = os.environ["BENCH_UPSTREAM"], os.environ["BENCH_UPSTREAM_TOKEN"]
        if not os.environ.get("BENCH_SWITCH"):
            print(uvloop.run(drive(args.child, up, tok, work)))
            return 0
        print(json.dumps(uvloop.run(_switch_blocks(args.child, up, tok, work))))
        return 0

    token = secrets.token_urlsafe(24)
    port = _free_port()
    env = {**os.environ, "BENCH_UPSTREAM_TOKEN": token,
           "BENCH_NO_AUDIT": "1" if args.no_audit else "",
           "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",  # the upstream is on loopback
           "BENCH_UPSTREAM": f"http://127.0.0.1:{port}/mcp",
           "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}  # fmt: skip
    up = subprocess.Popen(
        [sys.executable, str(HERE / "upstream.py"), "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        if args.switch_intervals:
            out = subprocess.run(
                [sys.executable, str(Path(__file__)), "--child", str(args.requests)],
                env={**env, "BENCH_SWITCH": args.switch_intervals}, capture_output=True,
                text=True, check=True,
            )  # fmt: skip
            print(out.stdout.strip())
            return 0
        variants = [("compare", args.compare)] if args.compare else []
        variants.append(("this", None))
        results: dict[str, list[float]] = {name: [] for name, _ in variants}
        n1, n2 = args.requests, 3 * args.requests
        for _ in range(args.rounds):
            for name, path in variants:
                if args.callgrind:
                    small = _run_variant(path, n1, True, env)
                    large = _run_variant(path, n2, True, env)
                    results[name].append((large - small) / (n2 - n1))
                else:
                    results[name].append(_run_variant(path, n1, False, env) / n1 * 1e6)
                print(f"{name}: {results[name][-1]:,.0f}", file=sys.stderr)
        unit = "instructions" if args.callgrind else "us CPU"
        summary = {name: min(values) for name, values in results.items()}
        print(json.dumps({"unit": f"{unit} per request (min of rounds)", **summary}))
    finally:
        up.terminate()
        up.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
