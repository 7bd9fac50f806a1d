"""Services that daemonise (`daemon:`): programs that fork into the background and exit
(old init scripts, `pg_ctl start`, some databases).

When the started process exits 0, the service's daemon is looked for, for up to
`daemon.wait`: the pid in `daemon.pidfile` (relative to the service's folder) — only if
that process is the service's own, in its cgroup or carrying its marker, so a pidfile
naming somebody else's process (planted, or stale after a reboot) is never adopted —
or, with `daemon: true`, the oldest process the service left running. The service is
then `running` (and health-checked) while that process lives; its end is an exit with
an unknown status (-1: it is not our child, its parent already exited), restarted as
the service's `restart` says. A stop signals it (its process group, and everything of
the service), or first runs `shutdown.command` (`pg_ctl stop`), waiting up to
`shutdown.timeout` for the daemon to go before the stop signal follows.

Here: finding and following the daemon (`adopt`, `Adopted`) and the shutdown command
(`shut_down`). The runner (`service`) calls them; the stop and cleanup of the
service's family are the `Child`'s own.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from stackvisor.config.schema import Service
from stackvisor.runtime.command import service_context
from stackvisor.runtime.health import probe_exec
from stackvisor.runtime.logs import ServiceLog
from stackvisor.runtime.process import Child, watch_exit
from stackvisor.system import cgroups, procfs

_LOOK_EVERY = 0.05


@dataclass(eq=False)
class Adopted(Child):
    """The daemon, followed through a pidfd: not our child, so nothing to reap; it has
    ended when its pid is gone (or is another process)."""

    adopted_from: int = field(default=0)  # the pid of the process that started it

    @classmethod
    def of(cls, launcher: Child, pid: int, pgid: int, started: float) -> Adopted:
        """Process `pid`, of the service that `launcher` started (its marker, cgroup, output)."""
        return cls(
            pid=pid,
            pgid=pgid,
            started=started,
            marker=launcher.marker,
            output_fd=launcher.output_fd,
            popen=launcher.popen,
            _spawner=launcher._spawner,
            cgroup=launcher.cgroup,
            adopted_from=launcher.pid,
        )

    @classmethod
    def gone(cls, launcher: Child) -> Adopted:
        """No daemon to follow: an ended process (exit -1) in the launcher's place, so the
        service counts as failed and what it left in its cgroup is cleaned up."""
        stand_in = cls.of(launcher, launcher.pid, launcher.pgid, launcher.started)
        stand_in.exit_code = -1
        stand_in._exited.set()
        return stand_in

    def _collect(self) -> bool:
        if self.exit_code is not None:
            return True
        if procfs.same_process(self.pid, self.started):
            return False
        self.exit_code = -1  # its parent exited long ago: nobody of ours learns its status
        self._exited.set()
        return True


def pid_in(pidfile: Path) -> int | None:
    """The number a pidfile holds (its first line), or None."""
    try:
        with open(pidfile, "rb") as fh:
            first = fh.read(64).split(b"\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() and int(first) > 1 else None


def of_service(pid: int, launcher: Child) -> bool:
    """Whether `pid` is a live process of the service `launcher` started: in its cgroup,
    or carrying its marker."""
    if not procfs.same_process(pid, None) or pid == os.getpid():
        return False
    if launcher.cgroup is not None:
        return pid in cgroups.pids(launcher.cgroup)
    return any(p.pid == pid for p in procfs.marked(launcher.marker))


def left_running(launcher: Child) -> int | None:
    """The oldest process the service left running (`daemon: true`), if any."""
    found = [(began, p.pid) for p in launcher.descendants() if (began := procfs.started(p.pid)) is not None]
    return min(found)[1] if found else None


def folder(config: Service, root: Path) -> Path:
    return root / config.working_dir if config.working_dir else root


async def adopt(launcher: Child, config: Service, root: Path) -> tuple[Adopted | None, str]:
    """The daemon of a service whose process exited 0 (None when none showed up in
    time), and a note for the service's log."""
    assert config.daemon is not None
    pidfile = folder(config, root) / config.daemon.pidfile if config.daemon.pidfile else None
    where = f"pidfile {pidfile}" if pidfile else "the processes it left running"
    deadline = time.monotonic() + config.daemon.wait
    while True:
        pid = pid_in(pidfile) if pidfile else left_running(launcher)
        if pid is not None and of_service(pid, launcher) and (began := procfs.started(pid)) is not None:
            break
        if time.monotonic() >= deadline:
            return None, f"daemon: no live process of the service in {where} after {config.daemon.wait:g}s"
        await asyncio.sleep(_LOOK_EVERY)
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return None, f"daemon: pid {pid} ended as it was found"
    daemon = Adopted.of(launcher, pid, group, began)
    watch_exit(daemon)
    return daemon, f"daemon: following pid {pid} (from {where})"


async def settle(launcher: Child, config: Service, root: Path, stop: asyncio.Event, log: ServiceLog) -> Child:
    """What to follow of a service that daemonises: once its process exited 0, the
    daemon; the process itself when it exited otherwise, still runs after
    `daemon.wait` (it did not fork: followed as any process), or a stop came first; an
    ended stand-in (exit -1, a failure) when no daemon showed up."""
    assert config.daemon is not None
    exited = asyncio.ensure_future(launcher.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({exited, stopping}, timeout=config.daemon.wait, return_when=asyncio.FIRST_COMPLETED)
    for waiting in (exited, stopping):
        waiting.cancel()
    if launcher.alive or launcher.exit_code != 0:
        if launcher.alive and not stop.is_set():
            log.note(
                f"daemon: pid {launcher.pid} still runs after {config.daemon.wait:g}s: followed as it is"
            )
        return launcher
    daemon, note = await adopt(launcher, config, root)
    log.note(note)
    return daemon if daemon is not None else Adopted.gone(launcher)


async def shut_down(daemon: Child, config: Service, root: Path, variables: dict[str, str]) -> str:
    """`shutdown.command`, then up to `shutdown.timeout` for the daemon to end; what
    happened, for the service's log. The stop signal follows if it is still there."""
    assert config.shutdown is not None
    env = service_context(config, root, variables).env
    began = time.monotonic()
    ok, said = await probe_exec(
        daemon._spawner,
        config.shutdown.command,
        config.shutdown.timeout,
        env,
        str(folder(config, root)),
        daemon.marker,
    )
    left = max(0.0, config.shutdown.timeout - (time.monotonic() - began))
    if daemon.alive:
        await asyncio.wait({asyncio.ensure_future(daemon.wait())}, timeout=left)
    outcome = "it ended" if not daemon.alive else f"it was still there after {config.shutdown.timeout:g}s"
    return f"shutdown command {'succeeded' if ok else 'failed: ' + said}; {outcome}"
