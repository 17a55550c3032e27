"""TLS to the upstream: igris-mw against the bare proxy doing the same TLS, in one run.

Starts on loopback: the fast upstream (``upstream.py``) served over TLS with a
certificate from a throwaway CA (``trustme``); the bare proxy (``bare_proxy.py``)
trusting that CA through ``SSL_CERT_FILE``; ``igris-mw serve`` with
``IGRIS_UPSTREAM_CA_FILE`` (connection ``bench``) and a second connection that
carries the CA itself (``bench-ca``, its own cached SSL context). Then wrk:
throughput at 32 connections and p50/p99 at 1 connection, each target in turn,
``--rounds`` times, medians; the ratio column compares with the bare proxy.
Both proxies pool their TLS connections to the upstream, so warm requests
pay no handshake: the figures show what verification and the per-connection
context cost once warm (nothing, if the pool holds).

    python benchmarks/tls.py                       # ~1 min
    python benchmarks/tls.py --duration 3 --rounds 1

Needs ``wrk`` (Debian/Ubuntu: ``apt-get install -y wrk``) and ``trustme``
(the test dependency group).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import ssl
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (  # run.py is a sibling script, found through the sys.path entry above
    _PROBE,
    HERE,
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
    machine,
    measure_load,
    started,
)

CA_SLUG = "bench-ca"

_UPSTREAM = (
    "import os, sys, uvicorn; sys.path.insert(0, {here!r}); import upstream; "
    "uvicorn.run(upstream.make_app(os.environ['BENCH_UPSTREAM_TOKEN']), host='127.0.0.1', "
    "port={port}, loop='uvloop', http='httptools', lifespan='off', log_level='warning', "
    "access_log=False, server_header=False, date_header=False, "
    "ssl_certfile={cert!r}, ssl_keyfile={key!r})"
)


def _wait_tls(proc: Proc, url: str, token: str, ca_file: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    request = urllib.request.Request(
        url, data=_PROBE, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(request, context=context, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer:\n{proc.tail()}")


async def _bootstrap(store_url: str, env: dict[str, str], upstream: str, token: str,
                     ca_pem: str) -> str:  # fmt: skip
    from igris_mw._plugins import crypto_from_url, store_from_url
    from igris_mw._service import Service

    store = store_from_url(store_url)
    await store.open()
    try:
        from bootstrap import service_options

        service = Service(store, crypto_from_url(None, env), **service_options(env))  # type: ignore[arg-type]
        await service.create_connection(
            {"slug": SLUG, "name": SLUG, "upstreamUrl": upstream, "credential": token}
        )
        await service.create_connection(
            {"slug": CA_SLUG, "name": CA_SLUG, "upstreamUrl": upstream, "credential": token,
             "caCertificate": ca_pem}
        )  # fmt: skip
        _, key = await service.create_api_key({"name": "bench", "scopes": ["mcp"]})
        return key
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6, help="seconds per 32-conn run")
    parser.add_argument("--latency-duration", type=float, default=5, help="seconds per 1-conn run")
    parser.add_argument("--rounds", type=int, default=2, help="load rounds (medians reported)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    pin = Pinning()
    work = Path(tempfile.mkdtemp(prefix="igris-bench-tls-"))
    wrk = Wrk(pin, work / "wrk.log")
    print(f"igris-mw TLS benchmark: {machine()}", file=sys.stderr)
    print(f"pinning: {pin.describe()}; logs in {work}", file=sys.stderr)

    ca = trustme.CA()
    ca_file = work / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("localhost")
    cert_file, key_file = work / "upstream.crt", work / "upstream.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))

    token = secrets.token_urlsafe(24)
    env = {
        **os.environ,
        "BENCH_UPSTREAM_TOKEN": token,
        "IGRIS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "IGRIS_HOME": str(work / "home"),
        "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8",
    }  # fmt: skip (upstream on loopback)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(name, None)
    procs: list[Proc] = []
    targets: dict[str, Target] = {}
    with started(procs):
        up_port = _free_port()
        upstream = f"https://localhost:{up_port}/mcp"
        code = _UPSTREAM.format(here=str(HERE), port=up_port, cert=str(cert_file),
                                key=str(key_file))  # fmt: skip
        up = Proc("upstream (TLS)", pin.wrap([PY, "-c", code], "load"), env,
                  work / "upstream.log")  # fmt: skip
        procs.append(up)
        _wait_tls(up, upstream, token, ca_file)

        bare_port = _free_port()
        bare = Proc("bare proxy", pin.wrap([PY, str(HERE / "bare_proxy.py"), "--port",
                    str(bare_port), "--upstream", upstream], "server"),
                    {**env, "SSL_CERT_FILE": str(ca_file)}, work / "bare.log")  # fmt: skip
        procs.append(bare)
        probe = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        _wait_http(bare, bare_port, "POST", "/mcp", probe, _PROBE)
        targets["bare proxy"] = Target(
            "bare proxy", bare_port, "/mcp", "Bearer ig_" + "x" * 40, proc=bare
        )

        store_url = f"sqlite:///{work / 'igris.db'}"
        key = asyncio.run(_bootstrap(store_url, env, upstream, token, ca.cert_pem.bytes().decode()))
        port = _free_port()
        gw = Proc("igris-mw", pin.wrap(
            [PY, "-m", "igris_mw.cli", "serve", "--store", store_url, "--port", str(port),
             "--log-level", "warning"], "server"),
            {**env, "IGRIS_UPSTREAM_CA_FILE": str(ca_file)}, work / "gateway.log",
        )  # fmt: skip
        procs.append(gw)
        gw_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for slug in (SLUG, CA_SLUG):
            _wait_http(gw, port, "POST", f"/v1/mcp/{slug}", gw_headers, _PROBE)
        targets["igris-mw, CA file"] = Target(
            "igris-mw, CA file", port, f"/v1/mcp/{SLUG}", f"Bearer {key}", store_url, gw
        )
        targets["igris-mw, connection CA"] = Target(
            "igris-mw, connection CA", port, f"/v1/mcp/{CA_SLUG}", f"Bearer {key}", None, gw
        )
        for rnd in range(args.rounds):
            for t in targets.values():
                print(f"round {rnd + 1}/{args.rounds}: {t.name}", file=sys.stderr)
                measure_load(wrk, t, args.duration, args.latency_duration)

    base = targets["bare proxy"]
    table = Table()
    for t in targets.values():
        for figure, values, baseline, unit, fmt in (
            ("req/s, 32 conns", t.rps, base.rps, "", "{:.0f}"),
            ("p50 ms, 1 conn", t.p50, base.p50, " ms", "{:.2f}"),
            ("p99 ms, 1 conn", t.p99, base.p99, " ms", "{:.2f}"),
        ):
            value, ref = _med(values), _med(baseline)
            table.add(
                f"{t.name}: {figure}",
                fmt.format(value) + unit,
                fmt.format(ref) + unit if t is not base else "",
                f"{value / ref:.2f}x" if t is not base and ref else "",
            )
    errors = sum(t.errors for t in targets.values())
    print()
    print(table.render())
    print(f"\nupstream over TLS (trustme CA), both proxies pool TLS connections; errors: {errors}")
    print(f"machine: {machine()}\npinning: {pin.describe()}; rounds: {args.rounds} (medians)")
    audit = [a for t in targets.values() for a in t.audit]
    if audit:
        print("audit (stored, completed, sent): " + "; ".join(
            f"{label} {s}/{c}/{n}" for label, s, c, n in audit))  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
