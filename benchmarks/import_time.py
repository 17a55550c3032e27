"""``import igris_mw`` in a fresh interpreter: median of several runs.

Two figures: the cumulative time ``python -X importtime`` charges to the
``igris_mw`` package (what the target is about), and the wall-clock time of
``python -c "import igris_mw"`` minus that of ``python -c "pass"`` (the
same thing as a user feels it, interpreter start-up taken out).

    python benchmarks/import_time.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _importtime_ms(python: str, module: str) -> float:
    out = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    for line in reversed(out.stderr.splitlines()):
        # "import time:  self [us] |  cumulative | imported package"
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == module:
            return int(parts[1]) / 1000
    raise RuntimeError(f"no importtime line for {module}")


def _wall_ms(python: str, code: str) -> float:
    started = time.perf_counter()
    subprocess.run([python, "-c", code], check=True)
    return (time.perf_counter() - started) * 1000


def measure(python: str = sys.executable, runs: int = 7) -> dict[str, float]:
    cumulative = [_importtime_ms(python, "igris_mw") for _ in range(runs)]
    bare = [_wall_ms(python, "pass") for _ in range(runs)]
    full = [_wall_ms(python, "import igris_mw") for _ in range(runs)]
    return {
        "importtime_ms": statistics.median(cumulative),
        "wall_ms": statistics.median(full) - statistics.median(bare),
        "interpreter_ms": statistics.median(bare),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    print(json.dumps(measure(runs=parser.parse_args().runs)))


if __name__ == "__main__":
    main()
