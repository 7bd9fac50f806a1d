"""secure_port and friends against real holders of real ports.

Each test starts its holders through the `spawn` fixture, which kills them all at the
end whatever happens; waits poll with deadlines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from conftest import HOLDER, exit_status, free_port, wait_for

from stackvisor.config.schema import Service, Settings, StackConfig, Strategy
from stackvisor.ports import (
    Action,
    ConflictLevel,
    Ending,
    OwnerSearch,
    PortConflictError,
    PortContext,
    find_owner,
    format_plan,
    is_free,
    plan_stack,
    secure_port,
    terminate_holder,
)
from stackvisor.system import procfs
from stackvisor.system.signals import SignalGate

GRACE = 1.0


def api(port: int | str | None, *alternatives: int, **kw) -> Service:
    return Service(name="api", command="python -m api", port=port, alternative_ports=list(alternatives), **kw)


def context(strategy: Strategy, **kw) -> PortContext:
    return PortContext(strategy=strategy, grace=GRACE, **kw)


async def test_conservative_keeps_a_same_user_holder_and_migrates(spawn) -> None:
    holder = spawn()
    alternative = free_port()
    resolution = await secure_port(api(holder.port, alternative), context(Strategy.CONSERVATIVE))
    assert resolution.port == alternative
    assert resolution.conflict is not None
    assert (resolution.conflict.action, resolution.conflict.outcome) == ("migrate", "ok")
    assert (resolution.conflict.level, resolution.conflict.new_port) == ("high", alternative)
    assert holder.alive()


async def test_conservative_without_alternative_fails_with_an_actionable_message(spawn) -> None:
    holder = spawn()
    with pytest.raises(PortConflictError) as caught:
        await secure_port(api(holder.port), context(Strategy.CONSERVATIVE))
    message = str(caught.value)
    name = psutil.Process(holder.pid).name()
    assert f"port {holder.port} is held by pid {holder.pid} ({name}, user root, started " in message
    assert "level high" in message
    assert "give api alternative_ports, or run with --strategy aggressive to end it." in message
    record = caught.value.record
    assert (record.holder_pid, record.action, record.outcome) == (holder.pid, "fail", "failed: unresolved")
    assert holder.alive()


# A server that forks a worker (both in the server's own group), then holds the port.
FORKING_HOLDER = HOLDER.replace("s.listen(16)\n", "s.listen(16)\nif os.fork() == 0:\n    time.sleep(3600)\n")


async def test_aggressive_ends_the_holder_and_the_group_it_leads(start) -> None:
    server = start(
        [sys.executable, "-c", FORKING_HOLDER, "127.0.0.1", "0"], stdout=subprocess.PIPE, own_group=True
    )
    assert server.stdout is not None
    _, port, pid = server.stdout.readline().split()
    (worker,) = psutil.Process(int(pid)).children()
    resolution = await secure_port(api(int(port), free_port()), context(Strategy.AGGRESSIVE))
    assert resolution.port == int(port)
    assert resolution.conflict is not None
    assert (resolution.conflict.action, resolution.conflict.outcome) == ("terminate", "ok")
    assert is_free(int(port))
    assert await exit_status(server) is not None
    wait_for(
        lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    )  # it went with the group


async def test_a_group_the_holder_does_not_lead_is_never_signalled(spawn) -> None:
    """A CI script (its group's leader) starts a server in the background, then asks for
    its port: the server is ended, the script and the rest of its group never are."""
    holder = spawn(shell_parent=True)
    shell = psutil.Process(holder.proc.pid)
    assert os.getpgid(holder.pid) == shell.pid != holder.pid
    resolution = await secure_port(api(holder.port, free_port()), context(Strategy.AGGRESSIVE))
    assert resolution.port == holder.port
    assert resolution.conflict is not None
    assert (resolution.conflict.action, resolution.conflict.outcome) == ("terminate", "ok")
    assert is_free(holder.port)
    assert not holder.alive()
    # The shell was not signalled: it exits by itself, 0, once `wait` returns, where the
    # group's signal would have ended it (-15).
    assert await exit_status(holder.proc) == 0


@pytest.mark.parametrize(
    "step", [0.0, 2.0, -1.0], ids=["steady clock", "clock stepped on", "clock stepped back"]
)
async def test_aggressive_escalates_to_sigkill_after_the_grace_period(spawn, clock_step, step: float) -> None:
    """A wall clock stepped while the holder is being ended (the boot time that wall-clock
    start times are built on moves with it) must not make it look gone: identity is
    counted from the boot."""
    holder = spawn(ignore_term=True)
    ctx = context(Strategy.AGGRESSIVE)
    ctx.grace = 0.3
    clock_step(step)
    resolution = await secure_port(api(holder.port), ctx)
    assert resolution.port == holder.port
    assert await exit_status(holder.proc) == -9


async def test_a_group_member_that_ignores_sigterm_is_killed_after_its_shell_left(spawn, clock_step) -> None:
    holder = spawn(shell_parent=True, ignore_term=True)  # the shell ends on SIGTERM, the server not
    ctx = context(Strategy.AGGRESSIVE)
    ctx.grace = 0.3
    clock_step(1.0)
    resolution = await secure_port(api(holder.port), ctx)
    assert (resolution.port, resolution.conflict.outcome) == (holder.port, "ok")
    assert is_free(holder.port)
    assert not holder.alive()


async def test_intelligent_migrates_when_an_alternative_exists(spawn) -> None:
    holder = spawn("127.0.0.1", 0, "uvicorn")
    alternative = free_port()
    resolution = await secure_port(api(holder.port, alternative), context(Strategy.INTELLIGENT))
    assert resolution.port == alternative
    assert resolution.conflict.level == "medium"
    assert holder.alive()


async def test_intelligent_ends_an_idle_dev_server_when_no_alternative_exists(spawn) -> None:
    holder = spawn("127.0.0.1", 0, "uvicorn")
    resolution = await secure_port(api(holder.port), context(Strategy.INTELLIGENT))
    assert resolution.port == holder.port
    assert (resolution.conflict.level, resolution.conflict.action) == ("medium", "terminate")
    assert is_free(holder.port)
    assert await exit_status(holder.proc) is not None


async def test_intelligent_keeps_a_dev_server_with_established_connections(spawn) -> None:
    holder = spawn("127.0.0.1", 0, "uvicorn")
    with (
        socket.create_connection(("127.0.0.1", holder.port)),
        pytest.raises(PortConflictError) as caught,
    ):
        await secure_port(api(holder.port), context(Strategy.INTELLIGENT))
    assert "1 established connection)" in str(caught.value)
    assert holder.alive()


@pytest.mark.parametrize("strategy", list(Strategy))
async def test_a_stale_child_is_removed_by_every_strategy(spawn, strategy: Strategy) -> None:
    holder = spawn()
    started = procfs.started(holder.pid)
    assert started is not None
    ctx = context(strategy, known_children={(holder.pid, started)})
    resolution = await secure_port(api(holder.port, free_port()), ctx)
    assert resolution.port == holder.port
    assert (resolution.conflict.level, resolution.conflict.action) == ("low", "terminate")
    assert await exit_status(holder.proc) is not None


async def test_a_process_pattern_match_is_removed(spawn) -> None:
    holder = spawn("127.0.0.1", 0, "api-server")
    service = api(holder.port, free_port(), process_patterns=["api-server"])
    resolution = await secure_port(service, context(Strategy.CONSERVATIVE))
    assert (resolution.port, resolution.conflict.level) == (holder.port, "low")
    assert await exit_status(holder.proc) is not None


@pytest.mark.parametrize("strategy", list(Strategy))
async def test_another_users_holder_is_never_signalled(spawn, strategy: Strategy) -> None:
    holder = spawn(user="nobody")
    # Even matching the service's patterns, it stays: nothing says it is ours.
    ctx = context(strategy)
    with pytest.raises(PortConflictError) as caught:
        await secure_port(api(holder.port, process_patterns=["python3"]), ctx)
    assert "another user (nobody)" in str(caught.value)
    assert caught.value.record.level == "critical"
    assert holder.alive()
    alternative = free_port()
    resolution = await secure_port(api(holder.port, alternative), ctx)
    assert resolution.port == alternative
    assert holder.alive()


@pytest.mark.parametrize("strategy", list(Strategy))
async def test_a_recorded_child_of_this_stack_is_ours_whatever_its_user(spawn, strategy: Strategy) -> None:
    """`user: postgres` makes a child of another uid: recorded by this stack (pid and start
    time), it is a stale copy to end, not another user's process to spare."""
    holder = spawn(user="nobody")
    started = procfs.started(holder.pid)
    assert started is not None
    ctx = context(strategy, known_children={(holder.pid, started)})
    resolution = await secure_port(api(holder.port), ctx)
    assert resolution.port == holder.port
    assert resolution.conflict is not None
    assert (resolution.conflict.level, resolution.conflict.action) == ("low", "terminate")
    assert await exit_status(holder.proc) is not None


async def test_a_recycled_pid_is_not_signalled(spawn) -> None:
    holder = spawn()
    owner = find_owner(holder.port)
    # Same pid, another start time: what a recycled pid looks like to a stale scan.
    stale = replace(owner, started=owner.started - 30.0)
    ctx = context(Strategy.AGGRESSIVE)
    result = await terminate_holder(stale, ctx.policy(), GRACE, ctx.gate)
    assert result.ending is Ending.REFUSED
    assert result.outcome.startswith("failed: not signalled: pid")
    assert holder.alive()


async def test_the_signal_gate_spares_another_users_holder_even_when_the_policy_would_not(spawn) -> None:
    holder = spawn(user="nobody")
    owner = find_owner(holder.port)
    ctx = context(Strategy.AGGRESSIVE)
    # A policy that takes nobody for the supervisor's user: the port rules would end it,
    # the gate does not.
    lenient = replace(ctx.policy(), uid=owner.uid)
    result = await terminate_holder(owner, lenient, GRACE, SignalGate())
    assert result.ending is Ending.REFUSED
    assert result.outcome.startswith(f"failed: not signalled: the signal gate refuses pid {holder.pid}")
    assert holder.alive()


class RecordingGate(SignalGate):
    """The real gate, also noting every signal it was asked to send."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, int, int]] = []

    def send(self, pid: int, sig: int, *, ours: bool = False) -> bool:
        self.asked.append(("pid", pid, sig))
        return super().send(pid, sig, ours=ours)

    def send_group(self, pgid: int, sig: int) -> bool:
        self.asked.append(("group", pgid, sig))
        return super().send_group(pgid, sig)


async def test_terminations_go_through_the_contexts_gate_and_search(spawn, tmp_path: Path) -> None:
    holder = spawn()
    gate, search = RecordingGate(), OwnerSearch()
    config = StackConfig(
        name="demo",
        path=tmp_path / "services.yaml",
        settings=Settings(strategy=Strategy.AGGRESSIVE),
        services={"api": Service(command="x", port=holder.port)},
    )
    ctx = PortContext.from_config(config, owners=search, gate=gate)
    ctx.grace = GRACE
    resolution = await secure_port(config.services["api"], ctx)
    assert (resolution.port, resolution.conflict.outcome) == (holder.port, "ok")
    assert await exit_status(holder.proc) is not None
    assert ("group", holder.pid, signal.SIGTERM) in gate.asked  # it leads its own group
    assert search.sightings.seen  # the holder was found by the context's search


async def test_a_group_shared_with_the_supervisor_is_not_signalled(spawn) -> None:
    holder = spawn(own_group=False)  # in our own process group
    assert os.getpgid(holder.pid) == os.getpgid(0)
    resolution = await secure_port(api(holder.port), context(Strategy.AGGRESSIVE))
    assert resolution.conflict.outcome == "ok"
    assert await exit_status(holder.proc) is not None  # the holder alone; we are still here


async def test_a_protected_holder_is_never_signalled(spawn) -> None:
    holder = spawn("127.0.0.1", 0, "precious-daemon")
    ctx = context(Strategy.AGGRESSIVE, protected=["precious-daemon"])
    with pytest.raises(PortConflictError, match="protected process"):
        await secure_port(api(holder.port), ctx)
    ctx = context(Strategy.AGGRESSIVE, reserved_ports={holder.port})
    with pytest.raises(PortConflictError, match="reserved port"):
        await secure_port(api(holder.port), ctx)
    assert holder.alive()


async def test_the_supervisor_itself_is_never_signalled() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(PortConflictError, match="stackvisor itself"):
            await secure_port(api(port), context(Strategy.AGGRESSIVE))


async def test_no_port_and_auto_port() -> None:
    resolution = await secure_port(api(None), context(Strategy.AGGRESSIVE))
    assert (resolution.port, resolution.conflict) == (None, None)
    reserved = {free_port()}
    resolution = await secure_port(api("auto"), context(Strategy.CONSERVATIVE, reserved_ports=reserved))
    assert isinstance(resolution.port, int) and resolution.port not in reserved
    assert resolution.requested == "auto" and resolution.conflict is None


async def test_free_port_is_used_as_is() -> None:
    port = free_port()
    resolution = await secure_port(api(port, free_port()), context(Strategy.AGGRESSIVE))
    assert (resolution.port, resolution.conflict) == (port, None)


async def test_strategy_precedence(spawn) -> None:
    holder = spawn()
    alternative = free_port()
    service = api(holder.port, alternative, conflict_strategy=Strategy.CONSERVATIVE)
    ctx = context(Strategy.AGGRESSIVE)  # the service's own conservative wins
    assert (await secure_port(service, ctx)).port == alternative
    assert holder.alive()
    ctx.strategy_override = Strategy.AGGRESSIVE  # and a command-line override wins over it
    assert (await secure_port(service, ctx)).port == holder.port
    assert await exit_status(holder.proc) is not None


def test_plan_stack_does_nothing_and_keeps_targets_apart(spawn, tmp_path: Path) -> None:
    holder = spawn("127.0.0.1", 0, "uvicorn")
    spare = [free_port(), free_port()]
    config = StackConfig(
        name="demo",
        path=tmp_path / "services.yaml",
        settings=Settings(strategy=Strategy.CONSERVATIVE, reserved_ports=[spare[0]]),
        services={
            "web": Service(command="x", port=holder.port, alternative_ports=spare),
            "api": Service(command="x", port=holder.port, alternative_ports=spare),
            "worker": Service(command="x"),
        },
    )
    plan = plan_stack(config, None, ())
    assert [(a.service, a.action, a.port) for a in plan] == [
        ("web", Action.MIGRATE, spare[1]),
        ("api", Action.FAIL, None),
        ("worker", Action.USE, None),
    ]
    assert plan[0].level is ConflictLevel.MEDIUM
    assert f"{holder.pid}/" in format_plan(plan)
    aggressive = plan_stack(config, Strategy.AGGRESSIVE, ())
    # web ends the holder and keeps the port, so api (asking for the same) moves.
    assert [(a.action, a.port) for a in aggressive] == [
        (Action.TERMINATE, holder.port),
        (Action.MIGRATE, spare[1]),
        (Action.USE, None),
    ]
    assert holder.alive() and not is_free(holder.port)
