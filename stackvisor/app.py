"""The composition root: a supervisor, its control server and its file watcher, wired and run.

`serve` is what `stackvisor up` (and the detached supervisor) runs: it takes the
stack's lock, binds the control socket, runs the supervisor with the file watcher
as its companion, and closes the socket after the last event. `run_supervisor` is
the same inside the CLI's process, with the console and the supervisor's own log.
Nothing below this module imports the control server or the watcher's wiring.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stackvisor import logsetup
from stackvisor.config.address import split_host_port
from stackvisor.config.schema import StackConfig, Strategy
from stackvisor.control.sockets import StackLock, bind_unix
from stackvisor.errors import AlreadyRunning, UnsafePath
from stackvisor.paths import stack_paths
from stackvisor.runtime.logs import stdout_console
from stackvisor.runtime.reports import reporting
from stackvisor.runtime.supervisor import Companion, Lease, Supervisor
from stackvisor.runtime.watch import watch_stack
from stackvisor.system.cgroups import CgroupUnavailable
from stackvisor.system.files import dir_mode, secure_dir

if TYPE_CHECKING:
    from stackvisor.control.server import ControlServer

# How often the stack's files are checked for having been deleted under it.
REACHABLE_CHECK = 1.0


async def start_control(sup: Supervisor, unix: socket.socket) -> ControlServer:
    """The control API on the stack's socket `unix` (bound, 0600), and on TCP with a token
    if configured. The server (aiohttp) is imported here, in a thread: the services are
    already starting meanwhile, and a client that connects first waits in the socket's
    backlog."""
    server_module = await asyncio.to_thread(importlib.import_module, "stackvisor.control.server")
    settings = sup.config.settings.control
    token = None
    tcp = None
    if settings.tcp:
        tcp = split_host_port(settings.tcp)
        token = server_module.ensure_token(sup.paths.token)
    server: ControlServer = server_module.ControlServer(sup, token)
    await server.start(unix, tcp)
    return server


async def serve(
    sup: Supervisor,
    selection: Sequence[str] | None = None,
    *,
    control: bool = True,
    until_done: bool = False,
    lease: Lease | None = None,
) -> int:
    """Run `sup` as `up` does; raises `AlreadyRunning` (touching nothing) when another
    supervisor holds the stack."""
    if sup.owns_process_tree:  # the command's own process: a Ctrl-C from now on stops it
        sup.catch_signals()
    sup.open()
    lock = StackLock(sup.paths.lock)
    try:
        lock.acquire()
    except AlreadyRunning:
        sup.close()
        raise
    sup.record()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(logsetup.LoopErrors(sup.logger))
    assert lock.socket is not None
    loop.add_reader(lock.socket.fileno(), lock.drain)
    try:
        started: list[ControlServer] = []
        companions: list[Companion] = [watch_stack] if sup.config.settings.reload else []
        companions.append(reporting)  # idle until settings.report is set
        if control:
            unix = bind_unix(sup.paths.socket)  # clients queue here until the server serves
            companions.append(functools.partial(_control, unix=unix, started=started, lock=lock))
        try:
            return await sup.run(selection, until_done=until_done, lease=lease, companions=companions)
        finally:
            # Closed after the last event (the stack's "down"), which streams still get.
            for server in started:
                await server.close()
            if control:
                unix.close()
                sup.paths.socket.unlink(missing_ok=True)
    finally:
        loop.remove_reader(lock.socket.fileno())
        # In its own process the lock goes with the process, so `down`, which waits
        # for it, returns only once the supervisor is really gone.
        if not sup.owns_process_tree:
            lock.release()


async def _control(
    sup: Supervisor, *, unix: socket.socket, started: list[ControlServer], lock: StackLock
) -> None:
    """The control server as a companion of the running stack: started once the services
    are on their way, then kept reachable; `serve` closes it after the last event."""
    started.append(await start_control(sup, unix))
    await keep_reachable(sup, server=started[0], lock=lock)


async def keep_reachable(sup: Supervisor, *, server: ControlServer, lock: StackLock) -> None:
    """Once a second: a deleted control socket, state.db, lock file, stack record, logs
    folder or port registry (`rm`, `git clean -fdx`) is made again, so the CLI can always
    reach the running stack. The lock itself cannot be lost (see `StackLock`)."""
    socket_id = _identity(sup.paths.socket)
    while True:
        await asyncio.sleep(REACHABLE_CHECK)
        try:
            if _identity(sup.paths.socket) != socket_id:
                secure_dir(sup.paths.state_dir, 0o700)
                await server.replace_unix(bind_unix(sup.paths.socket))
                socket_id = _identity(sup.paths.socket)
                sup.logger.warning(f"{sup.paths.socket} was deleted: made again")
            if sup.ledger.reopen_if_gone():
                sup.logger.warning(f"{sup.paths.state_db} was deleted: made again from memory")
            if not lock.path.exists():
                lock.rewrite_file()
            if not sup.paths.record.exists():
                sup.record()
            if _keep_logs_folder(sup):
                sup.logger.warning(f"{sup.paths.logs} was deleted or moved: made again")
            sup.ports.check_registry()
        except (OSError, UnsafePath) as exc:
            sup.logger.error(f"cannot make the stack's files again: {exc}")


def _keep_logs_folder(sup: Supervisor) -> bool:
    """The logs folder was deleted or moved away (`git clean -fdx`): make it again and
    write there from now on (True). A link or a folder of somebody else's in its place
    raises UnsafePath, and the services go on writing into the folder held."""
    if not sup.logs_folder.moved():
        return False
    secure_dir(sup.paths.logs, dir_mode(sup.config.settings.logs_mode), adopt=sup.paths.own_logs)
    sup.logs_folder.close()
    sup.logs_folder.open()
    for runner in sup.runners.values():
        runner.log.file.close()  # opened again, in the new folder, by the next write
    return True


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def run_supervisor(
    config: StackConfig,
    services: Sequence[str],
    *,
    strategy: str | None,
    until_done: bool,
    lease: Lease,
    console: bool,
    profiles: Sequence[str] = (),
) -> int:
    """The supervisor in this process until the stack stops; the exit status of `up`."""
    paths = stack_paths(config)
    mode = config.settings.logs_mode
    try:
        secure_dir(paths.state_dir, 0o700)
        secure_dir(paths.logs, dir_mode(mode), adopt=paths.own_logs)
        log = logsetup.configure(paths.supervisor_log, file_mode=mode)
    except UnsafePath as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return 1
    width = max(len(n) for n in config.services)
    out = stdout_console(width, enabled=console)

    # A Ctrl-C before the stack's own handler is in place is noted, then acted on. Left to
    # asyncio's, it would cancel the main task, and a cancellation met by code that must
    # finish what it does would be lost, with the stack running on.
    early: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: early.append(sig))

    async def main() -> int:
        sup = Supervisor(
            config,
            console=out,
            strategy=Strategy(strategy) if strategy else None,
            owns_process_tree=True,
            profiles=profiles,
        )
        sup.catch_signals()  # from now on the loop takes them; what came before is in `early`
        if early:
            sup.request_stop("SIGINT")
        return await serve(sup, services, until_done=until_done, lease=lease)

    try:
        return asyncio.run(main())
    except (AlreadyRunning, UnsafePath, CgroupUnavailable) as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
        out.close()
        log.flush()
