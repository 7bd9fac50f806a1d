"""cgroup v2 tracking: the parsers over sample texts, and real processes in real cgroups.

The tests with real cgroups skip, saying why, where cgroup v2 is not writable here. Each
uses a stack name of its own (parallel workers never meet) and ends every process and
removes every cgroup it made, also when it fails. Waits poll with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from conftest import Start, wait_for

from stackvisor.system import cgroups, procfs
from stackvisor.system.cgroups import CgroupUnavailable, Mount
from stackvisor.system.prelude import prelude
from stackvisor.system.signals import SignalGate

# ----- pure: sample texts -------------------------------------------------------------------

PURE_V2 = """\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 master:2 - cgroup2 cgroup2 rw
"""
V1_ONLY = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""
ESCAPED = "40 23 0:38 / /mnt/my\\040cgroups\\134x rw,relatime - cgroup2 none rw\n"
# A container without its own cgroup namespace: the mount shows only its cgroup, read-only.
CONTAINER = "900 890 0:26 /docker/abc /sys/fs/cgroup ro,nosuid,relatime - cgroup2 cgroup ro\n"

GATE = SignalGate()

PROC_V2 = "0::/user.slice/user-1000.slice/session-2.scope\n"
PROC_HYBRID = "9:name=systemd:/\n4:memory:/process_api/220899\n1:cpu:/\n0::/\n"
PROC_V1 = "9:name=systemd:/user.slice\n4:memory:/user.slice\n"


def test_cgroup2_mounts() -> None:
    assert cgroups.cgroup2_mounts(PURE_V2) == [Mount(Path("/sys/fs/cgroup"), "/", False)]
    assert cgroups.cgroup2_mounts(HYBRID) == [Mount(Path("/sys/fs/cgroup/unified"), "/", False)]
    assert cgroups.cgroup2_mounts(V1_ONLY) == []
    assert cgroups.cgroup2_mounts("") == []
    assert cgroups.cgroup2_mounts(ESCAPED) == [Mount(Path("/mnt/my cgroups\\x"), "/", False)]
    assert cgroups.cgroup2_mounts(CONTAINER) == [Mount(Path("/sys/fs/cgroup"), "/docker/abc", True)]


def test_own_cgroup() -> None:
    assert cgroups.own_cgroup(PROC_V2) == "/user.slice/user-1000.slice/session-2.scope"
    assert cgroups.own_cgroup(PROC_HYBRID) == "/"
    assert cgroups.own_cgroup(PROC_V1) is None


@pytest.mark.parametrize(
    ("mountinfo", "proc_cgroup", "folder"),
    [
        (PURE_V2, PROC_V2, "/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope"),
        (HYBRID, PROC_HYBRID, "/sys/fs/cgroup/unified"),
        (CONTAINER, "0::/docker/abc\n", "/sys/fs/cgroup"),
        (CONTAINER, "0::/docker/abc/sub\n", "/sys/fs/cgroup/sub"),
        (PURE_V2 + ESCAPED, PROC_HYBRID, "/sys/fs/cgroup"),  # the first mount that shows us
    ],
)
def test_own_directory(mountinfo: str, proc_cgroup: str, folder: str) -> None:
    assert cgroups.own_directory(mountinfo, proc_cgroup)[1] == Path(folder)


@pytest.mark.parametrize(
    ("mountinfo", "proc_cgroup", "reason"),
    [
        (V1_ONLY, PROC_V1, "no cgroup2 mount"),
        (PURE_V2, PROC_V1, "no cgroup v2 line"),
        (CONTAINER, "0::/docker/abcdef\n", "not below the cgroup2 mount's root /docker/abc"),
        (CONTAINER, "0::/\n", "not below"),
        (PURE_V2, "0::/../../system.slice\n", "not below"),  # outside our cgroup namespace
    ],
)
def test_own_directory_says_why_not(mountinfo: str, proc_cgroup: str, reason: str) -> None:
    with pytest.raises(CgroupUnavailable, match=reason):
        cgroups.own_directory(mountinfo, proc_cgroup)


def test_cpu_stat_and_events() -> None:
    stat = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnr_periods 0\n"
    assert cgroups.cpu_seconds(stat) == pytest.approx(1.234567)
    assert cgroups.cpu_seconds("user_usec 5\n") is None
    assert cgroups.populated("populated 1\nfrozen 0\n")
    assert not cgroups.populated("populated 0\nfrozen 0\n")


@pytest.mark.parametrize("name", ["api", "web-1", "db.primary", "my stack", "a" * 255])
def test_safe_names(name: str) -> None:
    assert cgroups.safe_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\nb", "cgroup.procs", "cpu.max", "a" * 256])
def test_unsafe_names(name: str) -> None:
    with pytest.raises(ValueError):
        cgroups.safe_name(name)


def test_tracking_mode_and_forced_marker() -> None:
    assert cgroups.tracking_mode({}) == "auto"
    assert cgroups.tracking_mode({"STACKVISOR_TRACKING": " Marker "}) == "marker"
    with pytest.raises(ValueError, match="auto, cgroup, marker"):
        cgroups.tracking_mode({"STACKVISOR_TRACKING": "systemd"})
    forced = cgroups.probe("any", environ={"STACKVISOR_TRACKING": "marker"})
    assert (forced.kind, forced.base) == ("marker", None)
    assert forced.reason == "forced by STACKVISOR_TRACKING=marker"
    assert cgroups.probe("any", mode="marker").reason == "forced by tracking mode marker"
    with pytest.raises(cgroups.CgroupUnavailable, match="auto, cgroup, marker"):
        cgroups.probe("any", mode="sometimes")


def test_probe_says_why_it_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where our cgroup is (`locate`) is faked; creating the stack's folder is real."""
    (tmp_path / "file").touch()
    places = {
        "mounted read-only": (Mount(tmp_path, "/", True), tmp_path),
        "is not writable": (Mount(tmp_path, "/", False), tmp_path / "file"),  # mkdir fails
    }
    for reason, place in places.items():
        monkeypatch.setattr(cgroups, "locate", lambda place=place: place)
        tracking = cgroups.probe("web", mode="auto")
        assert tracking.kind == "marker"
        assert tracking.reason.startswith(f"cgroup v2 at {tmp_path} ")
        assert reason in tracking.reason
        with pytest.raises(CgroupUnavailable, match=f"tracking mode cgroup asks for cgroups, but .*{reason}"):
            cgroups.probe("web", mode="cgroup")


# ----- the join, without cgroups --------------------------------------------------------------


def test_a_child_that_cannot_join_does_not_run(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    full = tmp_path / "full"
    full.mkdir()
    (full / "cgroup.procs").symlink_to("/dev/full")  # the open works, the write fails
    for folder in (tmp_path / "missing", full):
        done = subprocess.run(
            [*prelude(folder), "touch", str(ran)], capture_output=True, text=True, timeout=10
        )
        assert done.returncode == 125
        assert f"cannot join the cgroup {folder}, not starting touch" in done.stderr
        assert not ran.exists()


def test_only_cgroups_stackvisor_made_are_ended_or_removed(tmp_path: Path) -> None:
    for path in (Path("/sys/fs/cgroup"), tmp_path, tmp_path / cgroups.TOP):
        with pytest.raises(ValueError, match="not a cgroup stackvisor made"):
            cgroups.kill(path, GATE)
        with pytest.raises(ValueError):
            cgroups.signal_all(path, signal.SIGTERM, GATE)
        with pytest.raises(ValueError):
            cgroups.remove(path)


# ----- real cgroups ---------------------------------------------------------------------------

# 40 MB touched, two children sharing it, and some CPU time: then "ready".
USER = textwrap.dedent("""
    import os, sys, time
    data = b"x" * (40 << 20)
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    for _ in range(2):
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
    print("ready", flush=True)
    time.sleep(300)
""")

# 200 children, each replaced as soon as it dies: pids keep coming while they are killed.
FORKER = textwrap.dedent("""
    import os, time
    def child():
        time.sleep(300)
        os._exit(0)
    for _ in range(200):
        if os.fork() == 0:
            child()
    print("ready", flush=True)
    while True:
        os.wait()
        if os.fork() == 0:
            child()
""")

# Six processes, each noting when it is ready (`ready-<pid>`), that SIGTERM ends (its
# default action: a Python handler was not always run in a forked child, seen twice in
# thousands of runs with the signal delivered and caught).
TERMINATED = textwrap.dedent("""
    import os, sys, time
    for _ in range(5):
        if os.fork() == 0:
            break
    open(os.path.join(sys.argv[1], f"ready-{os.getpid()}"), "w").close()
    time.sleep(300)
""")


def test_a_child_joins_before_its_first_fork(base: Path) -> None:
    svc = cgroups.service_dir(base, "api")
    assert cgroups.service_dir(base, "api") == svc  # idempotent
    done = subprocess.run(
        [*prelude(svc), "/bin/sh", "-c", "cat /proc/self/cgroup"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    ours = cgroups.own_cgroup(Path("/proc/self/cgroup").read_text())
    assert ours is not None
    assert cgroups.own_cgroup(done.stdout) == posixpath.join(ours, str(svc.relative_to(cgroups.locate()[1])))


def test_a_double_forked_setsid_env_i_grandchild_stays_found(base: Path, start: Start) -> None:
    svc = cgroups.service_dir(base, "escaper")
    script = '(setsid sh -c "exec env -i sleep 300" &); exec sleep 300'
    child = start([*prelude(svc), "/bin/sh", "-c", script], env={"PATH": os.environ["PATH"]})

    def settled() -> psutil.Process | None:
        """The grandchild once it runs `sleep` with an empty environment."""
        for pid in cgroups.pids(svc):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if pid != child.pid and proc.name() == "sleep" and proc.environ() == {}:
                    return proc
        return None

    grandchild: psutil.Process = wait_for(settled)
    assert len(cgroups.pids(svc)) == 2
    assert os.getsid(grandchild.pid) not in (os.getsid(child.pid), os.getsid(0))
    assert grandchild.ppid() != child.pid  # reparented: nothing links it to the child now

    child.kill()
    child.wait(timeout=10)
    assert cgroups.pids(svc) == [grandchild.pid]
    assert not cgroups.empty(svc)

    assert cgroups.kill(svc, GATE)
    assert cgroups.remove(svc)
    assert not svc.exists()
    assert not base.exists()  # its last service is gone
    assert not procfs.running(grandchild)


@pytest.mark.parametrize("kill_file", [True, False], ids=["cgroup.kill", "freeze-and-signal"])
def test_kill_ends_a_forking_crowd(base: Path, start: Start, kill_file: bool) -> None:
    svc = cgroups.service_dir(base, "crowd")
    parent = start([*prelude(svc), sys.executable, "-c", FORKER], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    assert parent.stdout.readline() == "ready\n"
    crowd = [psutil.Process(pid) for pid in cgroups.pids(svc)]
    assert len(crowd) >= 201

    assert cgroups.kill(svc, GATE, kill_file=kill_file)
    assert cgroups.pids(svc) == []
    assert not any(procfs.running(proc) for proc in crowd)
    assert (svc / "cgroup.events").read_text().split()[-2:] == ["frozen", "0"]  # thawed again
    assert cgroups.remove(svc, timeout=5)
    assert not svc.exists()


def test_a_stop_signal_reaches_every_member(base: Path, start: Start, tmp_path: Path) -> None:
    svc = cgroups.service_dir(base, "terminated")
    leader = start([*prelude(svc), sys.executable, "-c", TERMINATED, str(tmp_path)])
    wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 6)
    members = cgroups.pids(svc)
    assert {f"ready-{pid}" for pid in members} == {p.name for p in tmp_path.glob("ready-*")}

    assert cgroups.signal_all(svc, signal.SIGTERM, GATE) == 6
    # Nothing else is sent: each member is gone because SIGTERM reached it.
    assert leader.wait(timeout=10) == -signal.SIGTERM
    assert cgroups.wait_empty(svc, timeout=10), f"still there: {cgroups.pids(svc)}"


def test_usage(base: Path, start: Start) -> None:
    svc = cgroups.service_dir(base, "user")
    proc = start([*prelude(svc), sys.executable, "-c", USER], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    used = cgroups.usage(svc)
    assert used.processes == 3
    assert used.memory_bytes > 40 << 20
    assert used.cpu_seconds >= 0
    if (svc / "cpu.stat").exists():
        assert used.cpu_seconds > 0


def test_leftovers_are_found_and_ended(base: Path, start: Start) -> None:
    stack = base.name
    assert cgroups.leftovers(stack) == []
    web, worker = cgroups.service_dir(base, "web"), cgroups.service_dir(base, "worker")
    start([*prelude(web), "sleep", "300"])
    wait_for(lambda: cgroups.pids(web))
    assert cgroups.leftovers(stack) == [web, worker]

    for path in cgroups.leftovers(stack):  # `down` with no state db
        assert cgroups.kill(path, GATE)
        assert cgroups.remove(path)
    assert cgroups.leftovers(stack) == []
    assert not base.exists()


def test_a_gone_cgroup_is_no_error(base: Path) -> None:
    gone = base / "never-made"
    assert cgroups.pids(gone) == []
    assert cgroups.empty(gone)
    assert cgroups.kill(gone, GATE)
    assert cgroups.remove(gone)
    assert cgroups.usage(gone) == cgroups.Usage(0, 0.0, 0)


def test_a_cgroup_a_service_makes_below_its_own_is_counted_and_killed(base: Path, start: Start) -> None:
    svc = cgroups.service_dir(base, "nesting")
    inner = svc / "worker"
    inner.mkdir()
    outer_proc = start([*prelude(svc), "sleep", "300"])
    inner_proc = start([*prelude(inner), "sleep", "300"])
    wait_for(lambda: set(cgroups.pids(svc)) == {outer_proc.pid, inner_proc.pid})
    assert cgroups.pids(inner) == [inner_proc.pid]
    assert cgroups.kill(svc, GATE)
    assert cgroups.remove(svc) and not svc.exists()


def test_priming_moves_nothing(base: Path, tmp_path: Path) -> None:
    """`prime` writes our pid where we already are: we stay, and a child joins as before."""
    before = Path("/proc/self/cgroup").read_text()
    cgroups.prime(base)
    assert Path("/proc/self/cgroup").read_text() == before
    svc = cgroups.service_dir(base, "web")
    done = subprocess.run(
        [*prelude(svc), "/bin/cat", "/proc/self/cgroup"], capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0 and done.stdout.rstrip().endswith(f"/{base.name}/web")
    # Where no cgroup is, it writes nothing, creates nothing and raises nothing.
    fake = tmp_path / "own" / cgroups.TOP / "stack"
    fake.mkdir(parents=True)
    cgroups.prime(fake)
    assert sorted(p.name for p in (tmp_path / "own").iterdir()) == [cgroups.TOP]
