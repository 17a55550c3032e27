"""Instructions per warm request on the event-loop thread, one process per variant.

Each variant (``name=DIR``, DIR a checkout put first on ``PYTHONPATH``) runs
``hotpath.drive()`` under ``valgrind --tool=callgrind --dump-before=getppid
--separate-threads=yes``; ``os.getppid()`` is called after the warm-up and
before ``aclose``, so thread 1's second dump holds exactly the N warm requests
(no two-run difference, no writer or poll thread). Variants and rounds run in
parallel: the counts hardly depend on timing. The audit writer is left out
(``BENCH_NO_AUDIT``, as ``hotpath.py --no-audit``).

    ROUNDS=2 python benchmarks/hotpath_marks.py 200 base=/old/checkout new=/this/checkout
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hotpath import wait_for_port  # the benchmarks folder, as this script's own

HERE = Path(__file__).resolve().parent


def _child(n: int) -> None:
    sys.path.insert(0, str(HERE))
    import hotpath
    import uvloop

    from igris_mw import IgrisGateway

    real_sleep, real_aclose = asyncio.sleep, IgrisGateway.aclose
    armed = False

    async def aclose(self: Any) -> None:
        os.getppid()  # mark 2: the N requests are done
        await real_aclose(self)

    async def sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        nonlocal armed
        out = await real_sleep(delay, *args, **kwargs)
        if delay == 0.1 and not armed and sys._getframe(1).f_code.co_name == "drive":
            armed = True
            os.getppid()  # mark 1: warm-up over
        return out

    IgrisGateway.aclose = aclose  # type: ignore[method-assign]
    asyncio.sleep = sleep  # type: ignore[assignment]
    work = Path(tempfile.mkdtemp(prefix="igris-marks-"))
    up, token = os.environ["BENCH_UPSTREAM"], os.environ["BENCH_UPSTREAM_TOKEN"]
    uvloop.run(hotpath.drive(n, up, token, work))


def _run(path: str, n: int, env: dict[str, str], out: str) -> float:
    run_env = {**env, "PYTHONPATH": path}
    run_env.setdefault("BENCH_WATCH_AFTER", "0.25")
    cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        "--dump-before=getppid", "--separate-threads=yes",
        sys.executable, __file__, "--child", str(n),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=run_env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    second = glob.glob(out + ".2-01")
    text = Path(second[0]).read_text()
    match = re.search(r"^summary: (\d+)", text, re.M)
    assert match, out
    return int(match.group(1)) / n


def main() -> int:
    if sys.argv[1] == "--child":
        _child(int(sys.argv[2]))
        return 0
    n = int(sys.argv[1])
    variants = [tuple(v.split("=", 1)) for v in sys.argv[2:]]
    rounds = int(os.environ.get("ROUNDS", "2"))
    token = secrets.token_urlsafe(24)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "BENCH_UPSTREAM_TOKEN": token, "BENCH_NO_AUDIT": "1",
           "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",
           "BENCH_UPSTREAM": f"http://127.0.0.1:{port}/mcp",
           "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}  # fmt: skip
    up = subprocess.Popen(
        [sys.executable, str(HERE / "upstream.py"), "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out_dir = Path(tempfile.mkdtemp(prefix="igris-marks-"))
    try:
        wait_for_port(port)

        def one(name: str, path: str, r: int) -> tuple[str, float]:
            value = _run(path, n, env, str(out_dir / f"{name}-{r}.out"))
            print(f"{name} round {r}: {value:,.0f}", file=sys.stderr, flush=True)
            return name, value

        results: dict[str, list[int]] = {name: [] for name, _ in variants}
        with ThreadPoolExecutor(len(variants) * rounds) as pool:
            futures = [pool.submit(one, nm, p, r) for r in range(rounds) for nm, p in variants]
            for future in futures:
                name, value = future.result()
                results[name].append(round(value))
        print(json.dumps({"unit": "instructions per request, event-loop thread", **results}))
    finally:
        up.terminate()
        up.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
