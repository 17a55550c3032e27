"""The ASGI server for ``serve``: uvicorn (httptools, uvloop) against granian, one run.

Runs the bare proxy (``bare_proxy.make_app``) and the igris-mw gateway
(``IgrisGateway``, SQLite store, audit on) under each server, pinned as in
``run.py`` (the server under test on CPU 0, the load on the rest), and
measures each in turn: throughput at 32 connections, server CPU per request,
p50/p99 at one connection; the audit check (``done <= stored <= sent``) shows
the gateway works the same under both. The ratio column is the gateway over
the bare proxy *on the same server*.

    python benchmarks/servers.py                # ~2 min
    python benchmarks/servers.py --duration 3 --rounds 1

Needs ``wrk`` and ``granian`` (``pip install "granian>=2.5,<3"``; the
``bench`` dependency group).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    _PROBE,
    PY,
    SLUG,
    Pinning,
    Proc,
    Table,
    Target,
    Wrk,
    _free_port,
    _med,
    _wait_http,
    bootstrap,
    machine,
    measure_load,
    started,
)

HERE = Path(__file__).resolve().parent


def _command(server: str, app: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [PY, "-m", "uvicorn", "--factory", f"asgi_apps:{app}", "--app-dir", str(HERE),
                "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
                "--http", "httptools", "--lifespan", "on", "--log-level", "warning",
                "--no-access-log", "--no-server-header", "--no-date-header"]  # fmt: skip
    return [PY, "-m", "granian", "--interface", "asgi", "--factory", f"asgi_apps:{app}",
            "--working-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--workers", "1", "--runtime-threads", "1",
            "--log-level", "warning", "--no-ws"]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6, help="seconds per 32-conn run")
    parser.add_argument("--latency-duration", type=float, default=5, help="seconds per 1-conn run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    servers = ["uvicorn"]
    try:
        import granian  # noqa: F401

        servers.append("granian")
    except ImportError:
        print("granian is not installed: uvicorn only", file=sys.stderr)

    pin = Pinning()
    work = Path(tempfile.mkdtemp(prefix="igris-bench-servers-"))
    wrk = Wrk(pin, work / "wrk.log")
    print(f"igris-mw ASGI servers: {machine()}", file=sys.stderr)
    token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "BENCH_UPSTREAM_TOKEN": token,
        "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "IGRIS_HOME": str(work / "home"),
        "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",
    }  # fmt: skip (upstream on loopback)
    procs: list[Proc] = []
    targets: dict[str, Target] = {}
    with started(procs):
        up_port = _free_port()
        upstream = f"http://127.0.0.1:{up_port}/mcp"
        up = Proc("upstream", pin.wrap([PY, str(HERE / "upstream.py"), "--port", str(up_port)],
                  "load"), env, work / "upstream.log")  # fmt: skip
        procs.append(up)
        probe = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        _wait_http(up, up_port, "POST", "/mcp", probe, _PROBE)
        for server in servers:
            port = _free_port()
            name = f"bare proxy on {server}"
            p = Proc(name, pin.wrap(_command(server, "bare", port), "server"),
                     {**env, "BENCH_UPSTREAM": upstream}, work / f"bare-{server}.log",
                     cwd=work)  # fmt: skip
            procs.append(p)
            _wait_http(p, port, "POST", "/mcp", probe, _PROBE)
            targets[name] = Target(name, port, "/mcp", "Bearer ig_" + "x" * 40, proc=p)

            store = f"sqlite:///{work / f'{server}.db'}"
            key = bootstrap(PY, store, env, upstream, token, 0, work)
            port = _free_port()
            name = f"igris-mw on {server}"
            g = Proc(name, pin.wrap(_command(server, "gateway", port), "server"),
                     {**env, "BENCH_STORE": store, "BENCH_SPILL": str(work / f"{server}.spill")},
                     work / f"gateway-{server}.log", cwd=work)  # fmt: skip
            procs.append(g)
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            _wait_http(g, port, "POST", f"/v1/mcp/{SLUG}", headers, _PROBE)
            targets[name] = Target(name, port, f"/v1/mcp/{SLUG}", f"Bearer {key}", store, g)
        for rnd in range(args.rounds):
            for t in targets.values():
                print(f"round {rnd + 1}/{args.rounds}: {t.name}", file=sys.stderr)
                measure_load(wrk, t, args.duration, args.latency_duration)

    table = Table()
    for server in servers:
        bare, gw = targets[f"bare proxy on {server}"], targets[f"igris-mw on {server}"]
        for t in (bare, gw):
            base = t is bare
            rps, cpu = _med(t.rps), _med(t.cpu_us) if t.cpu_us else 0.0
            table.add(f"{t.name}: req/s, 32 conns", f"{rps:,.0f}",
                      "" if base else f"bare {_med(bare.rps):,.0f}",
                      "" if base else f"{rps / _med(bare.rps):.2f}x")  # fmt: skip
            table.add(f"{t.name}: CPU per request", f"{cpu:.0f} us",
                      "" if base else f"bare {_med(bare.cpu_us):.0f}",
                      "" if base else f"{cpu / _med(bare.cpu_us):.2f}x")  # fmt: skip
            for label, values, ref in (("p50", t.p50, bare.p50), ("p99", t.p99, bare.p99)):
                table.add(f"{t.name}: {label}, 1 conn", f"{_med(values):.3f} ms",
                          "" if base else f"bare {_med(ref):.3f}",
                          "" if base else f"{_med(values) - _med(ref):+.3f} ms")  # fmt: skip
        audit = gw.audit
        ok = all(c <= s <= n for _, s, c, n in audit)
        table.add(f"{gw.name}: audit, {len(audit)} runs", "in bounds" if ok else "OUT OF BOUNDS",
                  "", "", "done <= stored <= sent", ok)  # fmt: skip
    errors = sum(t.errors for t in targets.values())
    print()
    print(table.render())
    print(f"\nmachine: {machine()}\npinning: {pin.describe()}; rounds {args.rounds}; "
          f"wrk errors {errors}")  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
