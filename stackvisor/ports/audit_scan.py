"""What `stackvisor audit` looks at: every TCP and UDP listener on the machine, its
process and that process's executable, and the processes of a running stack.

Here: `endpoints` (the kernel's socket tables, `tables`, joined with the fd walk,
`fdwalk`, and the facts of `owners.describe_process`), `executable` (where a process's
program lives, whether it was deleted), `stack_pids`, and `audit_document`, which puts
the scan and the rules together. Everything here only reads; the rules and the score
are in `audit`.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from stackvisor.ports.audit import Endpoint, Report, Scope, audit, declared_ports
from stackvisor.ports.fdwalk import SocketSightings, socket_holders
from stackvisor.ports.owners import Owner, describe_process, user_name
from stackvisor.ports.tables import Listener, listeners, udp_listeners
from stackvisor.system import procfs

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig

# Folders any user may write to on every Linux system, whatever their mode says here.
WRITABLE_ROOTS = ("/tmp", "/var/tmp", "/dev/shm")
_DELETED = " (deleted)"


def in_writable_folder(path: str, roots: tuple[str, ...] = WRITABLE_ROOTS) -> bool:
    """Whether the file at `path` lies below one of `roots`, or its folder has the o+w bit.

    A folder that cannot be read (gone with a deleted program) has no mode to tell."""
    folder = os.path.dirname(path) or "/"
    if any(folder == root or folder.startswith(root + "/") for root in roots):
        return True
    try:
        return bool(os.stat(folder).st_mode & stat.S_IWOTH)
    except OSError:
        return False


def executable(pid: int) -> tuple[str | None, bool, bool]:
    """(path, deleted, in a writable folder) of the program `pid` runs; (None, False,
    False) when it cannot be read (another user's process, a kernel thread, gone).

    Deleted: the file's link count is 0 (the kernel keeps it while the process runs);
    where that cannot be read, the " (deleted)" the kernel adds to the link says it."""
    link = f"{procfs.PROC}/{pid}/exe"
    try:
        target = os.readlink(link)
    except OSError:
        return None, False, False
    try:
        deleted = os.stat(link).st_nlink == 0
    except OSError:
        deleted = target.endswith(_DELETED)
    path = target.removesuffix(_DELETED) if deleted else target
    return path, deleted, in_writable_folder(path)


def endpoints() -> list[Endpoint]:
    """Every TCP listener and every unconnected bound UDP socket, each with its process
    (one read of the socket tables, one walk of /proc for the holders)."""
    tcp, _ = listeners(None, established=False)
    found: list[tuple[str, Listener]] = [("tcp", s) for s in tcp] + [("udp", s) for s in udp_listeners()]
    wanted = {s.inode: s.uid for _, s in found if s.pid is None and s.inode}
    holders = socket_holders(wanted, (), SocketSightings()) if wanted else {}
    owners: dict[int, Owner | None] = {}
    programs: dict[int, tuple[str | None, bool, bool]] = {}
    out = []
    for protocol, sock in found:
        pid = sock.pid if sock.pid is not None else holders.get(sock.inode or -1)
        owner = None
        if pid is not None:
            if pid not in owners:
                owners[pid] = describe_process(pid)
                programs[pid] = executable(pid)
            owner = owners[pid]
        uid = owner.uid if owner is not None and owner.uid is not None else sock.uid
        exe, deleted, writable = programs[pid] if pid is not None else (None, False, False)
        out.append(
            Endpoint(
                protocol=protocol,
                address=sock.address,
                port=sock.port,
                uid=uid,
                user=owner.user if owner is not None and owner.user else user_name(uid),
                pid=pid,
                name=owner.name if owner is not None else None,
                cmdline=owner.cmdline if owner is not None else (),
                exe=exe,
                exe_deleted=deleted,
                exe_in_writable_folder=writable,
            )
        )
    return out


def stack_pids(supervisor_pid: int | None) -> frozenset[int]:
    """The supervisor and every process below it: its services, their children, and
    what they left behind (the supervisor is their subreaper). Empty with no supervisor."""
    if supervisor_pid is None or supervisor_pid <= 0:
        return frozenset()
    below = procfs.descendants(supervisor_pid)
    return frozenset({supervisor_pid, *(p.pid for p in below)})


def audit_report(config: StackConfig, supervisor_pid: int | None) -> Report:
    """The audit of this machine's listeners against `config` (and its running stack)."""
    pids = stack_pids(supervisor_pid)
    scope = Scope(
        declared=declared_ports(config),
        stack_pids=pids,
        uid=os.geteuid(),
        suspicious=config.settings.audit.suspicious_ports,
    )
    context: dict[str, Any] = {
        "stack": config.name,
        "file": str(config.path),
        "supervisor_pid": supervisor_pid if pids else None,
    }
    return audit(endpoints(), scope, context)


def audit_document(config: StackConfig, supervisor_pid: int | None) -> dict[str, Any]:
    """`audit_report` as the JSON document of `stackvisor audit --json` and `GET /v1/audit`."""
    return audit_report(config, supervisor_pid).as_dict()
