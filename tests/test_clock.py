"""Delays on an injected clock: backoff, health retries and the lease, in milliseconds of real time.

The services are real processes; only time is fake, so a 30 s backoff or three failed
probes 10 s apart are checked without waiting for them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import async_wait_for, free_ports, running_stack, transitions, until_state, write_stack

from stackvisor.runtime.clock import FakeClock
from stackvisor.runtime.supervisor import Lease

PY = "python3"


async def test_fake_clock_wakes_sleepers_in_order() -> None:
    clock = FakeClock(start=100.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 5), ("early", 1), ("zero", 0))]
    await async_wait_for(lambda: clock.sleepers == 2 and woke == ["zero"])
    clock.advance(1)
    await async_wait_for(lambda: woke == ["zero", "early"])
    assert clock.now() == 101.0
    clock.advance(4)
    await asyncio.gather(*tasks)
    assert woke == ["zero", "early", "late"]


async def test_a_thirty_second_backoff_passes_when_the_clock_says_so(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path,
        f"""
        services:
          crash:
            command: {PY} -c "raise SystemExit(1)"
            backoff: {{initial: 30s, max: 60s}}
            max_restarts: 1
        """,
        programs=False,
    )
    clock = FakeClock()
    async with running_stack(path, clock=clock) as sup:
        await until_state(sup, "crash", "backoff")
        await async_wait_for(lambda: clock.sleepers >= 1)
        assert sup.runners["crash"].status()["restarts"] == 1
        clock.advance(29.9)
        await asyncio.sleep(0)  # nothing may happen before the delay is over
        assert str(sup.runners["crash"].state) == "backoff"
        clock.advance(0.1)
        await until_state(sup, "crash", "failed")
        assert transitions(sup, "crash") == [
            "pending",
            "starting",
            "running",
            "backoff",
            "starting",
            "running",
            "failed",
        ]


async def test_health_retries_count_on_the_clock(tmp_path: Path) -> None:
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
            restart: "no"
            healthcheck:
              http: "http://127.0.0.1:${{PORT}}/"
              interval: 10s
              retries: 3
        """,
    )
    clock = FakeClock()
    async with running_stack(path, clock=clock) as sup:
        # Before the first success, probes come every start_interval (20 ms of the clock).
        while str(sup.runners["api"].state) != "healthy":
            await async_wait_for(lambda: clock.sleepers >= 1 or str(sup.runners["api"].state) == "healthy")
            clock.advance(0.02)
        sick.touch()
        for failures in range(3):
            assert str(sup.runners["api"].state) == "healthy", failures
            await async_wait_for(lambda: clock.sleepers >= 1)
            clock.advance(10)
        await until_state(sup, "api", "unhealthy")
        # `restart: no`: it keeps running, and recovers when its check passes again.
        sick.unlink()
        await async_wait_for(lambda: clock.sleepers >= 1)
        clock.advance(10)
        await until_state(sup, "api", "healthy")


async def test_the_lease_ends_the_stack_when_no_heartbeat_comes(tmp_path: Path) -> None:
    path = write_stack(
        tmp_path, f"services:\n  a: {{command: {PY} -c 'import time; time.sleep(300)'}}\n", programs=False
    )
    clock = FakeClock()
    async with running_stack(path, clock=clock, lease=Lease(seconds=60)) as sup:
        await until_state(sup, "a", "running")
        await async_wait_for(lambda: clock.sleepers >= 1)
        clock.advance(59)
        await asyncio.sleep(0)
        assert not sup.stopping
        assert sup.heartbeat() == 60
        clock.advance(59)  # the heartbeat moved the deadline to 119
        await async_wait_for(lambda: clock.sleepers >= 1)
        assert not sup.stopping
        clock.advance(2)
        await async_wait_for(lambda: sup.stopping)
        await until_state(sup, "a", "stopped")
