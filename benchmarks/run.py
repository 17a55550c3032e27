"""igris-mw performance: one run, one table, every figure next to its baseline.

Starts everything on loopback, measures, stops everything it started:

- ``upstream.py``: a raw ASGI MCP JSON-RPC responder (uvicorn, uvloop,
  httptools) that requires the injected bearer credential;
- ``bare_proxy.py``: the thinnest aiohttp pass-through that injects a header,
  on the same server stack: the baseline;
- ``igris-mw serve`` with the SQLite store, then with the Postgres store
  (a throwaway cluster, ``igris_mw_postgres.testing.TempCluster``);
- wrk (``jsonrpc.lua``): throughput at 32 connections (2 threads), p50/p99
  at 1 connection; the SSE and cold-path clients (``sse.py``,
  ``cold_path.py``); ``import_time.py``.

On a machine with 2+ cores the server under test (bare proxy or gateway)
is pinned to CPU 0 and the load side (wrk, the upstream, the clients, the
Postgres server) to CPU 1, so the proxy has one core to itself, as a
one-process gateway would in production; with one core everything shares.

    python benchmarks/run.py                  # ~5 minutes
    python benchmarks/run.py --no-postgres --duration 5 --rounds 1
    python benchmarks/run.py --before-python /work/wt/before/.venv/bin/python --tls --metrics

``--workers N`` (default 2) adds ``serve --workers 1`` and ``--workers N``
unpinned (the workers, wrk and the upstream share every core) to compare
throughput; ``--before-python`` adds a gateway run by another checkout's
interpreter (its own venv, ``pip install -e`` of that checkout) so a
regression shows side by side; ``--tls`` appends ``tls.py``'s table (https
upstream); ``--metrics`` adds the gateway with ``--metrics-port`` (when its
``serve`` has that option).

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
SLUG = "bench"
COLD_PREFIX = "cold-"


# -- processes ---------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pinning:
    """CPU lists for ``taskset``: the server under test vs the load side."""

    def __init__(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.enabled = len(cpus) >= 2 and shutil.which("taskset") is not None
        self.server = str(cpus[0])
        self.load = ",".join(str(c) for c in cpus[1:]) if self.enabled else self.server

    def wrap(self, cmd: list[str], side: str) -> list[str]:
        if not self.enabled:
            return cmd
        return ["taskset", "-c", self.server if side == "server" else self.load, *cmd]

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned: server, load generator and upstream share every core"
        return (
            f"server under test on CPU {self.server}; wrk, upstream, clients and "
            f"Postgres on CPU {self.load}"
        )


class Proc:
    """A child process we started; stopped with SIGTERM (then SIGKILL) in ``stop``."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=cwd,
            )  # fmt: skip

    def cpu_seconds(self) -> float:
        """utime + stime of the process and its live children (serve --workers N)."""
        return _tree_cpu(self.pid)

    @property
    def pid(self) -> int:
        # taskset execs the real program, so the pid is the server's own.
        return self.popen.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}")

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


_TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / _TICK
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return total + sum(_tree_cpu(int(c)) for c in children)


def _wait_http(
    proc: Proc, port: int, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request(method, path, body=body, headers=headers)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer on port {port}:\n{proc.tail()}")


_PROBE = b'{"jsonrpc":"2.0","id":0,"method":"ping"}'


# -- store bootstrap and audit counts ------------------------------------------
def bootstrap(
    python: str, store_url: str, env: dict[str, str], upstream: str, token: str, cold: int,
    cwd: Path,
) -> str:  # fmt: skip
    """Connections and an ``mcp`` key, made by ``python``'s igris-mw (bootstrap.py)."""
    cfg = {"store": store_url, "upstream": upstream, "token": token,
           "slugs": [SLUG, *(f"{COLD_PREFIX}{i:03d}" for i in range(cold)), "warm"]}  # fmt: skip
    out = subprocess.run(
        [python, str(HERE / "bootstrap.py")], env={**env, "BENCH_BOOTSTRAP": json.dumps(cfg)},
        capture_output=True, text=True, check=True, timeout=120, cwd=cwd,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


async def _audit_seq(store_url: str, slug: str) -> int:
    """The newest sealed event's ``seq``: each connection's chain is gap-free, so
    the difference between two readings is the number of events stored."""
    if store_url.startswith("sqlite:///"):
        # Read-only and schema-agnostic: opening the file through this
        # checkout's store would migrate a --before-python gateway's schema.
        import sqlite3

        db = sqlite3.connect(f"file:{store_url[len('sqlite:///') :]}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT max(seq) FROM audit_events WHERE connection = ?", (slug,)
            ).fetchone()
        finally:
            db.close()
        return int(row[0] or 0)
    from igris_mw._plugins import store_from_url

    store = store_from_url(store_url)
    await store.open()
    try:
        page = await store.list_audit_events(slug, limit=1)
        return page.items[0].seq if page.items else 0
    finally:
        await store.close()


def audit_settled(store_url: str, slug: str, before: int, expect_at_most: int) -> int:
    """Events stored since ``before``, once the gateway's writer has caught up."""
    deadline = time.monotonic() + 30
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = asyncio.run(_audit_seq(store_url, slug)) - before
        if now != last:
            last, stable_since = now, time.monotonic()
        if now >= expect_at_most or time.monotonic() - stable_since > 1.5:
            return now
        time.sleep(0.2)
    return last


# -- load --------------------------------------------------------------------
class Wrk:
    def __init__(self, pin: Pinning, log: Path) -> None:
        path = shutil.which("wrk")
        if path is None:
            sys.exit(
                "wrk is not installed: this benchmark needs it as its load generator.\n"
                "  Debian/Ubuntu: apt-get install -y wrk   (macOS: brew install wrk)"
            )
        self.path = path
        self.pin = pin
        self.log = log

    def run(
        self, url: str, auth: str, *, threads: int, conns: int, seconds: float
    ) -> dict[str, Any]:
        secs = f"-d{max(1, round(seconds))}s"
        cmd = self.pin.wrap(
            [self.path, f"-t{threads}", f"-c{conns}", secs, "--timeout", "10s",
             "-s", str(HERE / "jsonrpc.lua"), url],
            "load",
        )  # fmt: skip
        out = subprocess.run(
            cmd, env={**os.environ, "BENCH_AUTH": auth}, capture_output=True, text=True,
            check=True, timeout=seconds + 60,
        )  # fmt: skip
        with self.log.open("a") as f:
            f.write(
                f"$ wrk -t{threads} -c{conns} -d{max(1, round(seconds))}s {url}\n{out.stdout}\n"
            )
        line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH "))
        result: dict[str, Any] = json.loads(line[len("BENCH ") :])
        result["rps"] = result["completed"] / (result["duration_us"] / 1e6)
        errors = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors",
                                         "status_errors", "timeouts"))  # fmt: skip
        result["errors"] = errors
        return result


class Target:
    def __init__(
        self, name: str, port: int, path: str, auth: str, store_url: str | None = None,
        proc: Proc | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.port = port
        self.path = path
        self.auth = auth
        self.store_url = store_url
        self.proc = proc
        self.rps: list[float] = []
        self.p50: list[float] = []
        self.p99: list[float] = []
        self.audit: list[tuple[str, int, int, int]] = []  # (run, stored, completed, sent)
        self.cpu_us: list[float] = []  # server CPU per completed request, 32 conns
        self.errors = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


def measure_load(wrk: Wrk, t: Target, duration: float, lat_duration: float) -> None:
    wrk.run(t.url, t.auth, threads=2, conns=32, seconds=1)  # warm-up: pools, caches, JIT-less
    runs = (("32 conns", 2, 32, duration), ("1 conn", 1, 1, lat_duration))
    for label, threads, conns, seconds in runs:
        # The warm-up's (or last run's) events must be in before we count.
        before = audit_settled(t.store_url, SLUG, 0, 1 << 62) if t.store_url else 0
        cpu = t.proc.cpu_seconds() if t.proc else 0.0
        r = wrk.run(t.url, t.auth, threads=threads, conns=conns, seconds=seconds)
        t.errors += r["errors"]
        if conns > 1:
            t.rps.append(r["rps"])
        else:
            t.p50.append(r["p50_us"] / 1000)
            t.p99.append(r["p99_us"] / 1000)
        if t.store_url:
            stored = audit_settled(t.store_url, SLUG, before, r["sent"])
            t.audit.append((label, stored, r["completed"], r["sent"]))
            print(f"  audit, {label}: {stored} stored; wrk {r['completed']} done,"
                  f" {r['sent']} sent", file=sys.stderr)  # fmt: skip
        # After the audit has settled, so the writer's catch-up is counted too
        # (the idle gateway meanwhile costs ~nothing: a 100 ms change poll).
        cpu = (t.proc.cpu_seconds() - cpu) if t.proc else 0.0
        if conns > 1 and t.proc and r["completed"]:
            t.cpu_us.append(cpu / r["completed"] * 1e6)


# -- table -------------------------------------------------------------------
class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, figure: str, value: str, baseline: str = "", ratio: str = "",
            target: str = "", ok: bool | None = None) -> None:  # fmt: skip
        verdict = "" if ok is None else ("yes" if ok else "NO")
        self.rows.append((figure, value, baseline, ratio, target, verdict))

    def render(self) -> str:
        head = ("figure", "value", "baseline (same run)", "ratio", "target", "met")
        rows = [head, *self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]

        def line(r: tuple[str, ...]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(head), sep, *(line(r) for r in self.rows)])


def _med(values: list[float]) -> float:
    return statistics.median(values)


def build_table(
    targets: dict[str, Target], sse: dict[str, Any], mem: dict[str, float],
    cold: dict[str, dict[str, Any]], imp: dict[str, float],
) -> Table:  # fmt: skip
    table = Table()
    bare = targets["bare proxy"]
    direct = targets["direct"]
    gws = [t for name, t in targets.items() if name.startswith("igris-mw")]
    pinned = [t for t in gws if "worker" not in t.name]
    b_rps = _med(bare.rps)
    table.add("throughput, 32 conns: direct", f"{_med(direct.rps):,.0f} req/s",
              f"bare {b_rps:,.0f}", f"{_med(direct.rps) / b_rps:.2f}x")  # fmt: skip
    table.add("throughput, 32 conns: bare proxy", f"{b_rps:,.0f} req/s", "(baseline)", "1.00x")
    for g in pinned:
        r = _med(g.rps) / b_rps
        table.add(f"throughput, 32 conns: {g.name}", f"{_med(g.rps):,.0f} req/s",
                  f"bare {b_rps:,.0f}", f"{r:.2f}x", ">= 0.75x bare", r >= 0.75)  # fmt: skip
    if bare.cpu_us:
        b_cpu = _med(bare.cpu_us)
        table.add("CPU per request, 32 conns: bare proxy", f"{b_cpu:.0f} us", "(baseline)",
                  "1.00x")  # fmt: skip
        for g in pinned:
            if g.cpu_us:
                c = _med(g.cpu_us)
                table.add(f"CPU per request, 32 conns: {g.name}", f"{c:.0f} us",
                          f"bare {b_cpu:.0f}", f"{c / b_cpu:.2f}x", "<= 1.50x bare",
                          c / b_cpu <= 1.5)  # fmt: skip
    workers = [t for t in gws if "worker" in t.name]
    if len(workers) == 2:
        one, many = workers
        r = _med(many.rps) / _med(one.rps)
        for w in workers:
            table.add(f"throughput, 32 conns, unpinned: {w.name}", f"{_med(w.rps):,.0f} req/s",
                      f"bare {b_rps:,.0f} (pinned)", f"{_med(w.rps) / b_rps:.2f}x")  # fmt: skip
        table.add(f"serve {many.name.split(', ')[-1]} / 1 worker, 32 conns",
                  f"{r:.2f}x", f"{_med(one.rps):,.0f} req/s", "", ">= 1.30x",
                  r >= 1.3)  # fmt: skip
    now = targets.get("igris-mw sqlite")
    for g in pinned:
        if now is None or g is now or not g.name.startswith("igris-mw sqlite, "):
            continue
        r = _med(g.rps) / _med(now.rps)
        table.add(f"throughput: {g.name} / igris-mw sqlite", f"{r:.2f}x",
                  f"{_med(now.rps):,.0f} req/s", "", "")  # fmt: skip
        table.add(
            f"p50 latency: {g.name} - igris-mw sqlite",
            f"{_med(g.p50) - _med(now.p50):+.3f} ms",
            f"{_med(now.p50):.3f} ms",
        )
    b50, b99 = _med(bare.p50), _med(bare.p99)
    table.add("p50 latency, 1 conn: direct", f"{_med(direct.p50):.3f} ms", f"bare {b50:.3f}",
              f"{_med(direct.p50) - b50:+.3f} ms")  # fmt: skip
    table.add("p50 latency, 1 conn: bare proxy", f"{b50:.3f} ms", "(baseline)", "+0.000 ms")
    for g in pinned:
        d = _med(g.p50) - b50
        table.add(f"p50 latency, 1 conn: {g.name}", f"{_med(g.p50):.3f} ms", f"bare {b50:.3f}",
                  f"{d:+.3f} ms", "<= +0.100 ms", d <= 0.1)  # fmt: skip
    table.add("p99 latency, 1 conn: direct", f"{_med(direct.p99):.3f} ms", f"bare {b99:.3f}",
              f"{_med(direct.p99) - b99:+.3f} ms")  # fmt: skip
    table.add("p99 latency, 1 conn: bare proxy", f"{b99:.3f} ms", "(baseline)", "+0.000 ms")
    for g in pinned:
        d = _med(g.p99) - b99
        table.add(f"p99 latency, 1 conn: {g.name}", f"{_med(g.p99):.3f} ms", f"bare {b99:.3f}",
                  f"{d:+.3f} ms", "<= +0.500 ms", d <= 0.5)  # fmt: skip
    if sse:
        d50 = sse["direct"]["p50_ms"]
        for name in ("bare proxy", "igris-mw sqlite"):
            diff = sse[name]["p50_ms"] - d50
            gw = name.startswith("igris")
            table.add(f"SSE first event p50: {name}", f"{sse[name]['p50_ms']:.3f} ms",
                      f"direct {d50:.3f}", f"{diff:+.3f} ms", "<= +0.500 ms" if gw else "",
                      (diff <= 0.5) if gw else None)  # fmt: skip
    if mem:
        n = int(mem["streams"])
        table.add(f"RSS per open SSE stream ({n}): bare proxy", f"{mem['bare proxy']:.1f} KB",
                  "(baseline)", "1.00x")  # fmt: skip
        kb = mem["igris-mw sqlite"]
        table.add(f"RSS per open SSE stream ({n}): igris-mw sqlite", f"{kb:.1f} KB",
                  f"bare {mem['bare proxy']:.1f}", f"{kb / mem['bare proxy']:.2f}x",
                  "<= 40 KB", kb <= 40)  # fmt: skip
    for name, c in cold.items():
        table.add(f"cold path (first request - warm), p50: {name}", f"{c['extra_p50_ms']:.3f} ms",
                  f"warm req {c['cold_p50_ms'] - c['extra_p50_ms']:.3f}",
                  f"{c['extra_p50_ms'] / 2.0:.2f}x target", "<= 2.000 ms",
                  c["extra_p50_ms"] <= 2.0)  # fmt: skip
        table.add(f"cold path, max of {c['n']}: {name}", f"{c['extra_max_ms']:.3f} ms")
    for g in gws:
        ok = all(completed <= stored <= sent for _, stored, completed, sent in g.audit)
        good = sum(completed <= stored <= sent for _, stored, completed, sent in g.audit)
        stored = sum(x[1] for x in g.audit)
        completed = sum(x[2] for x in g.audit)
        sent = sum(x[3] for x in g.audit)
        table.add(f"audit events stored, {len(g.audit)} load runs: {g.name}",
                  f"{stored:,} ({good}/{len(g.audit)} runs in bounds)",
                  f"wrk {completed:,} done..{sent:,} sent", f"{stored / completed:.4f}x",
                  "done <= stored <= sent, each run", ok)  # fmt: skip
    for t in targets.values():
        if t.errors:
            table.add(f"wrk socket/status errors: {t.name}", str(t.errors), "", "", "0", False)
    table.add("import igris_mw (-X importtime, cumulative)", f"{imp['importtime_ms']:.1f} ms",
              f"python start-up {imp['interpreter_ms']:.1f}",
              f"{imp['importtime_ms'] / 150:.2f}x target", "<= 150 ms",
              imp["importtime_ms"] <= 150)  # fmt: skip
    table.add("import igris_mw (fresh interpreter, wall - start-up)", f"{imp['wall_ms']:.1f} ms")
    return table


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    return (
        f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average at start {load:.2f}"
    )


# -- the run -----------------------------------------------------------------
@contextlib.contextmanager
def started(procs: list[Proc]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6, help="seconds per 32-conn run")
    parser.add_argument("--latency-duration", type=float, default=5, help="seconds per 1-conn run")
    parser.add_argument("--rounds", type=int, default=2, help="load rounds (medians reported)")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--sse-samples", type=int, default=200)
    parser.add_argument("--cold", type=int, default=40, help="connections for the cold path")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument(
        "--workers", type=int, default=2, help="compare serve --workers 1 and N, unpinned (0: skip)"
    )
    parser.add_argument(
        "--before-python",
        metavar="PYTHON",
        help="also run the gateway of another checkout: its venv's python",
    )
    parser.add_argument(
        "--before-label", default="before", help="name of the --before-python gateway in the table"
    )
    parser.add_argument("--tls", action="store_true", help="append tls.py's table (https)")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also run the gateway with --metrics-port (metrics on vs off)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    pin = Pinning()
    work = Path(tempfile.mkdtemp(prefix="igris-bench-"))
    wrk = Wrk(pin, work / "wrk.log")
    started_at = time.monotonic()
    print(f"igris-mw benchmark: {machine()}", file=sys.stderr)
    print(f"pinning: {pin.describe()}; logs in {work}", file=sys.stderr)

    # First, while none of our servers is loading the machine.
    print("import time", file=sys.stderr)
    from import_time import measure as import_measure

    imp = import_measure(PY, runs=7)

    token = secrets.token_urlsafe(24)
    master = base64.b64encode(os.urandom(32)).decode()
    env = {**os.environ, "BENCH_UPSTREAM_TOKEN": token, "IGRIS_MASTER_KEY": master,
           "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",  # the upstream is on loopback
           "IGRIS_HOME": str(work / "home")}  # fmt: skip
    procs: list[Proc] = []
    targets: dict[str, Target] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(started(procs))

        up_port = _free_port()
        upstream = f"http://127.0.0.1:{up_port}/mcp"
        up = Proc("upstream", pin.wrap([PY, str(HERE / "upstream.py"), "--port", str(up_port)],
                  "load"), env, work / "upstream.log")  # fmt: skip
        procs.append(up)
        bare_port = _free_port()
        bare = Proc("bare proxy", pin.wrap([PY, str(HERE / "bare_proxy.py"), "--port",
                    str(bare_port), "--upstream", upstream], "server"), env,
                    work / "bare.log")  # fmt: skip
        procs.append(bare)
        probe_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        _wait_http(up, up_port, "POST", "/mcp", probe_headers, _PROBE)
        _wait_http(bare, bare_port, "POST", "/mcp", probe_headers, _PROBE)
        targets["direct"] = Target("direct", up_port, "/mcp", f"Bearer {token}")
        # The same header size as the gateway key, so the bytes on the wire match.
        fake_key = "Bearer ig_" + "x" * 40
        targets["bare proxy"] = Target("bare proxy", bare_port, "/mcp", fake_key, proc=bare)

        stores: dict[str, str] = {"sqlite": f"sqlite:///{work / 'igris.db'}"}
        if not args.no_postgres:
            from igris_mw_postgres.testing import TempCluster, create_database

            cluster = TempCluster()
            stack.callback(cluster.stop, remove=True)
            cluster.start()
            if pin.enabled:
                # Children fork from the postmaster and inherit its CPU list.
                pid = (cluster.directory / "data" / "postmaster.pid").read_text().split()[0]
                subprocess.run(["taskset", "-a", "-p", "-c", pin.load, pid],
                               check=False, capture_output=True)  # fmt: skip
            stores["postgres"] = create_database(cluster.dsn)

        def gateway(
            name: str, url: str, *, python: str = PY, extra: tuple[str, ...] = (),
            pinned: bool = True, bootstrap_store: bool = True,
        ) -> Target:  # fmt: skip
            if bootstrap_store:
                keys[url] = bootstrap(python, url, env, upstream, token, args.cold, work)
            port = _free_port()
            cmd = [python, "-m", "igris_mw.cli", "serve", "--store", url, "--port", str(port),
                   "--log-level", "warning", *extra]  # fmt: skip
            # cwd: the work directory, so `-m igris_mw` is the interpreter's own install.
            gw = Proc(name, pin.wrap(cmd, "server") if pinned else cmd, env,
                      work / f"gateway-{name.replace(' ', '_')}.log", cwd=work)  # fmt: skip
            procs.append(gw)
            gw_headers = {"Authorization": f"Bearer {keys[url]}",
                          "Content-Type": "application/json"}  # fmt: skip
            _wait_http(gw, port, "POST", f"/v1/mcp/{SLUG}", gw_headers, _PROBE)
            targets[name] = Target(name, port, f"/v1/mcp/{SLUG}", f"Bearer {keys[url]}", url, gw)
            return targets[name]

        keys: dict[str, str] = {}
        for kind, url in stores.items():
            gateway(f"igris-mw {kind}", url)
        if args.before_python:
            gateway(f"igris-mw sqlite, {args.before_label}",
                    f"sqlite:///{work / 'before.db'}", python=args.before_python)  # fmt: skip
        if args.metrics:
            if "--metrics-port" in subprocess.run(
                [PY, "-m", "igris_mw.cli", "serve", "--help"], capture_output=True, text=True,
                cwd=work,
            ).stdout:  # fmt: skip
                gateway("igris-mw sqlite, metrics on", f"sqlite:///{work / 'metrics.db'}",
                        extra=("--metrics-port", str(_free_port())))  # fmt: skip
            else:
                print("--metrics: this serve has no --metrics-port; skipped", file=sys.stderr)
        if args.workers > 1:
            for n in (1, args.workers):
                gateway(f"igris-mw sqlite, {n} worker{'s' if n > 1 else ''}",
                        f"sqlite:///{work / f'workers{n}.db'}",
                        extra=("--workers", str(n)), pinned=False)  # fmt: skip

        for rnd in range(args.rounds):
            for t in targets.values():
                print(f"round {rnd + 1}/{args.rounds}: {t.name}", file=sys.stderr)
                measure_load(wrk, t, args.duration, args.latency_duration)

        print("SSE: time to first event", file=sys.stderr)
        sse_targets = ["direct", "bare proxy", "igris-mw sqlite"]
        sse_cfg = {
            "samples": args.sse_samples,
            "targets": [
                {"name": n, "host": "127.0.0.1", "port": targets[n].port,
                 "path": targets[n].path, "auth": targets[n].auth}
                for n in sse_targets
            ],
        }  # fmt: skip
        out = subprocess.run(
            pin.wrap([PY, str(HERE / "sse.py"), "ttfe"], "load"),
            env={**env, "BENCH_SSE": json.dumps(sse_cfg)}, capture_output=True, text=True,
            check=True, timeout=300,
        )  # fmt: skip
        sse = json.loads(out.stdout)

        mem: dict[str, float] = {"streams": args.streams}
        for name in ("bare proxy", "igris-mw sqlite"):
            print(f"SSE: {args.streams} open streams through {name}", file=sys.stderr)
            mem[name] = hold_streams(pin, env, targets[name], args.streams, work)

        cold: dict[str, dict[str, Any]] = {}
        for kind in stores:
            print(f"cold path: {kind}", file=sys.stderr)
            t = targets[f"igris-mw {kind}"]
            cfg = {"host": "127.0.0.1", "port": t.port, "auth": t.auth, "warm": 5,
                   "warmup_slug": "warm",
                   "slugs": [f"{COLD_PREFIX}{i:03d}" for i in range(args.cold)]}  # fmt: skip
            out = subprocess.run(
                pin.wrap([PY, str(HERE / "cold_path.py")], "load"),
                env={**env, "BENCH_COLD": json.dumps(cfg)}, capture_output=True, text=True,
                check=True, timeout=300,
            )  # fmt: skip
            cold[f"igris-mw {kind}"] = json.loads(out.stdout)

    table = build_table(targets, sse, mem, cold, imp)
    print()
    print(table.render())
    if args.tls:
        print("\nhttps upstream (benchmarks/tls.py, same options):", file=sys.stderr)
        out = subprocess.run(
            [PY, str(HERE / "tls.py"), "--duration", str(args.duration),
             "--latency-duration", str(args.latency_duration), "--rounds", str(args.rounds)],
            capture_output=True, text=True, check=False, timeout=1800,
        )  # fmt: skip
        print("\n## https upstream (tls.py)\n" + out.stdout.strip())
    print(f"\nmachine: {machine()}\npinning: {pin.describe()}")
    print(f"load rounds: {args.rounds} (medians); wall time {time.monotonic() - started_at:.0f} s")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def hold_streams(pin: Pinning, env: dict[str, str], t: Target, streams: int, work: Path) -> float:
    """KB of RSS the proxy process gains per open SSE stream."""
    assert t.proc is not None
    cfg = {"streams": streams, "target": {"name": t.name, "host": "127.0.0.1", "port": t.port,
                                          "path": t.path, "auth": t.auth}}  # fmt: skip

    def open_streams(n: int) -> subprocess.Popen[str]:
        client = subprocess.Popen(
            pin.wrap([PY, str(HERE / "sse.py"), "hold"], "load"),
            env={**env, "BENCH_SSE": json.dumps({**cfg, "streams": n})},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert client.stdout is not None
        ready = client.stdout.readline()
        if not ready.startswith("READY"):
            client.kill()
            raise RuntimeError(f"SSE client failed on {t.name}: {ready!r}\n{t.proc.tail()}")  # type: ignore[union-attr]
        return client

    def close(client: subprocess.Popen[str]) -> None:
        assert client.stdin is not None
        client.stdin.write("CLOSE\n")
        client.stdin.flush()
        client.wait(timeout=60)

    # Warm-up: the first streams pay for code paths and pools, not per stream.
    close(open_streams(50))
    time.sleep(1)
    before = t.proc.rss_kb()
    client = open_streams(streams)
    time.sleep(1)
    after = t.proc.rss_kb()
    close(client)
    return (after - before) / streams


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
