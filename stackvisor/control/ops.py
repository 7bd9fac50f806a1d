"""What the CLI does with a stack that runs in the background: detach, wait, bring down.

Each function is one command's work, over the control socket and state.db, so
the CLI stays a parser and `run` can reuse `detach`, `wait_ready` and `down`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from stackvisor.config.interpolate import port_env
from stackvisor.control import sockets
from stackvisor.control.client import BadAnswer, Client
from stackvisor.errors import AlreadyRunning, ApiError, NotResponding, NotRunning, UnsafePath
from stackvisor.paths import StackPaths, stack_paths
from stackvisor.runtime.states import State
from stackvisor.runtime.status import ServiceStatus, StackStatus
from stackvisor.stackref import StackRef
from stackvisor.system import procfs
from stackvisor.system.files import dir_mode, open_append, own_dir, secure_dir

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig

READY = frozenset({State.HEALTHY, State.RUNNING, State.COMPLETED, State.IDLE, State.SCHEDULED})
BROKEN = frozenset({State.FAILED, State.EXITED})


Stack: TypeAlias = "StackConfig | StackRef"


def _ref(stack: Stack) -> StackRef:
    return stack if isinstance(stack, StackRef) else StackRef.of(stack)


def paths_of(stack: Stack) -> StackPaths:
    return _ref(stack).paths


def client_for(stack: Stack, timeout: float = 10.0, supervisor_pid: int | None = None) -> Client:
    return Client(_ref(stack).paths.socket, timeout, supervisor_pid)


def supervisor_pid(stack: Stack) -> int | None:
    return sockets.StackLock(_ref(stack).paths.lock).holder()


class DetachResult(NamedTuple):
    ok: bool
    pid: int | None = None
    message: str = ""
    code: int = 0


def detach(config: StackConfig, argv: Sequence[str], timeout: float = 30.0) -> DetachResult:
    """Start `stackvisor _supervise ARGV` in its own session; return once its socket answers."""
    import subprocess  # here: the commands that only ask a running stack do without it

    paths = stack_paths(config)
    out_path = paths.detached_output
    mode = config.settings.logs_mode
    try:
        secure_dir(paths.state_dir, 0o700)
        secure_dir(paths.logs, dir_mode(mode), adopt=paths.own_logs)
        fd = open_append(out_path, mode)
    except UnsafePath as exc:
        return DetachResult(False, None, str(exc), 1)
    holder = supervisor_pid(config)
    if holder is not None:
        os.close(fd)
        return DetachResult(False, holder, f"already running (pid {holder})", 1)
    with open(fd, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "stackvisor", "_supervise", "-f", str(config.path), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=config.root,
            close_fds=True,
        )
    client = client_for(config, timeout=2.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            holder = supervisor_pid(config)
            if holder is not None and holder != proc.pid:  # ours lost the lock to it
                return DetachResult(
                    False, holder, f"another `up` won the race: the stack is running (pid {holder})", 1
                )
            text = out_path.read_bytes()[start:].decode("utf-8", "replace").strip()
            text = text.removeprefix("stackvisor: ")  # the caller says who speaks
            return DetachResult(False, proc.pid, text or f"the supervisor exited with {code}", code or 1)
        answering = _answering_pid(client)
        if answering == proc.pid:
            return DetachResult(True, proc.pid)
        if answering is not None:
            # Another `up` started its supervisor first: ours gives up on the lock.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
            message = f"another `up` won the race: the stack is running (pid {answering})"
            return DetachResult(False, answering, message, 1)
        time.sleep(0.02)
    return DetachResult(False, proc.pid, f"the supervisor did not answer within {timeout:g}s", 1)


def is_stopped(pid: int) -> bool:
    """Is `pid` stopped (SIGSTOP, a debugger)? It then answers nothing until resumed."""
    return procfs.stopped(pid)


def _answering_pid(client: Client) -> int | None:
    """The pid of the supervisor answering on the socket, or None when none does yet."""
    try:
        status = client.get("/v1/status")
    except (NotRunning, NotResponding, ApiError, OSError, ValueError):
        return None
    pid = status.get("pid") if isinstance(status, dict) else None
    return pid if isinstance(pid, int) else None


class WaitResult(NamedTuple):
    ok: bool
    status: StackStatus | None
    broken: Sequence[ServiceStatus] = ()
    timed_out: bool = False
    stopped: str | None = None  # the stack was stopped before it was ready: why


def wait_ready(
    client: Client,
    names: Sequence[str] | None,
    timeout: float,
    progress: Callable[[StackStatus], None] | None = None,
) -> WaitResult:
    """Until every selected service is healthy, running (no healthcheck) or completed."""
    deadline = time.monotonic() + timeout
    status: StackStatus | None = None
    while True:
        try:
            status = client.get("/v1/status")
        except (NotRunning, ConnectionError, BadAnswer):
            # The supervisor went away while we asked (a `down`, a signal).
            return WaitResult(False, status, [], False, stopped="")
        assert status is not None
        if status.get("stopping"):
            return WaitResult(False, status, [], False, stopped=status.get("stop_reason") or "")
        services = [
            s for s in status["services"] if (s["name"] in names if names else s.get("selected", True))
        ]
        if progress is not None:
            progress(status)
        # A scheduled service's failed run is its own (in the history), not the stack's.
        broken = [s for s in services if s["state"] in BROKEN and "next_run" not in s]
        if broken:
            return WaitResult(False, status, broken)
        if all(s["state"] in READY for s in services):
            return WaitResult(True, status)
        if time.monotonic() > deadline:
            return WaitResult(False, status, [s for s in services if s["state"] not in READY], True)
        time.sleep(0.05)


def failure_report(client: Client, services: Sequence[ServiceStatus], lines: int = 20) -> str:
    out = []
    for svc in services:
        out.append(f"{svc['name']}: {svc['state']}{' - ' + svc['reason'] if svc.get('reason') else ''}")
        try:
            tail = client.get(f"/v1/services/{svc['name']}/logs?tail={lines}")
        except (ApiError, NotRunning, NotResponding, OSError):
            tail = ""
        out += [f"  {svc['name']} | {line}" for line in str(tail).splitlines()]
    return "\n".join(out)


def run_command(cmd: Sequence[str], env: dict[str, str], grace: float = 10.0) -> int:
    """Run `cmd` to its end; on Ctrl-C or SIGTERM pass it on, and leave nothing of it behind.

    The command stays in our process group (Ctrl-C reaches it as usual); what it
    starts is found afterwards by the marker in its environment, even in the
    background or in a session of its own. Exit codes follow the shell: 128+N
    for a death by signal N.
    """
    import subprocess

    from stackvisor.runtime.deadman import run_marker
    from stackvisor.runtime.process import die_with_parent
    from stackvisor.system.prelude import pdeathsig_launcher, resolve_program
    from stackvisor.system.signals import SignalGate

    gate = SignalGate()
    marker = run_marker(os.getpid())
    env = {**env, procfs.MARKER: marker}
    # CMD dies with us (PR_SET_PDEATHSIG), so even a SIGKILLed `run` leaves nothing:
    # the stack ends through --exit-with, CMD through this.
    argv = [resolve_program(cmd[0], None, env.get("PATH", os.defpath)), *cmd[1:]]
    launcher = pdeathsig_launcher()
    setup = None if launcher else functools.partial(die_with_parent, os.getpid())
    proc = subprocess.Popen([*launcher, *argv], env=env, preexec_fn=setup)  # noqa: PLW1509 - fallback
    try:
        try:
            code = proc.wait()
        except KeyboardInterrupt as exc:
            sig = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
            members = [proc.pid] + [p.pid for p in procfs.marked(marker)]
            if sig == signal.SIGINT:
                # The terminal's Ctrl-C already reached our own process group: a second
                # SIGINT would abort the command's own teardown. Only the others get it.
                members = [m for m in members if _pgid(m) != os.getpgrp()]
            for member in members:
                gate.send(member, sig, ours=True)
            try:
                code = proc.wait(grace)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                code = proc.wait()
            raise Terminated(128 + int(sig)) from None
    finally:
        gate.kill_all(procfs.marked(marker))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return 128 - code if code < 0 else code


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class Terminated(KeyboardInterrupt):
    """SIGTERM during `run`, carried like Ctrl-C; `code` is the exit status to use."""

    def __init__(self, code: int = 143) -> None:
        super().__init__(code)
        self.code = code


def port_environment(status: StackStatus) -> dict[str, str]:
    """`<NAME>_PORT` of each service that runs now, or waits idle for its first
    connection on its port (`start: on_demand`), with the port it has (not one in the
    file that somebody else may hold)."""
    reachable = [s for s in status["services"] if s["pid"] is not None or s["state"] == "idle"]
    return port_env({s["name"]: s["port"] for s in reachable})


class DownResult(NamedTuple):
    was_running: bool
    pid: int | None
    ended: list[str]
    killed: bool


def down(config: Stack, timeout: float) -> DownResult:
    """Stop the stack, wait for its supervisor to exit, and end what a dead one left.
    UnsafePath: the state folder is not ours (what it says names nothing to stop)."""
    own_dir(_ref(config).paths.state_dir)
    pid = supervisor_pid(config)
    killed = False
    if pid is not None and pid > 0:
        from stackvisor.system.signals import SignalGate

        gate = SignalGate()
        asked = False
        # A stopped or stuck supervisor may accept and never answer: do not wait on it.
        with contextlib.suppress(NotRunning, NotResponding, ApiError, OSError):
            client_for(config, supervisor_pid=pid).post("/v1/stop", timeout=min(timeout, 5.0))
            asked = True
        if not asked and _is_our_supervisor(pid, config):
            # No socket to ask (deleted, say): SIGTERM is the same graceful stop.
            gate.send(pid, signal.SIGTERM)
        if not _wait_exit(config, pid, timeout) and _is_our_supervisor(pid, config):
            # Last resort: its children die with it (PDEATHSIG), the rest is ended below.
            killed = gate.send(pid, signal.SIGKILL)
            _wait_exit(config, pid, 5.0)
    return DownResult(pid is not None, pid, end_orphans(config), killed)


def _is_our_supervisor(pid: int, config: Stack) -> bool:
    """The lock file's pid is a stackvisor supervisor still holding this stack's lock."""
    import psutil

    try:
        process = psutil.Process(pid)
        cmdline, uid = " ".join(process.cmdline()), process.uids().real
    except psutil.Error:
        return False
    return uid == os.geteuid() and "stackvisor" in cmdline and supervisor_pid(config) == pid


def _wait_exit(config: Stack, pid: int, timeout: float) -> bool:
    """Until the supervisor is gone: its lock is released when it exits, zombie or not.
    A lock too busy to say by whom it is held (-1: a supervisor exiting, or with its
    event loop blocked, drains no more) is still held."""
    deadline = time.monotonic() + timeout
    while supervisor_pid(config) in (pid, -1):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def end_orphans(config: Stack) -> list[str]:
    """End what a killed supervisor left; only while holding the lock (nobody else runs)."""
    import asyncio

    from stackvisor.runtime.orphans import end_cgroups
    from stackvisor.runtime.orphans import end_orphans as end
    from stackvisor.runtime.process import Spawner
    from stackvisor.runtime.state import StateDB
    from stackvisor.system.signals import SignalGate

    paths = _ref(config).paths
    lock = sockets.StackLock(paths.lock)
    if not paths.state_db.exists():
        # The state folder is gone (`git clean -fdx`), the cgroups are not.
        return [e.describe() for e in asyncio.run(end_cgroups(paths.cgroup_name, SignalGate()))]
    try:
        lock.acquire()
    except AlreadyRunning:
        return []
    db = StateDB.open(paths.state_db, os.getpid())
    note = db.recovery_note()
    try:
        spawner = Spawner(SignalGate())
        stack = paths.cgroup_name
        ended = [e.describe() for e in asyncio.run(end(db, f"down-{os.getpid()}", spawner, stack=stack))]
        return ([f"warning: {note}"] if note else []) + ended
    finally:
        db.close()
        lock.release()


def read_log_files(config: Stack, names: Sequence[str], lines: int) -> list[str]:
    """When nothing runs, `logs` reads the files the last run left."""
    out = []
    paths = _ref(config).paths
    width = max((len(n) for n in names), default=0)
    for name in names:
        path = paths.service_log(name)
        if not path.exists():
            continue
        tail = path.read_text(errors="replace").splitlines()[-lines:] if lines else []
        out += [f"{name.ljust(width)} | {line}" for line in tail]
    return out
