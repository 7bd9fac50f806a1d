"""Children born in their cgroup (`clone3(CLONE_INTO_CGROUP)` through the helper): real
helpers, real children, real cgroups. They skip where cgroup v2 is not writable here,
and where this kernel cannot create a process into a cgroup, saying so. Every helper
and child is ended at the end, also when a test fails."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import async_wait_for, running_stack, until_state, wait_for, write_stack

from stackvisor.app import serve
from stackvisor.config import load_config
from stackvisor.config.users import resolve_user
from stackvisor.errors import AlreadyRunning
from stackvisor.runtime.logs import Console
from stackvisor.runtime.process import Spawner
from stackvisor.runtime.supervisor import Supervisor
from stackvisor.system import cgroups
from stackvisor.system.cgspawn import CgroupSpawner, Unsupported
from stackvisor.system.signals import SignalGate

# What a child sees of itself, as JSON on its output.
FACTS = textwrap.dedent("""
    import json, os, socket
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))  # the listing's own fd too
    facts = {
        "pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "cwd": os.getcwd(),
        "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
        "cgroup": open("/proc/self/cgroup").read(), "fds": fds[:-1],
        "stdin": os.readlink("/proc/self/fd/0"),
        "listen": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
    }
    if facts["listen"]:
        facts["port"] = socket.socket(fileno=3).getsockname()[1]
    print(json.dumps(facts), flush=True)
""")


@pytest.fixture
def helper() -> Iterator[CgroupSpawner]:
    births = CgroupSpawner.start()
    assert births is not None
    try:
        yield births
    finally:
        births.close()
        assert births.helper.returncode is not None


def born(helper: CgroupSpawner, cgroup: Path, argv: list[str], **kw: Any) -> tuple[int, str]:
    """(exit code, output) of a child born through `helper`: it is our own child."""
    try:
        pid, out = asyncio.run(helper.spawn(argv[0], argv, {"PATH": os.environ["PATH"]}, cgroup, **kw))
    except Unsupported as exc:
        pytest.skip(f"this kernel cannot start a process into a cgroup: {exc}")
    os.set_blocking(out, True)
    with os.fdopen(out, "rb") as output:
        text = output.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), text


def facts(helper: CgroupSpawner, cgroup: Path, **kw: Any) -> dict[str, Any]:
    code, text = born(helper, cgroup, [sys.executable, "-I", "-S", "-c", FACTS], **kw)
    assert code == 0, text
    return json.loads(text)


def test_a_child_is_born_in_its_cgroup_as_our_own_child(
    base: Path, helper: CgroupSpawner, tmp_path: Path
) -> None:
    svc = cgroups.service_dir(base, "api")
    seen = facts(helper, svc, cwd=str(tmp_path))
    ours = cgroups.own_cgroup(Path("/proc/self/cgroup").read_text())
    assert ours is not None
    assert cgroups.own_cgroup(seen["cgroup"]) == os.path.join(ours, str(svc.relative_to(cgroups.locate()[1])))
    assert seen["ppid"] == os.getpid()  # CLONE_PARENT: reaped above by waitpid, as any child of ours
    assert seen["sid"] == seen["pid"]  # a session of its own
    assert seen["cwd"] == str(tmp_path)
    assert seen["fds"] == [0, 1, 2] and seen["stdin"] == "/dev/null"  # nothing of the helper's
    assert seen["listen"] == {}
    # Nothing the helper ignores (Python: SIGPIPE, SIGXFSZ) is ignored by the program.
    code, text = born(helper, svc, ["/bin/sh", "-c", "grep SigIgn /proc/self/status"])
    assert (code, text.split()) == (0, ["SigIgn:", "0000000000000000"])


def test_the_listening_socket_is_fd_3_with_the_systemd_variables(base: Path, helper: CgroupSpawner) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        seen = facts(helper, cgroups.service_dir(base, "web"), listener=(listener.fileno(), "web"))
    assert seen["listen"] == {"LISTEN_PID": str(seen["pid"]), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"}
    assert seen["port"] == port and seen["fds"] == [0, 1, 2, 3]


def test_a_child_runs_as_the_user_it_is_given(base: Path, helper: CgroupSpawner) -> None:
    nobody = resolve_user("nobody")
    code, text = born(
        helper, cgroups.service_dir(base, "db"), ["/bin/sh", "-c", "id -u; id -g; id -G"], user=nobody
    )
    assert code == 0, text
    uid, gid, *groups = text.split()
    assert (int(uid), int(gid)) == (nobody.uid, nobody.gid)
    assert sorted(map(int, groups)) == sorted({nobody.gid, *nobody.groups})


def test_a_program_that_cannot_run_exits_as_a_shell_would_and_says_why(
    base: Path, helper: CgroupSpawner, tmp_path: Path
) -> None:
    svc = cgroups.service_dir(base, "broken")
    code, text = born(helper, svc, [str(tmp_path / "missing")])
    assert code == 127 and f"stackvisor: {tmp_path / 'missing'}: cannot run: No such file" in text
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    code, text = born(helper, svc, [str(plain)])
    assert code == 126 and "Permission denied" in text
    with pytest.raises(FileNotFoundError):  # a missing folder is the spawn's own error, as with Popen
        born(helper, svc, ["/bin/true"], cwd=str(tmp_path / "nowhere"))


# Starts a helper, a `sleep` through it into the cgroup given, prints both pids, and waits.
OWNER = textwrap.dedent("""
    import asyncio, os, sys, time
    from pathlib import Path
    from stackvisor.system.cgspawn import CgroupSpawner
    births = CgroupSpawner.start()
    pid, _ = asyncio.run(births.spawn("/bin/sleep", ["sleep", "300"], {}, Path(sys.argv[1]), None))
    print(births.helper.pid, pid, flush=True)
    time.sleep(300)
""")


def test_the_children_and_the_helper_die_with_their_owner(base: Path) -> None:
    svc = cgroups.service_dir(base, "held")
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(svc)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert owner.stdout is not None
        helper_pid, child = map(int, owner.stdout.readline().split())
        assert psutil.Process(child).ppid() == owner.pid
        assert cgroups.pids(svc) == [child]
        owner.kill()  # no chance to clean up: PDEATHSIG does it
        owner.wait()
        wait_for(lambda: not psutil.pid_exists(child) and not psutil.pid_exists(helper_pid), timeout=10)
    finally:
        owner.kill()
        owner.wait()


async def test_a_spawner_whose_helper_is_gone_takes_the_prelude_s_way(base: Path) -> None:
    spawner = Spawner(SignalGate())
    spawner.tracking = cgroups.Tracking("cgroup", "a test's", base)
    spawner.births = CgroupSpawner.start()
    assert spawner.births is not None
    helper = spawner.births.helper
    try:
        helper.kill()
        helper.wait()
        child = await spawner.spawn(
            ["sleep", "300"], env=dict(os.environ), cwd=None, marker="t", service="late"
        )
        try:
            assert spawner.births is None  # told once: every later child joins by the prelude
            assert child.cgroup is not None and child.popen is not None
            cgroup = child.cgroup
            wait_for(lambda: cgroups.pids(cgroup) == [child.pid])
        finally:
            child.kill_now()
            await child.wait()
    finally:
        spawner.release()


async def test_a_spawner_starts_its_helper_and_ends_it_with_the_stack(tmp_path: Path) -> None:
    spawner = Spawner(SignalGate())
    tracking = spawner.track(f"test-{os.getpid()}-helper")
    if tracking.base is None:
        pytest.skip(f"cgroup v2 is not writable here: {tracking.reason}")
    try:
        assert spawner.births is not None
        helper = spawner.births.helper
        child = await spawner.spawn(
            ["sleep", "300"], env=dict(os.environ), cwd=None, marker="t", service="api"
        )
        if spawner.births is None:
            pytest.skip("this kernel cannot start a process into a cgroup")
        assert child.popen is None and psutil.Process(child.pid).ppid() == os.getpid()
        assert cgroups.pids(cgroups.service_dir(tracking.base, "api")) == [child.pid]
        child.signal(signal.SIGTERM)
        assert await child.wait() == -signal.SIGTERM
    finally:
        spawner.release()
    assert helper.returncode is not None and not tracking.base.exists()


async def test_a_service_killed_whole_starts_again(tmp_path: Path) -> None:
    """A stop that ends in SIGKILL writes `cgroup.kill`; on some kernels (6.18 here) any
    process later born into that cgroup is killed at birth. The next start gets the
    cgroup afresh, and its child lives."""
    spawner = Spawner(SignalGate())
    tracking = spawner.track(f"test-{os.getpid()}-killed")
    if tracking.base is None:
        pytest.skip(f"cgroup v2 is not writable here: {tracking.reason}")
    try:
        first = await spawner.spawn(
            ["sleep", "300"], env=dict(os.environ), cwd=None, marker="t", service="ign"
        )
        if spawner.births is None:
            pytest.skip("this kernel cannot start a process into a cgroup")
        first.kill_now()
        assert await first.wait() == -signal.SIGKILL
        for _ in range(2):  # and again, after the cgroup was made afresh
            again = await spawner.spawn(
                ["sleep", "300"], env=dict(os.environ), cwd=None, marker="t", service="ign"
            )
            try:
                assert again.cgroup is not None and cgroups.pids(again.cgroup) == [again.pid]
                await asyncio.sleep(0)  # a child killed at birth is gone by now; poll to be sure
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(again.wait(), 0.3)
            finally:
                again.kill_now()
                await again.wait()
    finally:
        spawner.release()


async def test_a_restart_that_needed_sigkill_runs_the_service_again(tmp_path: Path) -> None:
    """The stack's way to the case above: a service that ignores SIGTERM is restarted
    (SIGKILL after its stop timeout), and its new process runs on."""
    path = write_stack(
        tmp_path,
        """
        services:
          ign:
            command: [sh, -c, "trap '' TERM; touch ignoring; sleep 300"]
            stop_timeout: 200ms
            max_restarts: 1
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "ign", "running")
        if sup.spawner.births is None:
            pytest.skip(f"children are not born in cgroups here ({sup.spawner.tracking.reason})")
        before = sup.runners["ign"].status()["pid"]
        await async_wait_for((tmp_path / "ignoring").exists)  # SIGTERM is ignored from now on
        await sup.restart_services(["ign"])
        await until_state(sup, "ign", "running")
        after = sup.runners["ign"].status()["pid"]
        assert after not in (None, before)
        # Not killed at birth: for a second it stays as it is, the same process.
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.0
        while loop.time() < until:
            status = sup.runners["ign"].status()
            assert (status["state"], status["pid"], status["restarts"]) == ("running", after, 0)
            await asyncio.sleep(0.02)
        assert psutil.Process(after).status() != psutil.STATUS_ZOMBIE


def helpers() -> list[psutil.Process]:
    """Spawn helpers started by this process."""
    return [p for p in psutil.Process().children() if any(a.endswith("cgspawn.py") for a in p.cmdline())]


async def test_a_supervisor_that_finds_its_stack_taken_leaves_no_helper(tmp_path: Path) -> None:
    path = write_stack(tmp_path, "services:\n  api:\n    command: sleep 300\n")
    async with running_stack(path) as first:
        await until_state(first, "api", "running")
        if first.spawner.births is None:
            pytest.skip(f"children are not born in cgroups here ({first.spawner.tracking.reason})")
        service = psutil.Process(first.runners["api"].status()["pid"])
        wait_for(lambda: service.name() == "sleep")  # until it exec'd, it looks like its helper
        before = helpers()
        second = Supervisor(load_config(path), console=Console(None, colour=False))
        with pytest.raises(AlreadyRunning):
            await serve(second, [])
        assert second.spawner.births is None and helpers() == before
        assert first.runners["api"].running
    assert first.spawner.births is None and helpers() == []


async def test_a_spawn_cancelled_while_the_helper_works_leaves_no_child(tmp_path: Path) -> None:
    spawner = Spawner(SignalGate())
    tracking = spawner.track(f"test-{os.getpid()}-cancelled")
    if tracking.base is None or spawner.births is None:
        pytest.skip(f"cgroup v2 is not writable here: {tracking.reason}")
    ended: list[int] = []
    end = spawner.births.abandoned
    spawner.births.abandoned = lambda pid: (ended.append(pid), end(pid))[-1]
    try:
        env = dict(os.environ)
        task = asyncio.create_task(
            spawner.spawn(["sleep", "300"], env=env, cwd=None, marker="t", service="api")
        )
        await asyncio.sleep(0)  # the request is on its way: the helper will start the child
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await async_wait_for(lambda: ended, timeout=10)
        if spawner.births is None:
            pytest.skip("this kernel cannot start a process into a cgroup")
        await async_wait_for(lambda: not psutil.pid_exists(ended[0]))  # killed and reaped: no zombie
        assert cgroups.pids(cgroups.service_dir(tracking.base, "api")) == []
    finally:
        spawner.release()


def test_many_spawns_at_once_each_get_their_own_child(base: Path, helper: CgroupSpawner) -> None:
    """Requests go out without waiting for each other's answer: each answer still names
    the child of its own request (its output says which request it came from)."""
    svc = cgroups.service_dir(base, "crowd")

    async def crowd() -> list[tuple[int, int]]:
        env = {"PATH": os.environ["PATH"]}
        starts = [helper.spawn("/bin/sh", ["/bin/sh", "-c", f"echo $$ {n}"], env, svc) for n in range(20)]
        return await asyncio.gather(*starts)

    try:
        born = asyncio.run(crowd())
    except Unsupported as exc:
        pytest.skip(f"this kernel cannot start a process into a cgroup: {exc}")
    for n, (pid, out) in enumerate(born):
        os.set_blocking(out, True)
        with os.fdopen(out, "rb") as output:
            assert output.read().decode().split() == [str(pid), str(n)]
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
