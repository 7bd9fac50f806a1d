"""What the tests share: stack files and child programs, the CLI in this process and as a
real process, supervisors in this process and detached, port holders, waiting with deadlines.

Children here are real programs; nothing of os, psutil or subprocess is mocked. Whatever a
fixture or helper starts, it ends, also when the test fails. Waits poll with a deadline or
wait for an event; none sleeps for a fixed time to let something happen.

Tests import the plain helpers (`from conftest import write_stack, wait_for`) and take the
factories that own processes as fixtures (`spawn`, `start`, `detached`, `up_process`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from stackvisor.paths import StackPaths
from stackvisor.system import procfs

REPO = Path(__file__).resolve().parent.parent

# Every stack the tests start shares one port registry per test process (as a user's
# stacks share theirs), never the real ~/.local/state of whoever runs the suite.
_REGISTRY = Path(tempfile.mkdtemp(prefix="stackvisor-registry-"))
os.environ["STACKVISOR_REGISTRY"] = str(_REGISTRY / "ports.db")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_REGISTRY, ignore_errors=True)


_registries = iter(range(1, 1 << 30))


@pytest.fixture(autouse=True)
def _registry_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty registry: what one test allocated (held by the
    test process itself) must not decide what the next one is handed."""
    monkeypatch.setenv("STACKVISOR_REGISTRY", str(_REGISTRY / f"ports-{next(_registries)}.db"))


# ----- child programs ---------------------------------------------------------------------

# A command that runs until it is ended.
SLEEP = "python3 -c 'import time; time.sleep(300)'"

# A TCP (and minimal HTTP) server on $PORT that binds once the file $GO exists (when
# given) and then after $DELAY seconds; it answers 200 while the file $SICK does not exist.
SERVER = """
import os, socket, sys, time, threading
go = os.environ.get("GO")
while go and not os.path.exists(go):
    time.sleep(0.01)
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

# `python3 stubborn.py SIGTERM [SIGINT]`: ignores the signals named, says so, runs on.
STUBBORN = """
import signal, sys, time
for name in sys.argv[1:]:
    signal.signal(getattr(signal, name), signal.SIG_IGN)
print("ignoring " + " ".join(sys.argv[1:]), flush=True)
while True:
    time.sleep(1)
"""

# `python3 family.py PIDFILE`: starts a sleeper in its own process group and one that
# escaped into a session of its own, writes "<same group pid> <escaped pid>" to PIDFILE
# (atomically), says "spawned" and runs on.
FAMILY = """
import os, subprocess, sys, time
pidfile = sys.argv[1]
sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
same_group = subprocess.Popen(sleeper)
escaped = subprocess.Popen(sleeper, start_new_session=True)
with open(pidfile + ".tmp", "w") as fh:
    fh.write(f"{same_group.pid} {escaped.pid}")
os.rename(pidfile + ".tmp", pidfile)
print("spawned", flush=True)
time.sleep(300)
"""

PROGRAMS = {"server.py": SERVER, "stubborn.py": STUBBORN, "family.py": FAMILY}


def write_program(folder: Path, name: str, code: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(code))
    return path


def write_stack(folder: Path, text: str, *, programs: bool = True) -> Path:
    """`services.yaml` in `folder`, with the programs above beside it unless told not to."""
    if programs:
        for name, code in PROGRAMS.items():
            write_program(folder, name, code)
    path = folder / "services.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def save(path: Path, text: str) -> None:
    """Save like an editor: a temporary file renamed over the original."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)


def read_pids(pidfile: Path) -> list[int]:
    """The pids a program wrote to `pidfile`, once it has written them."""
    wait_for(pidfile.exists)
    return [int(p) for p in pidfile.read_text().split()]


# ----- ports ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """`n` different ports that were free a moment ago."""
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


# ----- waiting ----------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll until `predicate()` is truthy; its value, or AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


async def async_wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """`wait_for` for async tests: the event loop runs on while it polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


async def exit_status(proc: subprocess.Popen[Any], timeout: float = 5.0) -> int:
    """`proc.wait(timeout)` for async tests: the event loop runs on meanwhile."""
    await async_wait_for(lambda: proc.poll() is not None, timeout)
    return proc.returncode


# ----- processes --------------------------------------------------------------------------


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_tree(pid: int, timeout: float = 5.0) -> None:
    """End a process and everything below it, whatever state the test left it in.

    Done once each is gone or a zombie: an orphan's zombie waits for a pid 1 that may
    never reap it, and a zombie of ours is reaped by whoever started it."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    deadline = time.monotonic() + timeout
    while any(procfs.running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.005)


def kill_marked(root: Path) -> None:
    """End what the stack's supervisors started: the group of every child recorded in its
    state.db that is still the same process, and every process that carries one of their
    markers in its environment (a grandchild whose parent died with the supervisor); and
    whatever is left in the stack's cgroups, which are removed."""
    from stackvisor.system import cgroups
    from stackvisor.system.signals import SignalGate

    for folder in cgroups.leftovers(StackPaths.at(root).cgroup_name):
        cgroups.kill(folder, SignalGate())
        cgroups.remove(folder)
    rows = children_rows(root)
    for row in rows:
        if row["started"] is not None and procfs.same_process(row["pid"], row["started"]):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(row["pid"], signal.SIGKILL)
    # "<supervisor instance>/<service>/<n>": the instance names all of one supervisor's.
    for instance in {row["marker"].split("/")[0] for row in rows if row["marker"]}:
        for proc in procfs.marked(f"{instance}/", prefix=True):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _rows(root: Path, query: str) -> list[sqlite3.Row]:
    path = StackPaths.at(root).state_db
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        try:
            return db.execute(query).fetchall()
        except sqlite3.OperationalError:  # the supervisor is still creating its tables
            return []


def children_rows(root: Path) -> list[dict[str, Any]]:
    """Every child the stack's supervisors recorded in state.db, oldest first."""
    return [dict(r) for r in _rows(root, "SELECT * FROM children ORDER BY id")]


def service_pid(root: Path, name: str) -> int:
    """The newest recorded pid of `name`, once it has one."""
    rows = wait_for(lambda: [r for r in children_rows(root) if r["service"] == name])
    return int(rows[-1]["pid"])


def state_events(root: Path, service: str | None = None) -> list[dict[str, Any]]:
    """The events recorded in state.db, each with its data spread out."""
    rows = _rows(root, "SELECT ts, kind, service, data FROM events ORDER BY id")
    out = [{"ts": ts, "kind": k, "service": s, **json.loads(d)} for ts, k, s, d in rows]
    return [e for e in out if service is None or e["service"] == service]


def reached(root: Path, service: str, state: str) -> bool:
    """Whether state.db records `service` entering `state`."""
    return any(e.get("new") == state for e in state_events(root, service) if e["kind"] == "state")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder every user may enter, for stacks whose services run as another
    user: pytest's tmp_path sits in a folder private to us (0700)."""
    folder = Path(tempfile.mkdtemp(prefix="stackvisor-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----- the CLI ----------------------------------------------------------------------------


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`stackvisor ARGS` in this process, from `cwd`; its exit status and output.

    For every command whose process is not what the test is about: it saves the
    interpreter start of a real one. Not for `run` (it handles signals) nor the
    foreground `up` (it runs a supervisor here); `up -d` is fine: the supervisor it
    starts is a real process of its own."""
    from stackvisor.cli import main

    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext(),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse refusing the arguments
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["stackvisor", *args], code, out.getvalue(), err.getvalue())


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_COLOR"] = "1"
    return env


def cli_process(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`stackvisor ARGS` as a real process, where the process boundary is the point."""
    return subprocess.run(
        [sys.executable, "-m", "stackvisor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


def supervisor_pid(root: Path) -> int | None:
    """The pid of the supervisor holding the stack's lock, None when none runs."""
    from stackvisor.control.sockets import StackLock

    return StackLock(StackPaths.at(root).lock).holder()


def client(root: Path, timeout: float = 30.0) -> Any:
    """A client of the stack's control socket."""
    from stackvisor.control.client import Client

    return Client(StackPaths.at(root).socket, timeout)


def end_stack(root: Path, pid: int | None = None) -> None:
    """`down`, and then whatever is left of the supervisor (`pid`, or the one running
    now) and its children. A supervisor that `up -d` started from this process is our
    child: it is reaped here, so no zombie of it outlives the test."""
    pid = pid or supervisor_pid(root)
    cli("down", "--timeout", "10", cwd=root)
    if pid:
        kill_tree(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    kill_marked(root)


@pytest.fixture
def detached() -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """`detached(root, *ARGS, wait=True)`: `up -d [--wait] ARGS` in `root`; its result.
    Every stack started so is brought down after the test, whatever happened."""
    stacks: list[tuple[Path, int | None]] = []

    def up(root: Path, *args: str, wait: bool = True) -> subprocess.CompletedProcess[str]:
        result = cli("up", *(["-d", "--wait"] if wait else ["-d"]), *args, cwd=root)
        stacks.append((root, supervisor_pid(root)))
        return result

    try:
        yield up
    finally:
        for root, pid in stacks:
            end_stack(root, pid)


@pytest.fixture
def up_process() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """`up_process(root, *ARGS, stdout=None)`: `stackvisor up ARGS` as a real process in
    the foreground (output to `root/supervisor.out` unless `stdout` is given). Killed
    with all its children after the test."""
    started: list[tuple[Path, subprocess.Popen[bytes], Any]] = []

    def up(root: Path, *args: str, stdout: Any = None) -> subprocess.Popen[bytes]:
        log = open(root / "supervisor.out", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stackvisor", "up", *args],
            cwd=root,
            stdout=stdout if stdout is not None else log,
            stderr=subprocess.STDOUT if stdout is None else log,
            env=child_env(),
        )
        started.append((root, proc, log))
        return proc

    try:
        yield up
    finally:
        for root, proc, log in started:
            kill_tree(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            kill_marked(root)
            log.close()


# ----- a supervisor in this process -------------------------------------------------------


@contextlib.asynccontextmanager
async def running_stack(path: Path, *services: str, lease: Any = None, **kw: Any) -> AsyncIterator[Any]:
    """A Supervisor in this process, with its control socket and file watcher, stopped
    (and its children ended) at the end."""
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


async def until(sup: Any, predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Until `predicate()` holds, checked after every event of the supervisor."""
    assert await sup.bus.wait_until(predicate, timeout), f"condition not met within {timeout}s: {predicate}"


async def until_ready(sup: Any, timeout: float = 10.0) -> None:
    """Until every selected service is healthy, running or completed (what `up --wait` waits for)."""

    def ready() -> bool:
        selected = [s for s in sup.status()["services"] if s["selected"]]
        return all(s["state"] in ("healthy", "running", "completed") for s in selected)

    await until(sup, ready, timeout)


def watched_inodes() -> set[int]:
    """The inodes this process watches with inotify."""
    found: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            text = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:  # closed meanwhile
            continue
        found |= {int(ino, 16) for ino in re.findall(r"^inotify wd:\d+ ino:([0-9a-f]+) ", text, re.MULTILINE)}
    return found


async def watching(folder: Path, timeout: float = 10.0) -> None:
    """Until the file watcher in this process watches `folder`: an edit from now on is seen."""
    await async_wait_for(lambda: os.stat(folder).st_ino in watched_inodes(), timeout)


def transitions(sup: Any, name: str) -> list[str]:
    return [e.data["new"] for e in sup.bus.backlog if e.kind == "state" and e.service == name]


def event_time(sup: Any, name: str, state: str) -> float:
    """When `name` first entered `state`, by the supervisor's events."""
    return next(
        e.ts for e in sup.bus.backlog if e.kind == "state" and e.service == name and e.data["new"] == state
    )


# ----- processes started by the tests themselves ------------------------------------------

Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start() -> Iterator[Start]:
    """`start(argv, own_group=False, **popen_kw)`: Popen; every process (and the group of
    those in a session of their own) is killed and reaped after the test."""
    started: list[tuple[subprocess.Popen[str], bool]] = []

    def run(argv: list[str], *, own_group: bool = False, **kw: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, start_new_session=own_group, text=True, **kw)
        started.append((proc, own_group))
        return proc

    try:
        yield run
    finally:
        for proc, own_group in started:
            # proc is not reaped yet, so its pid (and group number) is still its own.
            if own_group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    stream.close()


# A port holder: binds, listens, prints `ready <port> <pid>` and waits. Its words must
# not look like a development server or a process pattern of the tests: the tests decide
# that through extra arguments.
HOLDER = r"""
import os, signal, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
if os.environ.get("HOLDER_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
print("ready", s.getsockname()[1], os.getpid(), flush=True)
while True:
    time.sleep(3600)
"""

SYSTEM_PYTHON = "/usr/bin/python3"  # readable by other users, unlike a venv under /root
_PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    # Holders that are grandchildren (behind a shell or runuser) would otherwise be
    # orphaned to a pid 1 that may never reap them; as subreaper we can.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap(pid: int, timeout: float = 3.0) -> None:
    def gone() -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] == pid
        except ChildProcessError:  # not (yet) ours: done once it no longer exists
            return not os.path.exists(f"/proc/{pid}")

    with contextlib.suppress(AssertionError):
        wait_for(gone, timeout)


@dataclass
class Holder:
    proc: subprocess.Popen[str]
    port: int
    pid: int  # the process that holds the socket (may be a child of proc)
    own_group: bool

    def alive(self) -> bool:
        """True while the holding process exists and is not a zombie."""
        return alive(self.pid)


def _read_ready(proc: subprocess.Popen[str], timeout: float) -> tuple[int, int]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("holder did not report ready")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"holder exited early: {proc.stderr.read() if proc.stderr else ''}")
            if line.startswith("ready"):
                _, port, pid = line.split()
                return int(port), int(pid)


class HolderFactory:
    """Starts processes that hold a port; `cleanup` kills every one, and its group."""

    def __init__(self) -> None:
        self.holders: list[Holder] = []
        self.subreaper = False

    def __call__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *extra: str,
        user: str | None = None,
        shell_parent: bool = False,
        own_group: bool = True,
        ignore_term: bool = False,
    ) -> Holder:
        python = SYSTEM_PYTHON if user else sys.executable
        argv = [python, "-c", HOLDER, host, str(port), *extra]
        if shell_parent:
            # A shell that keeps running with the server as its child: one process
            # group of two processes.
            quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
            argv = ["/bin/sh", "-c", f"{quoted} & wait"]
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        if (shell_parent or user) and not self.subreaper:
            # The holder is a grandchild: when its parent goes first, it is ours to reap.
            _subreaper(True)
            self.subreaper = True
        env = dict(os.environ)
        if ignore_term:
            env["HOLDER_IGNORE_TERM"] = "1"
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=own_group,
            env=env,
        )
        holder = Holder(proc, 0, proc.pid, own_group)
        self.holders.append(holder)
        holder.port, holder.pid = _read_ready(proc, 10.0)
        return holder

    def cleanup(self) -> None:
        for holder in self.holders:
            # The group takes the children along (a shell's server, runuser's python);
            # proc itself is not reaped yet, so its pid cannot have been reused.
            if holder.own_group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(holder.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                holder.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                holder.proc.wait(timeout=5)
            if holder.pid != holder.proc.pid:
                _reap(holder.pid)
            for stream in (holder.proc.stdout, holder.proc.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def spawn() -> Iterator[HolderFactory]:
    """`spawn(host, port, *extra_args, user=, shell_parent=, own_group=, ignore_term=)`:
    a real process holding a real port; all of them killed after the test."""
    factory = HolderFactory()
    try:
        yield factory
    finally:
        try:
            factory.cleanup()
        finally:
            if factory.subreaper:
                _subreaper(False)


ClockStep = Callable[[float], None]


@pytest.fixture
def clock_step(monkeypatch: pytest.MonkeyPatch) -> ClockStep:
    """`clock_step(seconds)`: the wall clock steps (as NTP does on a running machine), as
    every reader of the kernel's boot time sees it from now on: /proc/stat's `btime` is
    derived from the wall clock, so psutil's `create_time` and `procfs.create_time` of one
    process move by whole seconds. Only the boot time is shifted, never the clock itself."""
    from psutil import _pslinux  # the module whose boot_time psutil's create_time adds

    def step(seconds: float) -> None:
        psutil_boot, our_boot = _pslinux.boot_time, procfs.boot_time
        monkeypatch.setattr(_pslinux, "boot_time", lambda: psutil_boot() + seconds)
        monkeypatch.setattr(procfs, "boot_time", lambda: our_boot() + seconds)

    return step


@pytest.fixture
def base() -> Iterator[Path]:
    """A stack of its own in a real cgroup; whatever is left in it is killed and removed."""
    import uuid

    from stackvisor.system import cgroups
    from stackvisor.system.signals import SignalGate

    stack = f"test-{uuid.uuid4().hex[:12]}"
    tracking = cgroups.probe(stack, mode="auto")
    if tracking.kind != "cgroup" or tracking.base is None:
        pytest.skip(f"cgroup v2 is not writable here: {tracking.reason}")
    try:
        yield tracking.base
    finally:
        for path in [*cgroups.leftovers(stack), tracking.base]:
            cgroups.kill(path, SignalGate())
            cgroups.remove(path)
        assert not tracking.base.exists()
