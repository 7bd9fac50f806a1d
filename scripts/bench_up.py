#!/usr/bin/env python3
"""Benchmark: how much time stackvisor adds to bringing a stack up, and what it costs idle.

50 services in a 5-deep dependency graph, each a small TCP server that binds after a
known delay and is gated by `service_healthy`. Prints, from one run:
- time to all healthy (from the supervisor's "up" event to the last "healthy" event,
  both timestamped by the supervisor; the interpreter's own start is shown apart),
- the critical path (the longest chain of start delays),
- the overhead (difference and ratio),
- the supervisor's CPU (share of one core) and RSS over 10 s idle.

Targets: overhead <= 5% of the critical path or <= 150 ms; idle CPU <= 0.2% of a core;
RSS <= 60 MB.

Usage: python scripts/bench_up.py [--services 50] [--depth 5] [--idle 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import REPO, cpu_and_rss

# The delay is counted from the moment the process was created (from /proc), so the
# interpreter's own start-up is part of the known delay rather than of the overhead.
SERVER = """\
import os, socket, time
ticks = os.sysconf("SC_CLK_TCK")
started = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / ticks
age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
time.sleep(max(0.0, float(os.environ["DELAY"]) - age))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(16)
while True:
    c, _ = s.accept(); c.close()
"""


def make_stack(folder: Path, services: int, depth: int, seed: int) -> tuple[float, int]:
    """Write the stack; return its critical path in seconds and the first port used."""
    rng = random.Random(seed)
    per_level = services // depth
    # Below the kernel's ephemeral range (32768+), where a client connection's local
    # port could make a bind fail although nobody listens there.
    base = 20000 + rng.randrange(0, 12000)
    names: list[list[str]] = []
    delays: dict[str, float] = {}
    deps: dict[str, list[str]] = {}
    lines = ["settings: {stop_timeout: 2s}", "services:"]
    for level in range(depth):
        names.append([f"s{level}_{i}" for i in range(per_level)])
        for i, name in enumerate(names[level]):
            delays[name] = round(rng.uniform(0.2, 0.6), 3)
            deps[name] = rng.sample(names[level - 1], k=min(2, per_level)) if level else []
            port = base + level * per_level + i
            lines += [
                f"  {name}:",
                f"    command: {sys.executable} -S server.py",
                f"    port: {port}",
                f"    env: {{DELAY: '{delays[name]}'}}",
                "    healthcheck: {tcp: '127.0.0.1:${PORT}', interval: 30s}",
            ]
            if deps[name]:
                lines.append("    depends_on:")
                lines += [f"      {d}: {{condition: service_healthy}}" for d in deps[name]]
    (folder / "services.yaml").write_text("\n".join(lines) + "\n")
    (folder / "server.py").write_text(SERVER)
    finish: dict[str, float] = {}
    for level in names:
        for name in level:
            finish[name] = delays[name] + max((finish[d] for d in deps[name]), default=0.0)
    return max(finish.values()), base


def events(folder: Path) -> list[tuple[float, str, str | None, dict]]:
    db = folder / ".stackvisor" / "state.db"
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        try:
            rows = conn.execute("SELECT ts, kind, service, data FROM events ORDER BY id").fetchall()
        except sqlite3.OperationalError:
            return []
    return [(ts, kind, svc, json.loads(data)) for ts, kind, svc, data in rows]


def one_run(services: int, depth: int, idle: float, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="stackvisor-bench-") as tmp:
        folder = Path(tmp)
        critical, _ = make_stack(folder, services, depth, seed)
        env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
        launched = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "stackvisor", "up"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            healthy: dict[str, float] = {}
            up_at = None
            while len(healthy) < services:
                if time.monotonic() > deadline or proc.poll() is not None:
                    last: dict[str, str] = {}
                    for _, kind, svc, data in events(folder):
                        if kind == "state" and svc:
                            last[svc] = f"{data.get('new')} ({data.get('reason')})"
                    stuck = {k: v for k, v in last.items() if k not in healthy}
                    raise SystemExit(f"stack did not become healthy ({len(healthy)}/{services}): {stuck}")
                for ts, kind, svc, data in events(folder):
                    if kind == "stack" and data.get("event") == "up" and up_at is None:
                        up_at = ts
                    if kind == "state" and data.get("new") == "healthy" and svc:
                        healthy.setdefault(svc, ts)
                time.sleep(0.05)
            assert up_at is not None
            all_healthy = max(healthy.values()) - up_at
            time.sleep(1.0)  # let start-up work settle before measuring idle
            cpu, rss = cpu_and_rss(proc.pid, idle)
            startup = up_at - launched
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "critical": critical,
        "all_healthy": all_healthy,
        "overhead": all_healthy - critical,
        "ratio": all_healthy / critical,
        "cpu": cpu,
        "rss": rss,
        "startup": startup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        r = one_run(args.services, args.depth, args.idle, args.seed + run)
        results.append(r)
        print(
            f"run {run + 1}: critical path {r['critical'] * 1000:.0f} ms, all healthy after "
            f"{r['all_healthy'] * 1000:.0f} ms, overhead {r['overhead'] * 1000:+.0f} ms "
            f"({(r['ratio'] - 1) * 100:+.1f}%), idle CPU {r['cpu']:.3f}% of a core, RSS {r['rss']:.1f} MB, "
            f"interpreter start {r['startup'] * 1000:.0f} ms",
            flush=True,
        )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in results)

    overhead = med("overhead")
    print()
    print(f"services {args.services}, depth {args.depth}, {args.runs} runs (medians)")
    print(f"critical path        {med('critical') * 1000:8.0f} ms")
    print(f"all healthy after    {med('all_healthy') * 1000:8.0f} ms")
    print(
        f"overhead             {overhead * 1000:+8.0f} ms  ratio {med('ratio'):.3f}  "
        f"target <= 5% ({med('critical') * 50:.0f} ms) or <= 150 ms: "
        f"{'ok' if overhead <= max(0.15, 0.05 * med('critical')) else 'MISSED'}"
    )
    print(
        f"idle CPU             {med('cpu'):8.3f} % of a core  target <= 0.2%: "
        f"{'ok' if med('cpu') <= 0.2 else 'MISSED'}"
    )
    print(
        f"RSS                  {med('rss'):8.1f} MB  target <= 60 MB: "
        f"{'ok' if med('rss') <= 60 else 'MISSED'}"
    )
    print(f"interpreter start    {med('startup') * 1000:8.0f} ms (before the supervisor's first event)")


if __name__ == "__main__":
    main()
