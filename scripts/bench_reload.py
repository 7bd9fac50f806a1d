#!/usr/bin/env python3
"""Benchmark: how fast an edit of services.yaml reaches the service, and what watching costs.

(a) Reload latency. A stack of several services, one of them `target`: a small TCP
    server on a fixed port that binds DELAY after its own process start (counted from
    /proc/self/stat) and, on every connection, sends its pid and the generation GEN
    from its environment. The stack is started with `stackvisor up -d --wait`; then,
    EDITS times, the target's `env: {GEN: ...}` is changed in services.yaml the way
    editors save (write a temporary file, os.replace it over the original), and the
    port is poll-connected every POLL seconds until a server of the NEW generation
    answers. Measured per edit: time from the os.replace to that connection.
    The server's own start time (fork/exec, interpreter start, DELAY, bind) is
    measured apart, by starting the same server directly DIRECT times and polling it
    the same way; the overhead is the reload time minus that (median of the direct
    starts). The supervisor's events (state.db) split the reload time into: detect
    (write to the old process told to stop), stop+spawn (to the new process started)
    and the new process coming up. After every edit, `stackvisor status --json` must
    show the same pids for every other service (one of them depends on `target`
    without `restart: true`) and a new pid for `target`.
    Target: overhead <= 300 ms (median).

(b) Watching at rest. The same stack in a folder that also holds FILES files in DIRS
    nested folders; after `up -d --wait` and SETTLE seconds, the supervisor's CPU time
    (user + system, psutil) over IDLE seconds, as % of one core, and its RSS. The same
    figure for the stack of (a), without the extra files, is shown for comparison.
    (CPU times come in clock ticks of 10 ms: over 10 s the resolution is 0.1%.)
    Target: <= 0.5% of a core.

Usage: python scripts/bench_reload.py [--edits 10] [--delay 0] [--direct 10] [--files 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from benchkit import IDLE, cli, cpu_and_rss, end_everything, free_ports, pct

TARGET_OVERHEAD_MS = 300.0
TARGET_CPU = 0.5

# Binds DELAY seconds after the process was created (from /proc, so the interpreter's
# start-up counts towards the delay); sends "pid generation script_start bound" to
# every client, both times on CLOCK_BOOTTIME.
TARGET = """\
import os, socket, time
script = time.clock_gettime(time.CLOCK_BOOTTIME)
ticks = os.sysconf("SC_CLK_TCK")
created = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / ticks
time.sleep(max(0.0, float(os.environ["DELAY"]) - (script - created)))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(64)
bound = time.clock_gettime(time.CLOCK_BOOTTIME)
hello = f"{os.getpid()} {os.environ['GEN']} {script:.6f} {bound:.6f}\\n".encode()
while True:
    c, _ = s.accept()
    try:
        c.sendall(hello)
    except OSError:
        pass
    c.close()
"""


SERVER = """\
import os, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(16)
while True:
    c, _ = s.accept(); c.close()
"""


def stack_text(target_port: int, server_port: int, delay: float, gen: int) -> str:
    py = sys.executable
    return f"""\
name: benchreload
settings: {{stop_timeout: 2s}}
services:
  target:
    command: ["{py}", "-S", "target.py"]
    port: {target_port}
    env: {{DELAY: '{delay}', GEN: '{gen}'}}
    healthcheck: {{tcp: '127.0.0.1:${{PORT}}', interval: 60s}}
  server:
    command: {py} -S server.py
    port: {server_port}
    healthcheck: {{tcp: '127.0.0.1:${{PORT}}', interval: 60s}}
  client:
    command: {py} -S idle.py
    depends_on:
      target: {{condition: service_healthy}}
  idle1:
    command: {py} -S idle.py
  idle2:
    command: {py} -S idle.py
  idle3:
    command: {py} -S idle.py
    depends_on: [server]
"""


def write_programs(folder: Path) -> None:
    (folder / "target.py").write_text(TARGET)
    (folder / "server.py").write_text(SERVER)
    (folder / "idle.py").write_text(IDLE)


def status(stack_file: Path) -> dict:
    done = cli("status", "--json", "-f", str(stack_file), timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"status exited {done.returncode}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def up(stack_file: Path) -> float:
    t0 = time.monotonic()
    done = cli("up", "-d", "--wait", "-f", str(stack_file))
    if done.returncode != 0:
        raise SystemExit(f"up failed ({done.returncode}): {done.stderr.strip()}")
    return time.monotonic() - t0


@dataclass
class Hello:
    pid: int
    gen: str
    script: float  # CLOCK_BOOTTIME when the server's first line ran
    bound: float  # CLOCK_BOOTTIME when it listened
    connected: float  # perf_counter when our connect succeeded


def knock(port: int) -> Hello | None:
    """One connection attempt: the answering server's hello, or None (refused, reset)."""
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect(("127.0.0.1", port))
        connected = time.perf_counter()
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    finally:
        s.close()
    pid, gen, script, bound = data.decode().split()
    return Hello(int(pid), gen, float(script), float(bound), connected)


def wait_for(port: int, gen: str, poll: float, timeout: float) -> Hello | None:
    """Poll-connect until a server of generation `gen` answers."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        hello = knock(port)
        if hello is not None and hello.gen == gen:
            return hello
        time.sleep(poll)
    return None


def direct_starts(folder: Path, port: int, delay: float, count: int, poll: float) -> list[float]:
    """Seconds from Popen to the first accepted connection, starting the server directly."""
    times = []
    for i in range(count):
        env = dict(os.environ, PORT=str(port), DELAY=str(delay), GEN=f"direct{i}")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-S", "target.py"], cwd=folder, env=env)
        try:
            hello = wait_for(port, f"direct{i}", poll, 10.0)
            if hello is None:
                raise SystemExit("the server did not start when run directly")
            times.append(hello.connected - t0)
        finally:
            proc.terminate()
            proc.wait()
        time.sleep(0.05)
    return times


def target_events(folder: Path, since: float) -> list[tuple[float, str]]:
    """(ts, new state) of `target` from state.db, from `since` (wall clock) on."""
    db = folder / ".stackvisor" / "state.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute(
            "SELECT ts, data FROM events WHERE kind = 'state' AND service = 'target' AND ts >= ? ORDER BY id",
            (since,),
        ).fetchall()
    return [(ts, json.loads(data).get("new")) for ts, data in rows]


def wait_healthy(stack_file: Path, name: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = status(stack_file)
        state = {s["name"]: s["state"] for s in doc["services"]}
        if state.get(name) == "healthy" or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def part_reload(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="stackvisor-bench-") as tmp:
        folder = Path(tmp)
        write_programs(folder)
        target_port, server_port = free_ports(2)
        stack_file = folder / "services.yaml"
        known: list[psutil.Process] = []

        direct = direct_starts(folder, target_port, args.delay, args.direct, args.poll)
        own = statistics.median(direct)
        print(
            f"direct start of the server (Popen to first accepted connection), {args.direct} runs: "
            f"median {own * 1000:.1f} ms, min {min(direct) * 1000:.1f}, max {max(direct) * 1000:.1f} "
            f"(DELAY {args.delay * 1000:.0f} ms, counted from its process start)",
            flush=True,
        )
        stack_file.write_text(stack_text(target_port, server_port, args.delay, 0))
        try:
            up(stack_file)
            doc = wait_healthy(stack_file, "target")
            sup = psutil.Process(doc["pid"])
            known = [sup, *sup.children(recursive=True)]
            pids = {s["name"]: s["pid"] for s in doc["services"]}
            time.sleep(1.0)
            base_cpu, base_rss = cpu_and_rss(doc["pid"], args.idle)
            print(
                f"supervisor at rest, {len(pids)} services, no extra files: CPU {base_cpu:.3f}% of a core, "
                f"RSS {base_rss:.1f} MB",
                flush=True,
            )
            totals, detects, respawns, comes_up, failures = [], [], [], [], []
            for edit in range(1, args.edits + 1):
                gen = str(edit)
                text = stack_text(target_port, server_port, args.delay, edit)
                tmp_file = stack_file.with_name(stack_file.name + ".tmp")
                tmp_file.write_text(text)
                wall = time.time()
                t_write = time.perf_counter()
                os.replace(tmp_file, stack_file)
                hello = wait_for(target_port, gen, args.poll, 20.0)
                if hello is None:
                    failures.append(f"edit {edit}: no server of generation {gen} within 20 s")
                    print(f"edit {edit:2d}: no new server within 20 s", flush=True)
                    continue
                total = hello.connected - t_write
                accepted_wall = wall + total
                doc = wait_healthy(stack_file, "target")
                now = {s["name"]: s["pid"] for s in doc["services"]}
                moved = [n for n in pids if n != "target" and now.get(n) != pids[n]]
                if moved:
                    failures.append(f"edit {edit}: pid changed for {', '.join(moved)}")
                if now.get("target") != hello.pid or hello.pid == pids["target"]:
                    failures.append(
                        f"edit {edit}: target pid {now.get('target')} in status, {hello.pid} answered, "
                        f"{pids['target']} before"
                    )
                pids["target"] = now.get("target")
                events = target_events(folder, wall)
                stopping = next((ts for ts, new in events if new == "stopping"), None)
                starting = next((ts for ts, new in events if new == "starting"), None)
                totals.append(total)
                parts = ""
                if stopping is not None and starting is not None:
                    detects.append(stopping - wall)
                    respawns.append(starting - stopping)
                    comes_up.append(accepted_wall - starting)
                    parts = (
                        f"detect {detects[-1] * 1000:6.1f}, stop+spawn {respawns[-1] * 1000:6.1f}, "
                        f"new process to accepted {comes_up[-1] * 1000:6.1f}"
                    )
                moved_note = " pids: " + ", ".join(moved) if moved else ""
                print(
                    f"edit {edit:2d}: new server accepted {total * 1000:7.1f} ms after the write, "
                    f"overhead {(total - own) * 1000:+7.1f} ms ({parts}){moved_note}",
                    flush=True,
                )
                time.sleep(args.gap)
        finally:
            end_everything(folder, stack_file, known)
    if not totals:
        raise SystemExit("no edit reached the service")
    overheads = [t - own for t in totals]
    return {
        "own": own,
        "total_p50": statistics.median(totals),
        "total_p90": pct(totals, 90),
        "over_p50": statistics.median(overheads),
        "over_p90": pct(overheads, 90),
        "over_max": max(overheads),
        "detect": statistics.median(detects) if detects else float("nan"),
        "respawn": statistics.median(respawns) if respawns else float("nan"),
        "comes_up": statistics.median(comes_up) if comes_up else float("nan"),
        "edits": len(totals),
        "failures": failures,
        "base_cpu": base_cpu,
        "base_rss": base_rss,
    }


def make_tree(folder: Path, files: int, dirs: int) -> None:
    per_dir = -(-files // dirs)
    made = 0
    for d in range(dirs):
        # Nested: tree/aNN/dNNN, ten top-level folders holding the rest.
        sub = folder / "tree" / f"a{d % 10:02d}" / f"d{d:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(per_dir):
            if made == files:
                return
            (sub / f"f{f:03d}.py").write_text(f"X = {made}\n")
            made += 1


def part_watch(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="stackvisor-bench-") as tmp:
        folder = Path(tmp)
        write_programs(folder)
        make_tree(folder, args.files, args.dirs)
        target_port, server_port = free_ports(2)
        stack_file = folder / "services.yaml"
        stack_file.write_text(stack_text(target_port, server_port, args.delay, 0))
        known: list[psutil.Process] = []
        try:
            up_seconds = up(stack_file)
            doc = wait_healthy(stack_file, "target")
            sup = psutil.Process(doc["pid"])
            known = [sup, *sup.children(recursive=True)]
            time.sleep(args.settle)
            cpu, rss = cpu_and_rss(doc["pid"], args.idle)
            threads = sup.num_threads()
        finally:
            end_everything(folder, stack_file, known)
    return {"cpu": cpu, "rss": rss, "up": up_seconds, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("--edits", type=int, default=10, help="edits of the target's env (default 10)")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="the server binds DELAY s after its start (default 0)"
    )
    parser.add_argument(
        "--direct", type=int, default=10, help="direct starts to time the server (default 10)"
    )
    parser.add_argument(
        "--poll", type=float, default=0.002, help="seconds between connect attempts (default 0.002)"
    )
    parser.add_argument(
        "--gap", type=float, default=0.5, help="seconds between an edit's end and the next (default 0.5)"
    )
    parser.add_argument("--files", type=int, default=10_000, help="files in the watched tree (default 10000)")
    parser.add_argument("--dirs", type=int, default=100, help="folders they are spread over (default 100)")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds before measuring at rest (default 5)"
    )
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds of CPU measurement at rest (default 10)"
    )
    parser.add_argument("--skip-reload", action="store_true", help="only part (b)")
    parser.add_argument("--skip-watch", action="store_true", help="only part (a)")
    args = parser.parse_args()

    if not args.skip_reload:
        print("(a) reload latency", flush=True)
        r = part_reload(args)
        ms = 1000
        print()
        print(f"edits measured           {r['edits']} of {args.edits}")
        print(
            f"write -> new server      median {r['total_p50'] * ms:7.1f} ms  "
            f"p90 {r['total_p90'] * ms:7.1f} ms"
        )
        print(f"server's own start       median {r['own'] * ms:7.1f} ms (direct starts)")
        print(
            f"overhead                 median {r['over_p50'] * ms:7.1f} ms  "
            f"p90 {r['over_p90'] * ms:7.1f} ms  "
            f"max {r['over_max'] * ms:7.1f} ms  target <= {TARGET_OVERHEAD_MS:.0f} ms: "
            f"{'ok' if r['over_p50'] * ms <= TARGET_OVERHEAD_MS else 'MISSED'}"
        )
        print(
            f"  of which (medians)     detect {r['detect'] * ms:.1f} ms, "
            f"stop+spawn {r['respawn'] * ms:.1f} ms, "
            f"new process to accepted {r['comes_up'] * ms:.1f} ms"
        )
        if r["failures"]:
            print("other services' pids    CHANGED or target wrong:")
            for line in r["failures"]:
                print(f"  {line}")
        else:
            print("other services' pids     unchanged after every edit, target got a new pid each time: ok")
        print(
            f"at rest without the tree CPU {r['base_cpu']:.3f}% of a core, RSS {r['base_rss']:.1f} MB",
            flush=True,
        )
    if not args.skip_watch:
        print()
        print(f"(b) watching {args.files} files in {args.dirs} folders at rest", flush=True)
        w = part_watch(args)
        print(f"up -d --wait             {w['up']:7.2f} s")
        print(
            f"supervisor CPU at rest   {w['cpu']:7.3f} % of a core over {args.idle:g} s  "
            f"target <= {TARGET_CPU} %: {'ok' if w['cpu'] <= TARGET_CPU else 'MISSED'}"
        )
        print(f"supervisor RSS           {w['rss']:7.1f} MB, {w['threads']} threads")


if __name__ == "__main__":
    main()
