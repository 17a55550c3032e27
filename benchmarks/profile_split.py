"""Where each microsecond of CPU per request goes: the gateway next to the bare proxy.

One run: the fast upstream (``upstream.py``), the bare proxy (``bare_proxy.py``)
and ``igris-mw serve`` on SQLite (audit on), set up as ``run.py`` does (the
server under test alone on CPU 0; wrk, the upstream and the profiler on CPU 1).
For each of the two servers, in turn, ``--rounds`` times:

1. ``wrk -t2 -c32`` for ``--duration`` seconds: requests/s and CPU per
   request (utime + stime of the server process per completed request,
   read after the audit has settled so the writer thread's work is in);
2. the same load again under ``py-spy record --threads --format raw``
   (sampling, ``--rate`` per second): every sample where a thread was
   running Python is put in a category by its innermost frame's file
   (uvicorn, aiohttp, asyncio, each ``igris_mw`` module, attrs, ...), and
   the SQLite audit writer thread is a category of its own.

The table gives each category's share of the busy samples times the CPU per
request of step 1 (median over rounds): microseconds per request, the
gateway next to the bare proxy. ``loop (native)`` is time py-spy attributes
to the event loop's own frame: uvloop's C code, the syscalls, and waits for
the GIL. Sampling is statistical: categories under ~2 % of the samples are
noise at a few thousand samples.

    .venv/bin/python -m pip install "py-spy>=0.4,<0.5"    # the bench group
    .venv/bin/python benchmarks/profile_split.py [--duration 8] [--rounds 2]

Prints the table; ``--keep`` keeps the raw profiles and logs.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # the benchmark helpers next to this file
    _PROBE,
    HERE,
    PY,
    SLUG,
    Pinning,
    Proc,
    Wrk,
    _free_port,
    _wait_http,
    audit_settled,
    bootstrap,
)

_LINE_NO = re.compile(r":\d+\)$")


def category(frame: str) -> str:
    """A py-spy frame (``func (path:line)``) -> its category."""
    match = re.search(r"\(([^()]*?)(?::\d+)?\)$", frame)
    path = match.group(1) if match else frame
    # The loop's own frame, or no Python frame at all: uvloop's C code and syscalls.
    if frame.startswith(("Runner.run (", "run_forever (", "thread (")):
        return "loop (native)"
    if path.startswith("igris_mw/"):
        parts = path.split("/")
        return "igris_mw/" + (parts[1] if len(parts) > 2 else parts[1].removesuffix(".py"))
    if path.startswith("<attrs generated"):
        return "attr"
    for name in ("uvicorn", "aiohttp", "asyncio", "attr", "multidict", "yarl", "httptools"):
        if path.startswith(name + "/"):
            return name
    if path in ("json/__init__.py", "json/encoder.py", "json/decoder.py"):
        return "json"
    if path in ("hmac.py", "hashlib.py"):
        return "hmac/hashlib"
    if path.startswith("logging/"):
        return "logging"
    if path.startswith("concurrent/") or path == "threading.py" or path == "queue.py":
        return "threads/queues"
    if path == "bare_proxy.py":
        return "bare_proxy.py"
    return "other"


def split(raw: Path) -> tuple[collections.Counter[str], int]:
    """Busy samples per category from py-spy's raw output (idle waits dropped)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_text)
        frames = stack.split(";")
        leaf = frames[-1]
        # A thread parked in a queue or a condition is idle, not busy.
        if leaf.startswith(("wait (threading", "get (queue", "_worker (concurrent")) or (
            "select" in leaf
        ):
            continue
        total += n
        thread = frames[0]
        if "MainThread" not in thread:
            counts["audit writer thread"] += n
        else:
            counts[category(leaf)] += n
    return counts, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(PY).with_name("py-spy"))
    if not Path(pyspy).exists():
        sys.exit('py-spy is missing: .venv/bin/python -m pip install "py-spy>=0.4,<0.5"')
    pin = Pinning()
    work = Path(tempfile.mkdtemp(prefix="igris-profile-"))
    token = base64.urlsafe_b64encode(os.urandom(18)).decode()
    env = {
        **os.environ,
        "BENCH_UPSTREAM_TOKEN": token,
        "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",
        "IGRIS_HOME": str(work / "home"),
    }
    procs: list[Proc] = []
    try:
        up_port, bare_port, gw_port = _free_port(), _free_port(), _free_port()
        upstream = f"http://127.0.0.1:{up_port}/mcp"
        up = Proc("upstream", pin.wrap([PY, str(HERE / "upstream.py"), "--port", str(up_port)],
                  "load"), env, work / "upstream.log")  # fmt: skip
        procs.append(up)
        auth_up = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        _wait_http(up, up_port, "POST", "/mcp", auth_up, _PROBE)
        bare = Proc("bare proxy", pin.wrap([PY, str(HERE / "bare_proxy.py"), "--port",
                    str(bare_port), "--upstream", upstream], "server"), env,
                    work / "bare.log")  # fmt: skip
        procs.append(bare)
        fake = "Bearer ig_" + "x" * 40
        _wait_http(bare, bare_port, "POST", "/mcp", {"Authorization": fake}, _PROBE)
        store = f"sqlite:///{work / 'igris.db'}"
        key = bootstrap(PY, store, env, upstream, token, 0, work)
        gw = Proc("igris-mw", pin.wrap([PY, "-m", "igris_mw.cli", "serve", "--store", store,
                  "--port", str(gw_port), "--log-level", "warning"], "server"), env,
                  work / "gateway.log", cwd=work)  # fmt: skip
        procs.append(gw)
        gw_auth = f"Bearer {key}"
        gw_headers = {"Authorization": gw_auth, "Content-Type": "application/json"}
        _wait_http(gw, gw_port, "POST", f"/v1/mcp/{SLUG}", gw_headers, _PROBE)

        wrk = Wrk(pin, work / "wrk.log")
        targets = {
            "bare proxy": (bare, f"http://127.0.0.1:{bare_port}/mcp", fake),
            "igris-mw sqlite": (gw, f"http://127.0.0.1:{gw_port}/v1/mcp/{SLUG}", gw_auth),
        }
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        rps: dict[str, list[float]] = {name: [] for name in targets}
        samples: dict[str, collections.Counter[str]] = {n: collections.Counter() for n in targets}
        busy: dict[str, int] = dict.fromkeys(targets, 0)
        for _proc, url, auth in targets.values():  # warm-up
            wrk.run(url, auth, threads=2, conns=32, seconds=1)
        for rnd in range(args.rounds):
            for name, (proc, url, auth) in targets.items():
                seq0 = audit_settled(store, SLUG, 0, 10**12) if proc is gw else 0
                cpu0 = proc.cpu_seconds()
                result = wrk.run(url, auth, threads=2, conns=32, seconds=args.duration)
                if proc is gw:
                    audit_settled(store, SLUG, seq0, seq0 + result["sent"])
                cpu[name].append((proc.cpu_seconds() - cpu0) / result["completed"] * 1e6)
                rps[name].append(result["completed"] / (result["duration_us"] / 1e6))
                raw = work / f"{name.replace(' ', '_')}-{rnd}.raw"
                spy = subprocess.Popen(
                    pin.wrap([pyspy, "record", "--pid", str(proc.pid), "--threads", "--rate",
                              str(args.rate), "--format", "raw", "--output", str(raw),
                              "--duration", str(round(args.duration)), "--nonblocking"], "load"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                time.sleep(0.5)
                wrk.run(url, auth, threads=2, conns=32, seconds=args.duration + 1)
                spy.wait(60)
                if raw.exists():
                    counts, total = split(raw)
                    samples[name].update(counts)
                    busy[name] += total
        names = list(targets)
        us = {n: statistics.median(cpu[n]) for n in names}
        print(
            f"profile_split: {args.rounds} rounds x {args.duration:g} s, wrk -t2 -c32; "
            f"{pin.describe()}; py-spy {args.rate}/s, busy samples "
            + ", ".join(f"{n} {busy[n]}" for n in names)
        )
        for n in names:
            print(f"  {n}: {statistics.median(rps[n]):,.0f} req/s, {us[n]:.0f} us CPU/request "
                  f"(rounds: {', '.join(f'{c:.0f}' for c in cpu[n])})")  # fmt: skip
        cats = sorted(
            set().union(*(samples[n] for n in names)),
            key=lambda c: -sum(samples[n][c] / max(busy[n], 1) * us[n] for n in names[1:]),
        )
        width = max(len(c) for c in cats)
        head = f"  {'us per request':{width}s}  " + "  ".join(f"{n:>16s}" for n in names)
        print(head + f"  {'difference':>12s}")
        for c in cats:
            vals = [samples[n][c] / max(busy[n], 1) * us[n] for n in names]
            cells = "  ".join(f"{v:16.1f}" for v in vals)
            print(f"  {c:{width}s}  {cells}  {vals[-1] - vals[0]:+12.1f}")
        cells = "  ".join(f"{us[n]:16.1f}" for n in names)
        print(f"  {'total':{width}s}  {cells}  {us[names[-1]] - us[names[0]]:+12.1f}")
        record = {n: {"cpu_us": us[n], "busy": busy[n], "samples": dict(samples[n])} for n in names}
        (work / "split.json").write_text(json.dumps(record, indent=1))
    finally:
        for p in reversed(procs):
            p.stop()
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
