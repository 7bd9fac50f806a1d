"""Process hygiene in the corners: graceful stops of whole groups, probes, slow terminals, races."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    SLEEP,
    Start,
    alive,
    async_wait_for,
    children_rows,
    cli,
    client,
    running_stack,
    supervisor_pid,
    until_state,
    wait_for,
    write_program,
    write_stack,
)

from stackvisor.errors import ActionConflict
from stackvisor.paths import StackPaths
from stackvisor.runtime.state import StateDB

pytestmark = pytest.mark.timeout(60)


async def test_the_grace_period_covers_the_whole_group(tmp_path: Path) -> None:
    done = tmp_path / "cleaned-up"
    write_program(
        tmp_path,
        "worker.py",
        f"""
        import signal, sys, time
        def bye(*_):
            time.sleep(1.0)  # a slow, orderly shutdown
            open({str(done)!r}, "w").write("ok")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        print("working", flush=True)
        while True:
            time.sleep(1)
        """,
    )
    # A compound command: the shell dies at once on SIGTERM, the worker needs a second.
    path = write_stack(
        tmp_path,
        "services:\n  w:\n    command: python3 worker.py; echo after\n    stop_timeout: 5s\n"
        "    healthcheck: {log: working}\n",
    )
    async with running_stack(path) as sup:
        await until_state(sup, "w", "healthy")
    assert done.read_text() == "ok"


async def test_an_exec_probe_with_a_background_process_neither_hangs_nor_leaks(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    path = write_stack(
        tmp_path,
        f"""
        services:
          a:
            command: python3 -c "import time; time.sleep(300)"
            healthcheck:
              exec: "sleep 300 & echo $! > {pidfile}; exit 0"
              interval: 200ms
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "a", "healthy", timeout=5)
        await async_wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
        background = int(pidfile.read_text())
        await async_wait_for(lambda: not alive(background), timeout=3)


def test_a_console_nobody_reads_does_not_freeze_the_supervisor(tmp_path: Path, up_process) -> None:
    write_program(
        tmp_path,
        "chatty.py",
        """
        import time
        while True:
            for _ in range(20):
                print("x" * 200, flush=True)
            time.sleep(0.0005)
        """,
    )
    write_stack(tmp_path, "services:\n  chatty: {command: python3 chatty.py}\n")
    read_end, write_end = os.pipe()  # the supervisor's stdout: never read
    try:
        sup = up_process(tmp_path, stdout=write_end)
        api = client(tmp_path, timeout=2)
        wait_for(api.alive, timeout=10)
        log = StackPaths.at(tmp_path).service_log("chatty")
        wait_for(lambda: log.stat().st_size > 1_000_000, timeout=20)
        for _ in range(5):
            started = time.monotonic()
            assert api.get("/v1/status")["services"][0]["state"] == "running"
            assert time.monotonic() - started < 1.0
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_a_restart_racing_the_stop_of_the_stack_starts_nothing(tmp_path: Path) -> None:
    write_program(
        tmp_path,
        "slow.py",
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), sys.exit(0)))
        print("ready", flush=True)
        time.sleep(300)
        """,
    )
    path = write_stack(
        tmp_path,
        "services:\n  slow: {command: python3 slow.py, stop_timeout: 5s, healthcheck: {log: ready}}\n",
    )
    async with running_stack(path) as sup:
        await until_state(sup, "slow", "healthy")
        restart = asyncio.create_task(sup.restart_services(["slow"]))
        await until_state(sup, "slow", "stopping")  # the restart is now stopping the service
        sup.request_stop("racing")
        with contextlib.suppress(ActionConflict):
            await restart
    rows = children_rows(tmp_path)
    assert len(rows) == 1 and not alive(rows[0]["pid"])


def test_down_never_ends_a_group_whose_leader_is_not_the_recorded_process(
    tmp_path: Path, start: Start
) -> None:
    write_stack(tmp_path, "services:\n  a: {command: x}\n", programs=False)
    # A job of somebody else's: its group leader has exited, a member lives on.
    job = start(["sh", "-c", "sleep 300 & echo $!"], stdout=subprocess.PIPE, own_group=True)
    assert job.stdout is not None
    member = int(job.stdout.readline())
    job.wait()
    db = StateDB.open(StackPaths.at(tmp_path).state_db, 999_999)
    # A stale row claiming that group, from a supervisor long gone.
    db.child_started("a", job.pid, job.pid, time.time() - 1000, None, "999999-1.00-1/a/1")
    db.close()
    assert cli("down", cwd=tmp_path).returncode == 0
    assert alive(member)


def test_a_stack_can_be_stopped_while_its_file_is_broken(tmp_path: Path, detached) -> None:
    write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n')
    up = detached(tmp_path)
    pid = supervisor_pid(tmp_path)
    assert up.returncode == 0, up.stderr
    child = children_rows(tmp_path)[0]["pid"]
    (tmp_path / "services.yaml").write_text("services: [\n")
    assert cli("status", cwd=tmp_path).returncode == 0
    down = cli("down", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not alive(child) and not alive(pid), timeout=5)


def test_exit_with_refuses_what_is_not_a_pid(tmp_path: Path) -> None:
    write_stack(tmp_path, "services:\n  a: {command: x}\n", programs=False)
    for bad in ("-5", "0", "abc"):
        result = cli("up", "-d", "--exit-with", bad, cwd=tmp_path)
        assert result.returncode == 2 and "expected a process id" in result.stderr
        assert "Traceback" not in result.stderr
    assert supervisor_pid(tmp_path) is None
