#!/usr/bin/env python3
"""Benchmark: stackvisor side by side with honcho, circus and supervisord (and the bare
shell floor), bringing up and stopping N small Python TCP servers.

The peers are installed into a throwaway virtual environment from the package index:
only this benchmark needs them, never the package. Each orchestrator gets the same N
servers (one port each) in its own configuration format and is run in the foreground
as a person would. Per orchestrator and size, alternately, medians of `--runs`:
- up: from launch until every port accepts a connection;
- stop: from SIGTERM to the orchestrator (to the bare shell's process group) until every
  server and the orchestrator are gone;
- idle CPU (share of one core, over `--idle` seconds) and RSS of the orchestrator's main
  process (honcho also runs a Python process per service; those are not counted);
- left: processes still alive one second after the stop (must be 0).
Then stackvisor's ratio to the best peer per column.

Usage: python scripts/bench_peers.py [--sizes 50,200] [--runs 3] [--idle 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from benchkit import REPO, free_ports

SERVER = """\
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept(); c.close()
"""

PEERS = ("honcho", "circus", "supervisor")


def install_peers(venv: Path) -> Path:
    """A virtual environment with the peers; its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run([*pip, *PEERS], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"could not install {', '.join(PEERS)}: {done.stderr.strip()[-400:]}")
    return venv / "bin"


def configs(folder: Path, ports: list[int], bin_dir: Path) -> dict[str, list[str]]:
    """Each orchestrator's command line, its configuration written into `folder`."""
    py = sys.executable
    (folder / "srv.py").write_text(SERVER)
    names = [f"s{i}" for i in range(len(ports))]
    (folder / "bare.sh").write_text("".join(f"{py} srv.py {p} &\n" for p in ports) + "wait\n")
    (folder / "Procfile").write_text(
        "".join(f"{n}: {py} srv.py {p}\n" for n, p in zip(names, ports, strict=True))
    )
    (folder / "circus.ini").write_text(
        "[circus]\ncheck_delay = 5\nendpoint = ipc://circus.sock\npubsub_endpoint = ipc://circus-pub.sock\n"
        "statsd = false\n\n"
        + "".join(
            f"[watcher:{n}]\ncmd = {py} srv.py {p}\nworking_dir = {folder}\nnumprocesses = 1\n\n"
            for n, p in zip(names, ports, strict=True)
        )
    )
    (folder / "supervisord.conf").write_text(
        f"[supervisord]\nnodaemon = true\nlogfile = {folder}/supervisord.log\n"
        f"pidfile = {folder}/supervisord.pid\n"
        f"[unix_http_server]\nfile = {folder}/supervisor.sock\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        + "".join(
            f"[program:{n}]\ncommand = {py} srv.py {p}\ndirectory = {folder}\nstartsecs = 0\n"
            for n, p in zip(names, ports, strict=True)
        )
    )
    (folder / "services.yaml").write_text(
        "services:\n"
        + "".join(
            f"  {n}: {{command: {py} srv.py {p}, port: {p}}}\n" for n, p in zip(names, ports, strict=True)
        )
    )
    return {
        "bare shell": ["sh", "bare.sh"],
        "honcho": [str(bin_dir / "honcho"), "start"],
        "circus": [str(bin_dir / "circusd"), "circus.ini"],
        "supervisord": [str(bin_dir / "supervisord"), "-c", "supervisord.conf"],
        "stackvisor": [sys.executable, "-m", "stackvisor", "up"],
    }


def accepting(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def servers(ports: list[int]) -> list[psutil.Process]:
    """The processes listening on `ports` (found once, to watch them go)."""
    wanted = set(ports)
    found = {}
    for conn in psutil.net_connections("tcp4"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port in wanted and conn.pid:
            with contextlib.suppress(psutil.Error):
                found[conn.pid] = psutil.Process(conn.pid)
    return list(found.values())


def one_run(name: str, argv: list[str], folder: Path, ports: list[int], idle: float) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1")
    began = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if not until(lambda: all(accepting(p) for p in ports), 120):
            sys.exit(f"{name}: not every port accepted within 120 s")
        up = time.perf_counter() - began
        served = servers(ports)
        main = psutil.Process(proc.pid)  # the orchestrator itself, as `ps` shows it
        cpu_before = sum(main.cpu_times()[:2])
        time.sleep(idle)
        cpu_after = sum(main.cpu_times()[:2])
        rss = main.memory_info().rss / 2**20
        stopped = time.perf_counter()
        # The bare shell's floor: what a person's script does, SIGTERM to its group.
        (os.killpg if name == "bare shell" else os.kill)(proc.pid, signal.SIGTERM)
        everything = [main, *served]
        until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in everything), 60)
        stop = time.perf_counter() - stopped
        proc.wait(10)
        time.sleep(1)
        left = sum(1 for p in everything if p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
        return {
            "up": up,
            "stop": stop,
            "idle CPU %": 100 * (cpu_after - cpu_before) / idle,
            "RSS MB": rss,
            "left": left,
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for p in servers(ports):
            with contextlib.suppress(psutil.Error):
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,200")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        bin_dir = install_peers(Path(tmp) / "venv")
        for size in (int(s) for s in args.sizes.split(",")):
            folder = Path(tmp) / f"stack-{size}"
            folder.mkdir()
            ports = free_ports(size)
            commands = configs(folder, ports, bin_dir)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
            for run in range(args.runs):
                for name, argv in commands.items():  # alternately, so drift hits everyone
                    results[name].append(one_run(name, argv, folder, ports, args.idle))
                print(f"size {size}, run {run + 1} done", file=sys.stderr)
            report(size, results)


def report(size: int, results: dict[str, list[dict[str, float]]]) -> None:
    columns = ["up", "stop", "idle CPU %", "RSS MB", "left"]
    medians = {
        name: {c: statistics.median(r[c] for r in runs) for c in columns} for name, runs in results.items()
    }
    print(f"\n{size} services (medians of {len(next(iter(results.values())))} runs)")
    print(f"{'':<14}" + "".join(f"{c:>12}" for c in columns))
    for name, row in medians.items():
        print(
            f"{name:<14}"
            + "".join(f"{row[c]:>12.3f}" if c in ("up", "stop") else f"{row[c]:>12.1f}" for c in columns)
        )
    peers = [n for n in medians if n not in ("stackvisor", "bare shell")]
    ours = medians["stackvisor"]
    ratios = []
    for column in ("up", "stop", "RSS MB"):
        best = min(medians[p][column] for p in peers)
        ratios.append(f"{column} {ours[column] / best:.2f}x" if best else f"{column} -")
    print("stackvisor / best peer: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
