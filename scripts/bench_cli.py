#!/usr/bin/env python3
"""Benchmark: the CLI as whole processes against a running stack of 10 services.

`stackvisor status`, `ps`, `logs -n 20` and `down`, each run as a new process the way a
person or a script runs it: wall time from fork to exit and peak RSS (from wait4's
rusage), median of N runs each. `down` starts the stack again before each run, outside
the timing.

Goals: <= 80 ms and <= 25 MB each. For context the table starts with the interpreter
alone (`python -c pass` in the same environment: site-packages' `.pth` files included),
the floor under every command.

Usage: python scripts/bench_cli.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import IDLE, REPO, cli

COMMANDS = [("status",), ("ps",), ("logs", "-n", "20"), ("down",)]


def timed(args: tuple[str, ...], folder: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `stackvisor ARGS` (or of `python -c pass` for
    ARGS `("-c", "pass")`) as a process of its own."""
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
    argv = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "stackvisor", *args]
    began = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"stackvisor {' '.join(args)} exited {proc.returncode}")
    return took, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        folder = Path(tmp)
        (folder / "idle.py").write_text(IDLE)
        lines = [f"  s{i}:\n    command: {sys.executable} idle.py\n" for i in range(10)]
        stack = folder / "services.yaml"
        stack.write_text("services:\n" + "".join(lines))
        floor = [timed(("-c", "pass"), folder) for _ in range(args.runs)]
        rows = [("(interpreter)", statistics.median(t for t, _ in floor), max(m for _, m in floor))]
        try:
            for command in COMMANDS:
                samples = []
                for _ in range(args.runs):
                    if command == ("down",) or not samples:
                        up = cli("up", "-d", "--wait", "-f", str(stack))
                        if up.returncode != 0:
                            sys.exit(f"up failed: {up.stderr}")
                    samples.append(timed(command, folder))
                rows.append(
                    (" ".join(command), statistics.median(t for t, _ in samples), max(m for _, m in samples))
                )
        finally:
            cli("down", "-f", str(stack))
    print(f"{'command':<14} {'median':>9} {'peak RSS':>9}   (goal: <= 80 ms, <= 25 MB)")
    for name, seconds, rss in rows:
        print(f"{name:<14} {seconds * 1000:>6.0f} ms {rss:>6.1f} MB")


if __name__ == "__main__":
    main()
