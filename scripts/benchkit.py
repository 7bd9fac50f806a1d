"""What the benchmark scripts share: running this checkout's CLI, ports, cleanup, statistics.

Not a benchmark itself; `bench_*.py` import it from this folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
STACKVISOR = [sys.executable, "-m", "stackvisor"]
IDLE = "import time\ntime.sleep(10**6)\n"


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (the kernel's pick, held until all are chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """This checkout's `stackvisor`, whatever is installed."""
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
    return subprocess.run([*STACKVISOR, *args], env=env, capture_output=True, text=True, timeout=timeout)


def end_everything(folder: Path, stack_file: Path, known: list[psutil.Process]) -> None:
    """`stackvisor down`, then SIGKILL whatever of ours is still there."""
    try:
        done = cli("down", "-f", str(stack_file), "--timeout", "30", timeout=90)
        if done.returncode != 0:
            print(f"  down exited {done.returncode}: {done.stderr.strip()}", file=sys.stderr)
    except subprocess.TimeoutExpired:
        print("  down timed out", file=sys.stderr)
    left = {p.pid: p for p in known}
    for proc in psutil.process_iter(["cwd"]):
        with contextlib.suppress(psutil.Error, TypeError, ValueError):
            if proc.info["cwd"] and Path(proc.info["cwd"]).is_relative_to(folder):
                left[proc.pid] = proc
    left.pop(os.getpid(), None)
    for proc in left.values():
        with contextlib.suppress(psutil.Error):
            if proc.is_running():  # also checks the pid was not recycled
                print(f"  killing leftover pid {proc.pid} {proc.name()}", file=sys.stderr)
                proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(list(left.values()), timeout=5)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`, in the values' unit."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def cpu_and_rss(pid: int, seconds: float) -> tuple[float, float]:
    """(% of one core, RSS in MB) of `pid` over `seconds`."""
    proc = psutil.Process(pid)
    c0 = proc.cpu_times()
    t0 = time.monotonic()
    time.sleep(seconds)
    c1 = proc.cpu_times()
    elapsed = time.monotonic() - t0
    cpu = (c1.user + c1.system - c0.user - c0.system) / elapsed * 100
    return cpu, proc.memory_info().rss / 2**20
