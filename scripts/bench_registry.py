#!/usr/bin/env python3
"""Benchmark: the port registry's latency under contention, and what it adds to `up`.

1. allocate + release, timed together, by 4 processes at once (back to back unless
   `--pace`) against a registry that holds 1,000 live allocations packed in the range
   they allocate from (the worst case for lowest-first): p50, p99 and max over all of
   them (goal: p99 <= 5 ms).
2. The cost added to bringing up 50 services:
   - the registry work on a start's path, measured alone: 50 claims (one per service,
     what a supervisor does before each start) against the same 1,000 allocations;
   - `up -d --wait` of 50 small TCP servers with the registry and without one (a path
     it cannot open), run alternately, medians; the difference is within the
     machine's noise, the first figure is the one to read (goal: <= 2% of `up`).

Usage: python scripts/bench_registry.py [--ops 250] [--runs 5] [--services 50] [--pace 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import REPO, cli, end_everything, free_ports, pct

sys.path.insert(0, str(REPO))

from stackvisor.ports.registry import Registry
from stackvisor.system import procfs

TYPES = {"bench": (20000, 29999)}

ALLOCATOR = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from stackvisor.ports.registry import Registry
reg = Registry.open(Path(sys.argv[2]))
types = {"bench": (20000, 29999)}
took = []
pace = float(sys.argv[4])
for i in range(int(sys.argv[3])):
    time.sleep(pace)
    began = time.perf_counter()
    got, _ = reg.allocate(f"w{os.getpid()}-{i}", kind="bench", pid=os.getpid(), types=types)
    reg.release(got.id)
    took.append(time.perf_counter() - began)
print(json.dumps(took))
"""

SERVER = """\
import os, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(16)
while True:
    c, _ = s.accept(); c.close()
"""


def prefill(path: Path, count: int) -> None:
    reg = Registry.open(path)
    try:
        for i in range(count):
            reg.allocate(f"live{i}", kind="bench", pid=os.getpid(), types=TYPES)
    finally:
        reg.close()


def contention(path: Path, ops: int, pace: float = 0.0) -> list[float]:
    """Seconds of each allocate+release of 4 processes, each pausing `pace` between them."""
    argv = [sys.executable, "-c", ALLOCATOR, str(REPO), str(path), str(ops), str(pace)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE) for _ in range(4)]
    took: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            sys.exit("an allocator failed")
        took.extend(json.loads(out))
    return took


def claims(path: Path, services: int, rounds: int) -> list[float]:
    """Seconds for `services` claims (a stack's start), `rounds` times."""
    reg = Registry.open(path)
    me = (os.getpid(), procfs.create_time(os.getpid()))
    ports = free_ports(services)
    out = []
    try:
        for r in range(rounds):
            owner = f"/bench/{r}/services.yaml"
            began = time.perf_counter()
            for i, port in enumerate(ports):
                reg.claim(owner, f"s{i}", port, pid=me[0], pid_start=me[1])
            out.append(time.perf_counter() - began)
            reg.release_owner(owner)
    finally:
        reg.close()
    return out


def timed_up(folder: Path, registry: str) -> float:
    os.environ["STACKVISOR_REGISTRY"] = registry
    began = time.perf_counter()
    up = cli("up", "-d", "--wait", "-f", str(folder / "services.yaml"))
    took = time.perf_counter() - began
    if up.returncode != 0:
        sys.exit(f"up failed: {up.stderr}")
    end_everything(folder, folder / "services.yaml", [])
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=250, help="allocate+release per process")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument(
        "--pace", type=float, default=0.0, help="seconds each allocator waits between operations"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        folder = Path(tmp)
        path = folder / "reg" / "ports.db"
        prefill(path, 1000)
        took = contention(path, args.ops, args.pace)
        ms = [t * 1000 for t in took]
        paced = f", {args.pace * 1000:g} ms apart" if args.pace else ", back to back"
        print(f"allocate+release, 4 processes x {args.ops}{paced}, 1,000 live allocations:")
        figures = f"p50 {pct(ms, 50):.2f} ms   p99 {pct(ms, 99):.2f} ms   max {max(ms):.2f} ms"
        print(f"  {figures}   (goal: p99 <= 5 ms)")

        claim_s = statistics.median(claims(path, args.services, args.runs))
        stack = folder / "stack"
        stack.mkdir()
        (stack / "srv.py").write_text(SERVER)
        lines = [
            f"  s{i}:\n    command: {sys.executable} srv.py\n    port: {port}\n"
            "    healthcheck: {tcp: '${PORT}', interval: 1s}\n"
            for i, port in enumerate(free_ports(args.services))
        ]
        (stack / "services.yaml").write_text("services:\n" + "".join(lines))
        with_registry, without = [], []
        for run in range(args.runs):  # alternately, each side first every other time
            for side in ("with", "without") if run % 2 == 0 else ("without", "with"):
                if side == "with":
                    with_registry.append(timed_up(stack, str(path)))
                else:
                    without.append(timed_up(stack, "/proc/no-registry-here/ports.db"))
        up_with, up_without = statistics.median(with_registry), statistics.median(without)
        print(f"\n{args.services} services, medians of {args.runs}:")
        share = claim_s / up_with * 100
        print(
            f"  registry work on the start path: {claim_s * 1000:.1f} ms = {share:.2f}% of up (goal: <= 2%)"
        )
        diff = (up_with / up_without - 1) * 100
        both = f"{up_with:.3f} s with the registry, {up_without:.3f} s without"
        print(f"  up -d --wait: {both} ({diff:+.1f}%, noise)")


if __name__ == "__main__":
    main()
