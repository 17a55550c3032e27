"""CPU per audit event of ``seal_event_json`` (keyed), optionally against another ``chain.py``.

    python benchmarks/seal_event.py                          # this checkout
    python benchmarks/seal_event.py --old /path/to/chain.py  # that one too, interleaved

The two must give byte-identical text and an equal sealed event (checked
first, keyed and unkeyed); then 12 alternating blocks of 4,000 seals of a
typical gateway event, CPU time, median and min per event.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import statistics
import time
from collections.abc import Callable
from typing import Any

from igris_mw._audit import chain
from igris_mw._audit.events import new_event_id
from igris_mw.models import AuditEvent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", help="another chain.py to compare with")
    args = parser.parse_args()
    variants: dict[str, Callable[..., Any]] = {"this": chain.seal_event_json}
    key = chain.derive_audit_key("k1", b"x" * 32)
    event = AuditEvent(
        id=new_event_id(), timestamp=datetime.datetime.now(datetime.UTC).replace(microsecond=0),
        connection="bench", method="POST", path="/v1/mcp/bench", rpc_method="tools/call",
        tool="echo", status=200, latency_ms=0.412, bytes_in=90, bytes_out=60,
        credential_version=1, api_key_id="key_abc",
    )  # fmt: skip
    if args.old:
        spec = importlib.util.spec_from_file_location("igris_mw._audit.chain_old", args.old)
        assert spec is not None
        assert spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        for k in (key, None):
            first = old.seal_event_json(event, None, k)
            assert first == chain.seal_event_json(event, None, k)
            assert old.seal_event_json(event, first[0], k) == chain.seal_event_json(
                event, first[0], k
            )
        variants["old"] = old.seal_event_json
    previous, _ = chain.seal_event_json(event, None, key)
    results: dict[str, list[float]] = {name: [] for name in variants}
    n = 4000
    for block in range(12):
        order = list(variants.items())
        for name, fn in order if block % 2 else reversed(order):
            start = time.process_time()
            for _ in range(n):
                fn(event, previous, key)
            results[name].append((time.process_time() - start) / n * 1e6)
    for name, values in results.items():
        print(f"{name}: median {statistics.median(values):.2f} us, min {min(values):.2f} us"
              " of CPU per event")  # fmt: skip


if __name__ == "__main__":
    main()
