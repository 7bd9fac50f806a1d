"""Services in cgroup v2: one cgroup per service, `<our cgroup>/stackvisor/<stack>/<service>`.

No process leaves its cgroup by double forking, `setsid`, `env -i` or a new title, so a
service's cgroup names every process it started. The stack's folder sits below our own
cgroup, where a delegated subtree (a user's systemd slice) lets us create children.

Here: pure parsers (mountinfo, /proc/self/cgroup, cpu.stat, cgroup.events), the choice of
cgroup or marker tracking (`probe`), and making, listing, signalling, killing, removing
and measuring a cgroup. Waits block up to their timeout: async callers run them in a
thread. Not here: spawning (`runtime.process`; joining a cgroup before exec is
`prelude`'s), the marker search and process trees (`procfs`), who may get a signal
(`signals`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import select
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from stackvisor.system.signals import SignalGate

ENV = "STACKVISOR_TRACKING"
Mode = Literal["auto", "cgroup", "marker"]
MODES: tuple[Mode, ...] = ("auto", "cgroup", "marker")
TOP = "stackvisor"  # the folder below our own cgroup that holds every stack's cgroups

# A cgroup named like an interface file (`cpu.max`) collides with it, now or once enabled.
_INTERFACE_PREFIXES = {"cgroup", "cpu", "cpuset", "io", "memory", "pids", "rdma", "hugetlb", "misc"}
_ESCAPE = re.compile(r"\\([0-7]{3})")


class CgroupUnavailable(Exception):
    """cgroup tracking cannot be used here; the message says why."""


@dataclass(frozen=True)
class Mount:
    """A cgroup2 mount: where it is, which cgroup it shows (`root`), whether it is read-only."""

    point: Path
    root: str
    read_only: bool


@dataclass(frozen=True)
class Tracking:
    """How a stack's processes are tracked, and why; `base` is the stack's cgroup folder."""

    kind: Literal["cgroup", "marker"]
    reason: str
    base: Path | None = None


@dataclass(frozen=True)
class Usage:
    """What a service uses now: resident memory, CPU time so far, and its processes."""

    memory_bytes: int
    cpu_seconds: float
    processes: int


def cgroup2_mounts(mountinfo: str) -> list[Mount]:
    """The cgroup2 mounts in /proc/self/mountinfo text, in order, paths unescaped (`\\040`)."""
    found: list[Mount] = []
    for line in mountinfo.splitlines():
        # id parent dev root point options [optional...] - fstype source super-options
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if fields[sep + 1 : sep + 2] != ["cgroup2"]:
            continue
        options = {*fields[5].split(","), *(fields[sep + 3].split(",") if len(fields) > sep + 3 else ())}
        point, root = (_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), f) for f in (fields[4], fields[3]))
        found.append(Mount(Path(point), root, "ro" in options))
    return found


def own_cgroup(proc_cgroup: str) -> str | None:
    """Our cgroup v2 path from /proc/self/cgroup text (the `0::` line), None without one."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::/"):
            return line[3:]
    return None


def _below(root: str, path: str) -> str | None:
    """`path` relative to `root` ("" for root itself), None when it is not below it."""
    if ".." in root.split("/") or ".." in path.split("/"):
        return None  # beyond our cgroup namespace: the kernel shows such paths with ".."
    root, path = posixpath.normpath(root), posixpath.normpath(path)
    return path[len(root) :].lstrip("/") if f"{path}/".startswith(f"{root.rstrip('/')}/") else None


def own_directory(mountinfo: str, proc_cgroup: str) -> tuple[Mount, Path]:
    """The mount and the folder of our own cgroup in it; CgroupUnavailable says why not.

    A mount shows the hierarchy from its `root` down (a container's bind mount shows only
    the container's cgroup), so our path is taken relative to that root. A writable mount
    is preferred when several show our cgroup.
    """
    mounts = cgroup2_mounts(mountinfo)
    if not mounts:
        raise CgroupUnavailable("no cgroup2 mount in /proc/self/mountinfo")
    own = own_cgroup(proc_cgroup)
    if own is None:
        raise CgroupUnavailable("no cgroup v2 line (0::) in /proc/self/cgroup")
    places = [(m, rel) for m in mounts if (rel := _below(m.root, own)) is not None]
    if not places:
        raise CgroupUnavailable(f"our cgroup {own} is not below the cgroup2 mount's root {mounts[0].root}")
    mount, rel = min(places, key=lambda place: place[0].read_only)
    return mount, mount.point / rel if rel else mount.point


def cpu_seconds(cpu_stat: str) -> float | None:
    """CPU time in seconds from cpu.stat text (`usage_usec`), None without it."""
    for line in cpu_stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value) / 1_000_000
    return None


def populated(events: str) -> bool:
    """Whether cgroup.events text says the cgroup or one below it holds a live process."""
    return any(line.split() == ["populated", "1"] for line in events.splitlines())


def safe_name(name: str) -> str:
    """`name` when it can name one cgroup folder (a stack, a service); ValueError says why not."""
    if name in ("", ".", "..") or any(c in name for c in "/\0\n"):
        raise ValueError(f"{name!r} cannot name a cgroup: it is empty, '.', '..' or holds '/'")
    if len(name.encode()) > 255:
        raise ValueError(f"a cgroup name is at most 255 bytes (got {name!r})")
    if "." in name and name.partition(".")[0] in _INTERFACE_PREFIXES:
        raise ValueError(f"{name!r} would collide with a cgroup's interface file; rename it")
    return name


def tracking_mode(environ: Mapping[str, str]) -> Mode:
    """The tracking mode STACKVISOR_TRACKING asks for: auto (the default), cgroup or marker."""
    value = environ.get(ENV, "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV} must be one of {', '.join(MODES)} (got {value!r})")
    return value


def _read(path: Path | str) -> str:
    """A whole file, with two system calls for a small one: a stop reads two files per
    service, and pathlib's `read_text` costs several times that."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def locate() -> tuple[Mount, Path]:
    """Our cgroup2 mount and our own cgroup's folder; CgroupUnavailable says why not."""
    try:
        return own_directory(_read(Path("/proc/self/mountinfo")), _read(Path("/proc/self/cgroup")))
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read /proc: {exc.strerror}") from exc


def probe(stack: str, *, mode: str | None = None, environ: Mapping[str, str] | None = None) -> Tracking:
    """Whether `stack` runs in cgroups or falls back to markers, and why; creates its folder.

    `mode` None reads STACKVISOR_TRACKING from `environ` (os.environ). "marker" forces the
    fallback; "cgroup" raises CgroupUnavailable instead. Creating the folder is the test:
    a read-write mount still refuses a cgroup not delegated to us. We never leave our cgroup.
    """
    asked = {ENV: mode} if mode is not None else os.environ if environ is None else environ
    try:
        chosen = tracking_mode(asked)
    except ValueError as exc:
        raise CgroupUnavailable(str(exc)) from None
    source = f"{ENV}={chosen}" if mode is None else f"tracking mode {chosen}"
    if chosen == "marker":
        return Tracking("marker", f"forced by {source}")
    try:
        mount, own = locate()
        if mount.read_only:
            raise CgroupUnavailable(f"cgroup v2 at {mount.point} is mounted read-only")
        base = own / TOP / safe_name(stack)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CgroupUnavailable(f"cgroup v2 at {mount.point} is not writable ({exc})") from exc
        # Moving a child from our cgroup into the stack's asks for their common ancestor.
        if not os.access(own / "cgroup.procs", os.W_OK):
            raise CgroupUnavailable(f"cgroup v2 at {mount.point}: {own}/cgroup.procs is not writable")
    except CgroupUnavailable as exc:
        if chosen == "cgroup":
            raise CgroupUnavailable(f"{source} asks for cgroups, but {exc}") from exc
        return Tracking("marker", str(exc))
    return Tracking("cgroup", f"cgroup v2 at {mount.point}", base)


def service_dir(base: Path, service: str) -> Path:
    """Create the service's cgroup below the stack's folder (no error when it exists)."""
    path = base / safe_name(service)
    # mkdir(parents=True) creates the stack's folder again should `remove` take it meanwhile.
    path.mkdir(parents=True, exist_ok=True)
    return path


def renew(path: Path) -> bool:
    """The empty cgroup `path` made anew (some kernels, 6.18 here, kill every process
    later born into a cgroup once `cgroup.kill` was written); False while it is not empty."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return True


def prime(base: Path) -> None:
    """Wait out now, moving nothing, what a child about to join its cgroup would wait
    for: the first write to any `cgroup.procs` after a quiet while waits for an RCU
    grace period (5 to 15 ms here). Our pid, into our own cgroup (`base` is two below
    it). Blocks for that period: run it in a thread. A failure is ignored."""
    with contextlib.suppress(OSError):
        fd = os.open(base.parent.parent / "cgroup.procs", os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)


def leftovers(stack: str) -> list[Path]:
    """Service cgroups of `stack` on disk, wherever a supervisor of ours created them.

    A supervisor started from another terminal or session sits in another cgroup, so the
    whole visible hierarchy is searched, keeping the stack folders of our own user.
    """
    name = safe_name(stack)
    try:
        mount, _ = locate()
    except CgroupUnavailable:
        return []
    found: list[Path] = []
    for folder, subdirs, _ in os.walk(mount.point):
        if TOP in subdirs:
            subdirs.remove(TOP)  # never walk into service cgroups
            stack_dir = Path(folder, TOP, name)
            with contextlib.suppress(OSError):
                if stack_dir.stat().st_uid == os.geteuid():
                    found += sorted(p for p in stack_dir.iterdir() if p.is_dir())
    return found


def _ours(path: Path) -> Path:
    """`path` when it is a stack's or a service's cgroup: ending or removing whatever is in
    another cgroup (ours, holding the terminal's other processes) is never meant."""
    if TOP not in path.parts[:-1]:
        raise ValueError(f"{path} is not a cgroup stackvisor made: refusing to end what is in it")
    return path


def pids(path: Path) -> list[int]:
    """Every process in the cgroup and the cgroups below it (a service may create its own).
    The folder is walked only when `cgroup.stat` says there is something below it."""
    try:
        stat = _read(f"{path}/cgroup.stat")
    except OSError:
        return []  # gone (ENOENT, or ENODEV once removed)
    folders = [str(path)]
    if not re.search(r"^nr_descendants 0$", stat, re.MULTILINE):
        folders = [folder for folder, _, _ in os.walk(path)]
    found: set[int] = set()
    for folder in folders:
        with contextlib.suppress(OSError):  # gone meanwhile
            found.update(int(word) for word in _read(f"{folder}/cgroup.procs").split())
    return sorted(found)


def wait_empty(path: Path, timeout: float) -> bool:
    """Wait until the cgroup holds no live process (zombies do not count; a gone cgroup is
    empty); False at the deadline. A poll on cgroup.events wakes when `populated` changes;
    the 50 ms cap only bounds a missed wake-up."""
    deadline = time.monotonic() + timeout
    try:
        events = open(path / "cgroup.events", "rb", buffering=0)  # noqa: SIM115
    except OSError:
        return not pids(path)  # gone (a service's cgroup is never the root, which has none)
    with events:
        poller = select.poll()
        poller.register(events.fileno(), select.POLLPRI)
        while True:
            try:
                events.seek(0)
                if not populated(events.read().decode()):
                    return True
            except OSError:
                return True  # ENODEV: removed meanwhile
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(min(left, 0.05) * 1000)


def empty(path: Path) -> bool:
    """True when no live process is in the cgroup or below it (also when it is gone)."""
    return wait_empty(path, 0)


def signal_all(path: Path, sig: int, gate: SignalGate) -> int:
    """Send `sig` to every process in the cgroup; how many got it.

    Whatever is in a service's cgroup is ours by construction (`ours=True`); the gate still
    spares the supervisor and its ancestors, should one ever be in it.
    """
    return sum(gate.send(pid, sig, ours=True) for pid in pids(_ours(path)))


def kill(path: Path, gate: SignalGate, *, timeout: float = 5.0, kill_file: bool = True) -> bool:
    """SIGKILL everything in the cgroup and below it; True once it is empty.

    cgroup.kill (Linux 5.14) kills the subtree at once, forks in flight included. Without
    it (or with `kill_file=False`) the cgroup is frozen so nothing forks, its pids are
    killed until none is left (a frozen process still dies of SIGKILL), then thawed. A
    cgroup holding the supervisor or an ancestor is killed pid by pid through the gate.
    """
    deadline = time.monotonic() + timeout
    protected = gate.protected_pids()
    whole = protected.isdisjoint(pids(_ours(path)))
    if kill_file and whole and (path / "cgroup.kill").exists():
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
            return wait_empty(path, timeout)
    freeze = path / "cgroup.freeze"
    frozen = False
    with contextlib.suppress(OSError):
        if whole and freeze.exists():
            freeze.write_text("1")
            frozen = True
    try:
        while left := [pid for pid in pids(path) if pid not in protected]:
            # A pid read here names another process at the kill only if the whole pid space
            # wrapped around meanwhile: a risk cgroup.kill does not have.
            for pid in left:
                gate.send(pid, signal.SIGKILL, ours=True)
            if wait_empty(path, min(0.05, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline:
                return False
        return empty(path)
    finally:
        if frozen:
            with contextlib.suppress(OSError):
                freeze.write_text("0")


def remove(path: Path, timeout: float = 5.0) -> bool:
    """Wait until the cgroup is empty, then remove it and the cgroups below it, deepest
    first, and the stack's folder when this was its last service. False when a process is
    still in it at the deadline; a folder already gone is no error."""
    if not wait_empty(_ours(path), timeout):
        return False
    try:
        for folder, _, _ in os.walk(path, topdown=False):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(folder)
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False  # a process or a cgroup came in after the wait (a start meanwhile)
        raise
    if path.parent.parent.name == TOP:
        with contextlib.suppress(OSError):  # refused while other services remain: fine
            path.parent.rmdir()
    return True


def _totals(pids: list[int]) -> Usage:
    """RSS summed (shared pages count once per process), CPU time of the living processes
    and of the children they reaped, and how many were alive."""
    memory, cpu, alive = 0, 0.0, 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            memory += proc.memory_info().rss
            cpu += times.user + times.system + times.children_user + times.children_system
            alive += 1
    return Usage(memory, cpu, alive)


def usage(path: Path) -> Usage:
    """The cgroup's memory (memory.current, else its processes' RSS), CPU time (cpu.stat,
    which keeps the time of processes that ended) and number of processes."""
    members = pids(path)
    try:
        memory = int(_read(path / "memory.current"))
    except (OSError, ValueError):
        memory = _totals(members).memory_bytes
    cpu = 0.0
    with contextlib.suppress(OSError):
        cpu = cpu_seconds(_read(path / "cpu.stat")) or 0.0
    return Usage(memory, cpu, len(members))
