#!/usr/bin/env python3
"""Benchmark: how long a large stack file takes to load and validate, and what it costs.

Writes a stack of N services (default 1,000), each with a command, a port, an env,
a healthcheck and a dependency on the one before it (so the graph checks walk a long
chain), then times:
  (a) `load_config` in this process (parse, interpolate, validate, whole-stack checks),
  (b) `stackvisor validate` as a whole command (interpreter start and imports included),
and the peak memory of (b). Prints medians over the runs.

Target: 1,000 services validate in under 1 s as a whole command.

    python scripts/bench_validate.py [--services 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import REPO, STACKVISOR

sys.path.insert(0, str(REPO))

from stackvisor.config import load_config


def stack(services: int) -> str:
    lines = ["services:"]
    for i in range(services):
        lines += [
            f"  svc{i}:",
            "    command: python -m http.server ${PORT} --bind 127.0.0.1",
            f"    port: {20000 + i}",
            "    env: {MODE: bench, LEVEL: '3'}",
            "    healthcheck: {tcp: '127.0.0.1:${PORT}', interval: 2s}",
        ]
        if i:
            lines.append(f"    depends_on: [svc{i - 1}]")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "services.yaml"
        path.write_text(stack(args.services))
        size = path.stat().st_size
        loads = []
        for _ in range(args.runs):
            began = time.perf_counter()
            config = load_config(path)
            loads.append(time.perf_counter() - began)
        assert len(config.services) == args.services
        env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
        commands = []
        peak_kb = 0
        for _ in range(args.runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            began = time.perf_counter()
            done = subprocess.run(
                [*STACKVISOR, "validate", "-f", str(path)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            commands.append(time.perf_counter() - began)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            peak_kb = max(peak_kb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    print(f"{args.services} services, {size / 1024:.0f} KB of YAML, {args.runs} runs (medians)")
    load = statistics.median(loads)
    print(f"  load_config in process:      {load * 1e3:7.1f} ms  (min {min(loads) * 1e3:.1f})")
    whole = statistics.median(commands)
    print(f"  stackvisor validate command: {whole * 1e3:7.1f} ms  (min {min(commands) * 1e3:.1f})")
    print(f"  peak memory of the command:  {peak_kb / 1024:7.1f} MB")
    print(f"  target: under 1 s as a whole command: {'met' if whole < 1.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
