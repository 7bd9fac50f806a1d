#!/usr/bin/env python3
"""Benchmark: what starting on demand and proxying cost.

1. First request to an on-demand service, minus the service's own start: the same
   server started directly with a socket already bound (`LISTEN_FDS`), timed from the
   spawn to its first answer, is the service's own part; the rest is ours (goal:
   <= 20 ms). For `socket: inherit` and `socket: proxy`; the service is sent back to
   idle (`stop`) between runs.
2. The proxy against a direct connection to the same server on loopback: a 1 GB
   transfer (goal: >= 80% of direct throughput) and 2,000 one-byte round trips (goal:
   <= 0.2 ms added at p50), once as a stack runs it by default, `proxy_forwarding: kernel`
   (the kernel carries a serving service's connections where the supervisor may:
   `runtime/forwarding.py`), and once with `relay` (every byte through the supervisor),
   which is what a supervisor without CAP_NET_ADMIN does. The relay's transfer is
   measured twice: as the scheduler places everything, and with both ends on
   CPU 0 and the supervisor on CPU 1 (the ends get the same core either way; the proxy a
   core of its own, as on a machine with one to spare).

Usage: python scripts/bench_activation.py [--runs 15] [--gigabytes 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import REPO, cli, end_everything, free_ports, pct

sys.path.insert(0, str(REPO))

from stackvisor.control.client import Client
from stackvisor.paths import StackPaths

# Answers "pid?" with its pid; after "sink\n" reads to the end and answers the count;
# after "ping\n" echoes each byte. On fd 3 when handed one, else binds $PORT.
SERVER = """\
import os, socket, threading
if os.environ.get("LISTEN_FDS") == "1":
    s = socket.socket(fileno=3)
else:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(128)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = c.recv(5)
    if head == b"sink\\n":
        n, buf = 0, bytearray(1 << 20)
        while got := c.recv_into(buf):
            n += got
        c.sendall(str(n).encode())
    elif head == b"ping\\n":
        while b := c.recv(1):
            c.sendall(b)
    else:
        c.sendall(str(os.getpid()).encode())
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def first_answer(port: int) -> float:
    """Seconds from connecting to the first answer (the connection waits in the backlog)."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"pid?\n")
        conn.recv(32)
    return time.perf_counter() - began


def own_start(folder: Path) -> float:
    """Seconds from spawning the server with a bound socket to its first answer."""
    (port,) = free_ports(1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    duplicated = sock.fileno() != 3  # the child takes it as fd 3
    if duplicated:
        os.dup2(sock.fileno(), 3, inheritable=True)
    else:
        os.set_inheritable(3, True)
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-S", "srv.py"], cwd=folder, pass_fds=(3,), env={"LISTEN_FDS": "1"}
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(b"pid?\n")
            conn.recv(32)
        return time.perf_counter() - began
    finally:
        proc.kill()
        proc.wait()
        if duplicated:
            os.close(3)
        sock.close()


MODES = ("inherit", "proxy")


def first_requests(folder: Path, runs: int) -> None:
    """Each round measures the service's own start and the first request to each idle
    on-demand service, one after the other, so that the machine's noise of the moment
    weighs on all three alike; "ours" is the median of the rounds' differences."""
    ports = dict(zip(MODES, free_ports(len(MODES)), strict=True))
    stack = folder / "on-demand.yaml"
    stack.write_text(
        "services:\n"
        + "".join(
            f"  {mode}:\n    command: {sys.executable} -S srv.py\n    port: {port}\n"
            f"    socket: {mode}\n    start: on_demand\n"
            for mode, port in ports.items()
        )
    )
    if cli("up", "-d", "--wait", "-f", str(stack)).returncode != 0:
        sys.exit("up failed for the on-demand services")
    api = Client(StackPaths.at(folder).socket, 30)
    own: list[float] = []
    took: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for _ in range(runs):
            own.append(own_start(folder))
            for mode, port in ports.items():
                took[mode].append(first_answer(port))
                api.post(f"/v1/services/{mode}/stop")  # back to idle
                deadline = time.monotonic() + 30
                while api.get(f"/v1/services/{mode}")["state"] != "idle" and time.monotonic() < deadline:
                    time.sleep(0.01)
    finally:
        end_everything(folder, stack, [])
    alone = statistics.median(own) * 1000
    print(f"first request, medians of {runs} rounds (the service's own start: {alone:.1f} ms):")
    for mode in MODES:
        first = statistics.median(took[mode]) * 1000
        ours = statistics.median(t - o for t, o in zip(took[mode], own, strict=True)) * 1000
        print(f"  {mode:<8} {first:6.1f} ms, ours {ours:5.1f} ms (goal: <= 20 ms)")


def transfer(port: int, size: int) -> float:
    """Seconds to push `size` bytes to the sink and hear how many arrived."""
    chunk = b"x" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        began = time.perf_counter()
        conn.sendall(b"sink\n")
        left = size
        while left > 0:
            conn.sendall(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        conn.shutdown(socket.SHUT_WR)
        got = int(conn.recv(32))
        took = time.perf_counter() - began
    if got != size:
        sys.exit(f"the sink got {got} bytes of {size}")
    return took


def round_trips(port: int, count: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"ping\n")
        out = []
        for _ in range(count):
            began = time.perf_counter()
            conn.sendall(b"!")
            conn.recv(1)
            out.append(time.perf_counter() - began)
    return out


def transfers(direct: int, proxied: int, size: int, runs: int) -> tuple[float, float]:
    """Median seconds of `size` bytes sent directly and through the proxy, alternately."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        times[0].append(transfer(direct, size))
        times[1].append(transfer(proxied, size))
    return statistics.median(times[0]), statistics.median(times[1])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads started later inherit their creator's)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cpus)


def proxy_against_direct(folder: Path, size: int, runs: int, forwarding: str) -> None:
    """`forwarding`: "kernel" (the kernel carries the connections where it may) or "relay"."""
    (public,) = free_ports(1)
    stack = folder / f"proxy-{forwarding}.yaml"
    stack.write_text(
        f"settings:\n  proxy_forwarding: {forwarding}\n"
        f"services:\n  api:\n    command: {sys.executable} -S srv.py\n    port: {public}\n    socket: proxy\n"
    )
    if cli("up", "-d", "--wait", "-f", str(stack)).returncode != 0:
        sys.exit("up failed for the proxy")
    try:
        api = Client(StackPaths.at(folder).socket, 30)
        first_answer(public)  # up, and its internal port known
        deadline = time.monotonic() + 10
        while (status := api.get("/v1/services/api"))["forwarding"] != "kernel" and forwarding == "kernel":
            if time.monotonic() > deadline:
                print("\n(the kernel does not forward here: the relay carries everything)")
                break
            time.sleep(0.01)
        internal, via = status["internal_port"], status["forwarding"]
        gb = size / 1e9
        print(f"\n{gb:g} GB through the proxy ({via}), medians of {runs}:")
        d, p = transfers(internal, public, size, runs)
        print(f"  direct {gb / d:.2f} GB/s, proxied {gb / p:.2f} GB/s: {d / p * 100:.0f}% (goal: >= 80%)")
        if (os.cpu_count() or 1) >= 2 and via == "relay":
            # Both ends on CPU 0, the supervisor on CPU 1: the ends have the same core in
            # both measurements and the proxy one of its own, as on a machine with a core
            # to spare. What is left of the difference is the relay's own limit.
            supervisor = int(api.get("/v1/status")["pid"])
            pin(supervisor, {1})
            pin(status["pid"], {0})
            pin(os.getpid(), {0})
            try:
                d, p = transfers(internal, public, size, runs)
            finally:
                everywhere = set(range(os.cpu_count() or 1))
                for pid in (supervisor, status["pid"], os.getpid()):
                    pin(pid, everywhere)
            print(f"  the ends on one core, the supervisor on another: direct {gb / d:.2f} GB/s,")
            print(f"  proxied {gb / p:.2f} GB/s: {d / p * 100:.0f}%")
        rt_direct = [t * 1000 for t in round_trips(internal, 2000)]
        rt_proxied = [t * 1000 for t in round_trips(public, 2000)]
        added = pct(rt_proxied, 50) - pct(rt_direct, 50)
        print("2,000 one-byte round trips (ms):")
        print(f"  direct p50 {pct(rt_direct, 50):.3f} p99 {pct(rt_direct, 99):.3f}")
        print(f"  proxied p50 {pct(rt_proxied, 50):.3f} p99 {pct(rt_proxied, 99):.3f}")
        print(f"  added at p50: {added:.3f} ms (goal: <= 0.2 ms)")
    finally:
        end_everything(folder, stack, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-activation-") as tmp:
        folder = Path(tmp)
        (folder / "srv.py").write_text(SERVER)
        first_requests(folder, args.runs)
        for forwarding in ("kernel", "relay"):
            proxy_against_direct(folder, int(args.gigabytes * 1e9), max(3, args.runs // 3), forwarding)


if __name__ == "__main__":
    main()
