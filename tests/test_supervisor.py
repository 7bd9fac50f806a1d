"""The supervisor in this process with real children: dependency gates, health, restarts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from conftest import (
    async_wait_for,
    children_rows,
    event_time,
    free_ports,
    running_stack,
    transitions,
    until_state,
    write_stack,
)

pytestmark = pytest.mark.timeout(60)

PY = "python3"


def started_at(root: Path) -> dict[str, float]:
    """Each service's first process start (seconds since boot, in clock ticks), from state.db."""
    out: dict[str, float] = {}
    for row in children_rows(root):
        out.setdefault(row["service"], row["started"])
    return out


async def test_dependency_order_and_service_healthy_gate(tmp_path: Path) -> None:
    db_port, api_port = free_ports(2)
    path = write_stack(
        tmp_path,
        f"""
        services:
          db:
            command: {PY} server.py
            port: {db_port}
            env: {{DELAY: "0.5"}}
            # Failures while it starts never count, however slow the machine: the
            # first verdict is healthy, and only then may api start.
            healthcheck: {{tcp: "127.0.0.1:${{PORT}}", interval: 200ms, start_period: 60s}}
          api:
            command: {PY} server.py
            port: {api_port}
            depends_on:
              db: {{condition: service_healthy}}
            env: {{DB: "${{DB_PORT}}"}}
            healthcheck: {{http: "http://127.0.0.1:${{PORT}}/", interval: 200ms}}
          web:
            command: {PY} -c "import time; print('web up', flush=True); time.sleep(60)"
            depends_on: [api]
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "web", "running")
        await until_state(sup, "api", "healthy")
        starts = started_at(tmp_path)  # process start times, in clock ticks
        assert starts["db"] <= starts["api"] <= starts["web"]
        assert event_time(sup, "db", "starting") < event_time(sup, "api", "starting")
        assert event_time(sup, "api", "starting") < event_time(sup, "web", "starting")
        # api was not started before db was healthy
        assert event_time(sup, "api", "starting") >= event_time(sup, "db", "healthy")
        assert transitions(sup, "db")[:3] == ["pending", "starting", "healthy"]
        status = {s["name"]: s for s in sup.status()["services"]}
        assert status["api"]["port"] == api_port and status["api"]["health"] == "healthy"


async def test_independent_services_do_not_wait_for_each_other(tmp_path: Path) -> None:
    slow, fast = free_ports(2)
    go = tmp_path / "go"
    path = write_stack(
        tmp_path,
        f"""
        services:
          slow:
            command: {PY} server.py
            port: {slow}
            env: {{GO: "{go}"}}
            healthcheck: {{tcp: "127.0.0.1:${{PORT}}"}}
          slow_dependent:
            command: {PY} -c "import time; time.sleep(60)"
            depends_on: {{slow: {{condition: service_healthy}}}}
          fast:
            command: {PY} server.py
            port: {fast}
            healthcheck: {{tcp: "127.0.0.1:${{PORT}}"}}
          fast_dependent:
            command: {PY} -c "import time; time.sleep(60)"
            depends_on: {{fast: {{condition: service_healthy}}}}
        """,
    )
    async with running_stack(path) as sup:
        # slow binds its port only when told to: until then it cannot be healthy.
        await until_state(sup, "fast_dependent", "running")
        go.touch()
        await until_state(sup, "slow_dependent", "running")
        # Not level by level: fast's dependent ran before slow was even healthy.
        assert event_time(sup, "fast_dependent", "starting") < event_time(sup, "slow", "healthy")


async def test_completed_successfully_gate(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path,
        f"""
        services:
          setup:
            command: {PY} -c "import time; time.sleep(0.3); print('migrated')"
          api:
            command: {PY} -c "import time; time.sleep(60)"
            depends_on: {{setup: {{condition: service_completed_successfully}}}}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "api", "running")
        assert str(sup.runners["setup"].state) == "completed"
        assert event_time(sup, "api", "starting") >= event_time(sup, "setup", "completed")
        assert sup.runners["setup"].status()["restarts"] == 0


async def test_failed_dependency_fails_its_dependents(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path,
        f"""
        services:
          setup:
            command: {PY} -c "raise SystemExit(3)"
            restart: "no"
          api:
            command: {PY} -c "import time; time.sleep(60)"
            depends_on: {{setup: {{condition: service_completed_successfully}}}}
          web:
            command: {PY} -c "import time; time.sleep(60)"
            depends_on: [api]
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "web", "failed")
        assert str(sup.runners["setup"].state) == "exited"
        assert sup.runners["setup"].status()["exit_code"] == 3
        assert "setup" in sup.runners["api"].reason
        assert "api" in sup.runners["web"].reason
        assert not [r for r in children_rows(tmp_path) if r["service"] in ("api", "web")]


async def test_crash_loop_backs_off_then_fails_with_last_lines(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path,
        f"""
        services:
          crash:
            command: {PY} -c "print('about to crash', flush=True); raise SystemExit(1)"
            max_restarts: 3
            backoff: {{initial: 100ms, max: 300ms}}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "crash", "failed", timeout=15)
        delays = [e.data["delay"] for e in sup.bus.backlog if e.kind == "restart"]
        assert delays == [0.1, 0.2, 0.3]
        assert len(children_rows(tmp_path)) == 4
        failed = [e for e in sup.bus.backlog if e.kind == "state" and e.data["new"] == "failed"][-1]
        assert "gave up after 3 restarts" in failed.data["reason"]
        assert "about to crash" in failed.data["logs"]
        # The restarts really waited: each backoff lasted at least its delay.
        backoffs = [e.ts for e in sup.bus.backlog if e.kind == "state" and e.data["new"] == "backoff"]
        starts = [e.ts for e in sup.bus.backlog if e.kind == "state" and e.data["new"] == "starting"]
        for entered, left, delay in zip(backoffs, starts[1:], delays, strict=True):
            assert left - entered >= delay - 0.01


async def test_unhealthy_service_is_restarted(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    sick = tmp_path / "sick"
    path = write_stack(
        tmp_path,
        f"""
        services:
          api:
            command: {PY} server.py
            port: {port}
            env: {{SICK: "{sick}"}}
            healthcheck: {{http: "http://127.0.0.1:${{PORT}}/", interval: 100ms, retries: 2}}
            backoff: {{initial: 100ms}}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "api", "healthy")
        first_pid = sup.runners["api"].status()["pid"]
        sick.touch()
        await until_state(sup, "api", "unhealthy")
        sick.unlink()
        await async_wait_for(
            lambda: (
                sup.runners["api"].status()["pid"] != first_pid and str(sup.runners["api"].state) == "healthy"
            )
        )
        assert sup.runners["api"].status()["restarts"] == 1
        seen = transitions(sup, "api")
        assert seen[seen.index("unhealthy") :][:4] == ["unhealthy", "stopping", "backoff", "starting"]


async def test_restart_no_keeps_an_unhealthy_service_running(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    sick = tmp_path / "sick"
    sick.touch()
    path = write_stack(
        tmp_path,
        f"""
        services:
          api:
            command: {PY} server.py
            port: {port}
            restart: "no"
            env: {{SICK: "{sick}"}}
            healthcheck: {{http: "http://127.0.0.1:${{PORT}}/", interval: 100ms, retries: 2}}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "api", "unhealthy")
        pid = sup.runners["api"].status()["pid"]
        sick.unlink()
        await until_state(sup, "api", "healthy")
        assert sup.runners["api"].status()["pid"] == pid


async def test_up_selection_starts_only_the_closure(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path,
        f"""
        services:
          db: {{command: "{PY} -c 'import time; time.sleep(60)'"}}
          api: {{command: "{PY} -c 'import time; time.sleep(60)'", depends_on: [db]}}
          other: {{command: "{PY} -c 'import time; time.sleep(60)'"}}
        """,
    )
    async with running_stack(path, "api") as sup:
        await until_state(sup, "api", "running")
        assert str(sup.runners["db"].state) == "running"
        assert str(sup.runners["other"].state) == "stopped"
        assert {r["service"] for r in children_rows(tmp_path)} == {"db", "api"}


async def test_port_variables_reach_command_env_and_dependents(tmp_path: Path) -> None:
    db_port, api_port = free_ports(2)
    out = tmp_path / "env.txt"
    path = write_stack(
        tmp_path,
        f"""
        services:
          db:
            command: {PY} server.py
            port: {db_port}
            healthcheck: {{tcp: "${{PORT}}"}}
          api:
            command: sh -c 'echo "$PORT $DB_PORT $$URL $API_PORT" > {out}; sleep 60'
            port: {api_port}
            env: {{URL: "redis://127.0.0.1:${{DB_PORT}}"}}
            depends_on: {{db: {{condition: service_healthy}}}}
        """,
    )
    async with running_stack(path) as sup:
        await async_wait_for(lambda: out.exists() and out.read_text().strip())
        assert out.read_text().split() == [
            str(api_port),
            str(db_port),
            f"redis://127.0.0.1:{db_port}",
            str(api_port),
        ]
        assert str(sup.runners["api"].state) == "running"


async def test_programs_are_found_from_the_working_dir_and_missing_ones_fail_clearly(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    script = sub / "run.sh"
    script.write_text("#!/bin/sh\necho ran from $(pwd)\nsleep 60\n")
    script.chmod(0o755)
    (sub / "notexec.sh").write_text("#!/bin/sh\n")
    path = write_stack(
        tmp_path,
        """
        services:
          relative: {command: ["./run.sh"], working_dir: sub}
          missing: {command: ["no-such-program-here"]}
          denied: {command: ["./notexec.sh"], working_dir: sub}
        """,
    )
    async with running_stack(path) as sup:
        await until_state(sup, "relative", "running")
        await until_state(sup, "missing", "failed")
        await until_state(sup, "denied", "failed")
        assert (
            "cannot start 'no-such-program-here': No such file or directory" in sup.runners["missing"].reason
        )
        assert "Permission denied" in sup.runners["denied"].reason
        await async_wait_for(lambda: any("ran from" in line for line in sup.runners["relative"].log.last(5)))
        assert sup.runners["missing"].status()["restarts"] == 0


async def test_a_command_the_shell_cannot_find_fails_at_once(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path, "services:\n  web: {command: no-such-program-here --flag, restart: always}\n"
    )
    async with running_stack(path) as sup:
        await until_state(sup, "web", "failed")
        status = sup.runners["web"].status()
        assert status["restarts"] == 0
        assert status["reason"].startswith("command not found (exit code 127)")


async def test_a_working_dir_gone_since_the_file_was_read_fails_at_once_saying_so(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    path = write_stack(
        tmp_path, "services:\n  web: {command: sleep 300, working_dir: site, restart: always}\n"
    )
    async with running_stack(path) as sup:
        await until_state(sup, "web", "running")
        (tmp_path / "site").rmdir()  # the process keeps its folder; the next start has none
        pid = sup.runners["web"].status()["pid"]
        os.kill(pid, signal.SIGKILL)
        await until_state(sup, "web", "failed")
        assert sup.runners["web"].reason == f"working_dir not found: {tmp_path / 'site'}"
        assert sup.runners["web"].status()["restarts"] == 1  # that one restart, no rounds of backoff
