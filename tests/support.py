"""Shared pieces of the tests: stack files, small child programs, waiting with deadlines.

Children here are real Python programs; nothing of os or subprocess is mocked.
Everything a helper starts is ended by the helper, also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent

# A TCP (and minimal HTTP) server on $PORT that binds after $DELAY seconds; /health
# answers 200 while the file $SICK does not exist.
SERVER = textwrap.dedent(
    """
    import os, socket, sys, time, threading
    time.sleep(float(os.environ.get("DELAY", "0")))
    port = int(os.environ["PORT"])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(64)
    print(f"ready on {port}", flush=True)
    sick = os.environ.get("SICK")
    def answer(c):
        try:
            c.recv(1024)
            ok = not (sick and os.path.exists(sick))
            c.sendall(b"HTTP/1.0 " + (b"200 OK" if ok else b"503 Sick") + b"\\r\\nContent-Length: 0\\r\\n\\r\\n")
        except OSError:
            pass
        finally:
            c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=answer, args=(c,), daemon=True).start()
    """
)


def write_program(folder: Path, name: str, code: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(code))
    return path


def write_stack(folder: Path, text: str, *, server: bool = True) -> Path:
    if server:
        write_program(folder, "server.py", SERVER)
    path = folder / "services.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; its value, or AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


async def async_wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_tree(pid: int) -> None:
    """End a process and everything below it, whatever state the test left it in."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


def kill_marked(root: Path) -> None:
    """End every child recorded in the stack's state.db that is still the same process."""
    db_path = root / ".stackvisor" / "state.db"
    if not db_path.exists():
        return
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        try:
            rows = db.execute("SELECT pid, create_time FROM children").fetchall()
        except sqlite3.OperationalError:
            return
    for pid, started in rows:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if abs(psutil.Process(pid).create_time() - started) < 0.05:
                os.killpg(pid, signal.SIGKILL)


def children_rows(root: Path) -> list[dict[str, Any]]:
    db_path = root / ".stackvisor" / "state.db"
    if not db_path.exists():
        return []
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM children ORDER BY id")]
        except sqlite3.OperationalError:  # the supervisor is still creating its tables
            return []


def state_events(root: Path, service: str | None = None) -> list[dict[str, Any]]:
    import json

    db_path = root / ".stackvisor" / "state.db"
    if not db_path.exists():
        return []
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        try:
            rows = db.execute("SELECT ts, kind, service, data FROM events ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # the supervisor is still creating its tables
            return []
    out = [{"ts": ts, "kind": k, "service": s, **json.loads(d)} for ts, k, s, d in rows]
    return [e for e in out if service is None or e["service"] == service]


def cli(*args: str, cwd: Path, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stackvisor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        **kw,
    )


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    return env


@contextlib.contextmanager
def supervisor_process(root: Path, *args: str, stdout: Any = None) -> Iterator[subprocess.Popen[bytes]]:
    """`stackvisor up` as a real process; killed with all its children at the end."""
    log = open(root / "supervisor.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "up", *args],
        cwd=root,
        stdout=stdout if stdout is not None else log,
        stderr=subprocess.STDOUT if stdout is None else log,
        env=child_env(),
    )
    try:
        yield proc
    finally:
        kill_tree(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        kill_marked(root)
        log.close()


@contextlib.asynccontextmanager
async def running_stack(path: Path, *services: str, lease: Any = None, **kw: Any) -> AsyncIterator[Any]:
    """A Supervisor in this process, stopped (and its children ended) at the end."""
    from stackvisor.app import serve
    from stackvisor.config import load_config
    from stackvisor.runtime.logs import Console
    from stackvisor.runtime.supervisor import Supervisor

    config = load_config(path)
    sup = Supervisor(config, console=Console(None, colour=False), **kw)
    task = asyncio.create_task(serve(sup, list(services), lease=lease))
    try:
        yield sup
    finally:
        sup.request_stop("test over")
        try:
            await asyncio.wait_for(asyncio.shield(task), 20)
        except BaseException:
            for runner in sup.runners.values():
                runner.kill_now()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        kill_marked(path.parent)


async def until_state(sup: Any, name: str, *states: str, timeout: float = 10.0) -> None:
    ok = await sup.bus.wait_until(lambda: str(sup.runners[name].state) in states, timeout)
    assert ok, f"{name} is {sup.runners[name].state} ({sup.runners[name].reason}), wanted {states}"


def transitions(sup: Any, name: str) -> list[str]:
    return [e.data["new"] for e in sup.bus.backlog if e.kind == "state" and e.service == name]
