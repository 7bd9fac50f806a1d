#!/usr/bin/env python3
"""Benchmark: latency of `GET /v1/status` on the control socket of a 50-service stack.

A stack of idle services (most of them a sleeping interpreter, a few small TCP servers
with a tcp healthcheck on a long interval) is started with `stackvisor up -d --wait`.
One persistent HTTP/1.1 keep-alive connection over the unix socket
(.stackvisor/control.sock beside the stack file) then sends `GET /v1/status` at a
fixed rate (open loop: request i is due at start + i / rate; a late response delays
the next send, and that delay is counted). Two latencies are recorded per request,
both up to the last byte of the body:
- from its scheduled time (includes any queueing behind a slow earlier response and
  the pacing jitter of this process: what a client on a fixed schedule sees),
- from its send time (the server's service time plus the socket round trip).
Every body is checked (status 200, JSON with every service) after its time is taken.

Prints, per run and as medians over runs: p50, p90, p99 and max of both latencies,
the achieved rate, errors, and the supervisor's CPU while serving.

Target: p99 <= 5 ms (from the scheduled time).

Usage: python scripts/bench_api.py [--services 50] [--tcp 5] [--rate 200] [--seconds 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchkit import IDLE, cli, end_everything, free_ports, pct

TARGET_P99_MS = 5.0


SERVER = """\
import os, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(16)
while True:
    c, _ = s.accept(); c.close()
"""


def make_stack(folder: Path, services: int, tcp: int) -> Path:
    tcp = min(tcp, services)
    ports = free_ports(tcp)
    lines = ["name: benchapi", "settings: {stop_timeout: 2s}", "services:"]
    for i in range(services):
        name = f"svc{i:03d}"
        if i < tcp:
            lines += [
                f"  {name}:",
                f"    command: {sys.executable} -S server.py",
                f"    port: {ports[i]}",
                "    healthcheck: {tcp: '127.0.0.1:${PORT}', interval: 60s}",
            ]
        else:
            lines += [f"  {name}:", f"    command: {sys.executable} -S idle.py"]
    path = folder / "services.yaml"
    path.write_text("\n".join(lines) + "\n")
    (folder / "idle.py").write_text(IDLE)
    (folder / "server.py").write_text(SERVER)
    return path


class UnixHTTP:
    """A minimal HTTP/1.1 client over one keep-alive AF_UNIX connection."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.connects = 0

    def connect(self) -> None:
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        # The path stays short: the stack lives in a fresh temporary folder.
        sock.connect(str(self.path))
        self.sock = sock
        self.buf = b""
        self.connects += 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _recv(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        self.buf += chunk

    def get(self, target: str) -> tuple[int, bytes]:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._recv()
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
        status_line, *header_lines = head.split("\r\n")
        status = int(status_line.split()[1])
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buf) < length:
                self._recv()
            body, self.buf = self.buf[:length], self.buf[length:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        else:
            raise ConnectionError("response without a length")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def _chunked(self) -> bytes:
        parts = []
        while True:
            while (end := self.buf.find(b"\r\n")) < 0:
                self._recv()
            size = int(self.buf[:end].split(b";")[0], 16)
            self.buf = self.buf[end + 2 :]
            while len(self.buf) < size + 2:
                self._recv()
            parts.append(self.buf[:size])
            self.buf = self.buf[size + 2 :]
            if size == 0:
                return b"".join(parts)


def wait_until(when: float) -> None:
    """Sleep to just before `when`, then spin: pacing jitter of a few microseconds."""
    left = when - time.perf_counter()
    if left > 0.0005:
        time.sleep(left - 0.0004)
    while time.perf_counter() < when:
        pass


def load(client: UnixHTTP, rate: float, seconds: float, services: int) -> dict[str, float]:
    count = int(rate * seconds)
    from_slot: list[float] = []
    from_send: list[float] = []
    errors = 0
    last_error = ""
    start = time.perf_counter() + 0.05
    last_done = start
    for i in range(count):
        slot = start + i / rate
        wait_until(slot)
        sent = time.perf_counter()
        try:
            status, body = client.get("/v1/status")
        except (OSError, ValueError, IndexError) as exc:
            errors += 1
            last_error = f"{type(exc).__name__}: {exc}"
            client.close()
            continue
        done = time.perf_counter()
        last_done = done
        try:
            ok = status == 200 and len(json.loads(body)["services"]) == services
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            errors += 1
            last_error = f"status {status}: {body[:200]!r}"
            continue
        from_slot.append((done - slot) * 1000)
        from_send.append((done - sent) * 1000)
    if not from_slot:
        raise SystemExit(f"every request failed ({last_error})")
    if last_error:
        print(f"  last error: {last_error}", file=sys.stderr)
    result = {"requests": count, "errors": errors, "rate": len(from_slot) / (last_done - start)}
    for name, values in (("slot", from_slot), ("send", from_send)):
        for q in (50, 90, 99):
            result[f"{name}_p{q}"] = pct(values, q)
        result[f"{name}_max"] = max(values)
    return result


def one_run(services: int, tcp: int, rate: float, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="stackvisor-bench-") as tmp:
        folder = Path(tmp)
        stack_file = make_stack(folder, services, tcp)
        known: list[psutil.Process] = []
        client = UnixHTTP(folder / ".stackvisor" / "control.sock")
        try:
            t0 = time.monotonic()
            up = cli("up", "-d", "--wait", "-f", str(stack_file))
            if up.returncode != 0:
                raise SystemExit(f"up failed ({up.returncode}): {up.stderr.strip()}")
            up_seconds = time.monotonic() - t0
            _, body = client.get("/v1/status")
            doc = json.loads(body)
            sup = psutil.Process(doc["pid"])
            known = [sup, *sup.children(recursive=True)]
            time.sleep(1.0)  # let the last start-up work settle
            for _ in range(50):  # warm-up, not measured
                client.get("/v1/status")
            cpu0 = sup.cpu_times()
            w0 = time.monotonic()
            result = load(client, rate, seconds, services)
            cpu1 = sup.cpu_times()
            elapsed = time.monotonic() - w0
            result["cpu"] = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed * 100
            result["connects"] = client.connects
            result["up"] = up_seconds
            result["bytes"] = len(body)
            return result
        finally:
            client.close()
            end_everything(folder, stack_file, known)


def describe(r: dict[str, float]) -> str:
    return (
        f"from scheduled p50 {r['slot_p50']:.2f} p90 {r['slot_p90']:.2f} p99 {r['slot_p99']:.2f} "
        f"max {r['slot_max']:.2f} ms | from send p50 {r['send_p50']:.2f} p90 {r['send_p90']:.2f} "
        f"p99 {r['send_p99']:.2f} max {r['send_max']:.2f} ms | {r['rate']:.1f} req/s, "
        f"{r['errors']:.0f} errors, supervisor CPU {r['cpu']:.1f}% of a core"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--services", type=int, default=50, help="services in the stack (default 50)")
    parser.add_argument(
        "--tcp", type=int, default=5, help="of which TCP servers with a healthcheck (default 5)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the load (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="fresh stack per run (default 3)")
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        r = one_run(args.services, args.tcp, args.rate, args.seconds)
        results.append(r)
        print(f"run {run + 1}: {describe(r)}", flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in results)

    print()
    print(
        f"services {args.services} ({args.tcp} with a tcp healthcheck), {args.rate:g} req/s for "
        f"{args.seconds:g} s, {args.runs} runs (medians); body {med('bytes'):.0f} bytes; "
        f"one keep-alive connection per run"
    )
    print(f"{'latency (ms)':22} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for key, label in (("slot", "from scheduled time"), ("send", "from send time")):
        print(
            f"{label:22} {med(key + '_p50'):7.2f} {med(key + '_p90'):7.2f} "
            f"{med(key + '_p99'):7.2f} {med(key + '_max'):7.2f}"
        )
    p99 = med("slot_p99")
    print(
        f"p99 (from scheduled)   {p99:7.2f} ms  target <= {TARGET_P99_MS:g} ms: "
        f"{'ok' if p99 <= TARGET_P99_MS else 'MISSED'}"
    )
    print(f"achieved rate          {med('rate'):7.1f} req/s (asked {args.rate:g})")
    errors = sum(r["errors"] for r in results)
    total = sum(r["requests"] for r in results)
    print(f"errors                 {errors:7.0f} of {total:.0f} requests")
    print(f"supervisor CPU         {med('cpu'):7.1f} % of a core while serving")
    print(f"up -d --wait           {med('up'):7.2f} s")


if __name__ == "__main__":
    main()
