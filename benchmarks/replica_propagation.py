"""Replica propagation: from the 200 of a rotate/disable on replica A to the
first request on replica B that honours it (new credential / 403).

Two ``igris-mw serve`` processes on one Postgres database, cache TTL 60 s so
that only LISTEN/NOTIFY can explain a fast figure. Prints p50, p99 and max
over the trials (target: p99 <= 100 ms).

    python benchmarks/replica_propagation.py [--trials 100] [--dsn postgresql://...]

Without ``--dsn`` (or ``IGRIS_TEST_POSTGRES_DSN``) a throwaway cluster is
started with the machine's initdb/pg_ctl.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from igris_mw_postgres.testing import GatewayProcess, TempCluster, create_database

MASTER = {
    "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",  # the bench upstream runs on loopback
}


async def echo_auth(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    auth = dict(scope["headers"]).get(b"authorization", b"").decode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"auth": auth}).encode()})


def cli(store: str, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "igris_mw.cli", *args, "--store", store, "--json"],
        env={**os.environ, **MASTER},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


async def measure(dsn: str, trials: int, home: Path) -> list[float]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(echo_auth, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    upstream = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    admin = cli(dsn, "api-keys", "create", "--name", "admin", "--scope", "admin")["key"]
    mcp = cli(dsn, "api-keys", "create", "--name", "agent", "--scope", "mcp")["key"]
    ttl = ["--cache-ttl", "60"]
    samples: list[float] = []
    try:
        with (
            GatewayProcess(dsn, home / "a", MASTER, ttl) as a,
            GatewayProcess(dsn, home / "b", MASTER, ttl) as b,
        ):
            async with httpx.AsyncClient(timeout=10) as http:
                adm = {"Authorization": f"Bearer {admin}"}
                r = await http.post(
                    f"{a.base_url}/api/v1/virtual-keys",
                    headers=adm,
                    json={
                        "slug": "bench",
                        "name": "Bench",
                        "upstreamUrl": upstream,
                        "credential": "cred-0",
                    },
                )
                r.raise_for_status()

                async def on_b() -> httpx.Response:
                    return await http.post(
                        f"{b.base_url}/v1/mcp/bench",
                        headers={"Authorization": f"Bearer {mcp}"},
                        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                    )

                async def wait_for(ok: Any) -> float:
                    started = time.perf_counter()
                    while not ok(await on_b()):
                        if time.perf_counter() - started > 30:
                            raise RuntimeError("replica B never honoured the change")
                    return time.perf_counter() - started

                await wait_for(lambda resp: resp.status_code == 200)  # warm B's caches
                for i in range(1, trials + 1):
                    if i % 2:
                        cred = f"cred-{i}"
                        r = await http.post(
                            f"{a.base_url}/api/v1/virtual-keys/bench/rotate",
                            headers=adm,
                            json={"credential": cred},
                        )
                        r.raise_for_status()
                        want = {"auth": f"Bearer {cred}"}
                        samples.append(
                            await wait_for(
                                lambda resp, want=want: (
                                    resp.status_code == 200 and resp.json() == want
                                )
                            )
                        )
                    else:
                        r = await http.post(
                            f"{a.base_url}/api/v1/virtual-keys/bench/disable", headers=adm
                        )
                        r.raise_for_status()
                        samples.append(await wait_for(lambda resp: resp.status_code == 403))
                        r = await http.post(
                            f"{a.base_url}/api/v1/virtual-keys/bench/enable", headers=adm
                        )
                        r.raise_for_status()
                        await wait_for(lambda resp: resp.status_code == 200)
    finally:
        server.should_exit = True
        await task
        sock.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--dsn", default=os.environ.get("IGRIS_TEST_POSTGRES_DSN"))
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        admin_dsn = args.dsn or stack.enter_context(TempCluster()).dsn
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="igris-bench-")))
        samples = asyncio.run(measure(create_database(admin_dsn), args.trials, home))
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, round(0.99 * len(ms)) - 1)]
    print(f"replica propagation over {len(ms)} trials (rotate and disable alternating):")
    print(
        f"  p50 {statistics.median(ms):.1f} ms   p99 {p99:.1f} ms   max {ms[-1]:.1f} ms"
        f"   (target p99 <= 100 ms: {'met' if p99 <= 100 else 'NOT met'})"
    )
    return 0 if p99 <= 100 else 1


if __name__ == "__main__":
    sys.exit(main())
