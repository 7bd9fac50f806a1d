"""Port conflicts acted on: the supervisor's entry point before a service starts.

Here: `secure_port` (scan, plan, then terminate / migrate / fail), the termination of a
holder (SIGTERM to its group, SIGKILL after the grace period, wait for the port),
`plan_stack` for `stackvisor ports` and `up --dry-run`, and `listener_pgid_matches`.
The decisions themselves are in `conflicts` (pure); reading the system is in `scan`.

Before any signal the holder is read again and checked against the never-signal rules
with fresh facts, and its start time must equal the scanned one, so a pid recycled
since the scan is never signalled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import psutil

from stackvisor.config.schema import Service, StackConfig, Strategy
from stackvisor.ports import scan
from stackvisor.ports.conflicts import (
    DEFAULT_DEV_PATTERNS,
    Action,
    ConflictRecord,
    PortAction,
    PortConflictError,
    Policy,
    plan_port,
    plan_services,
    untouchable,
)
from stackvisor.ports.scan import Owner

_POLL = 0.02  # seconds between checks while waiting for a process or a port
_KILL_WAIT = 3.0  # how long a SIGKILLed process may take to disappear
_PORT_WAIT = 2.0  # how long a port may stay listed after its holder is gone


@dataclass
class PortContext:
    """What `secure_port` needs besides the service; built once per stack."""

    strategy: Strategy = Strategy.INTELLIGENT  # the stack's default; a service's own wins
    reserved_ports: set[int] = field(default_factory=set)
    protected: list[str] = field(default_factory=list)
    dev_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_DEV_PATTERNS))
    known_children: set[tuple[int, float]] = field(default_factory=set)
    taken: set[int] = field(default_factory=set)  # ports of the other services of the stack
    grace: float = 5.0
    supervisor_pid: int = field(default_factory=os.getpid)
    # A command-line --strategy: wins over both the default and a service's own.
    strategy_override: Strategy | None = None

    def strategy_for(self, service: Service) -> Strategy:
        return self.strategy_override or service.conflict_strategy or self.strategy

    @classmethod
    def from_config(
        cls,
        config: StackConfig,
        strategy_override: Strategy | None = None,
        known_children: Iterable[tuple[int, float]] = (),
        taken: Iterable[int] = (),
    ) -> PortContext:
        settings = config.settings
        dev = settings.dev_server_patterns
        return cls(
            strategy=settings.strategy,
            strategy_override=strategy_override,
            reserved_ports=set(settings.reserved_ports),
            protected=list(settings.protected_processes),
            dev_patterns=list(DEFAULT_DEV_PATTERNS if dev is None else dev),
            known_children=set(known_children),
            taken=set(taken),
        )

    def policy(self) -> Policy:
        """The pure rules, with the facts about the supervisor read now."""
        try:
            uid = psutil.Process(self.supervisor_pid).uids().effective
        except psutil.Error:
            uid = os.geteuid()
        return Policy(
            uid=uid,
            lineage=scan.lineage(self.supervisor_pid),
            reserved_ports=frozenset(self.reserved_ports),
            protected=tuple(self.protected),
            dev_patterns=tuple(self.dev_patterns),
            known_children=frozenset(self.known_children),
            now=time.time(),
        )


@dataclass
class PortResolution:
    service: str
    requested: int | Literal["auto"] | None
    port: int | None  # the port the service will use
    conflict: ConflictRecord | None = None


# --- effects ---------------------------------------------------------------------


def kernel_port(avoid: Iterable[int] = ()) -> int:
    """A port the kernel picks as free (bind port 0 on 127.0.0.1), not one of `avoid`."""
    avoid = set(avoid)
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid and scan.is_free(port):
            return port
    raise OSError("the kernel kept handing out ports that are reserved or taken")


async def wait_port_free(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if await asyncio.to_thread(scan.is_free, port):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL)


async def _wait_gone(targets: Sequence[tuple[int, float | None]], timeout: float) -> list[tuple[int, float | None]]:
    """Wait until every (pid, start time) is gone; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [t for t in targets if scan.same_process(*t)]
        if not alive or time.monotonic() >= deadline:
            return alive
        await asyncio.sleep(_POLL)


def _recheck(owner: Owner, policy: Policy) -> tuple[Owner | None, str | None]:
    """Read the holder again: (fresh facts, None) when it may be signalled,
    (None, None) when it is gone, (None, why) when it must not be signalled."""
    if owner.pid is None or not owner.readable:
        return None, "its owner cannot be read"
    fresh = scan.describe_process(owner.pid, owner.port, owner.established)
    if fresh is None:
        return None, None
    if owner.create_time is None or fresh.create_time is None or abs(fresh.create_time - owner.create_time) > scan.START_TIME_TOLERANCE:
        return None, f"pid {owner.pid} is now another process (started at a different time)"
    why = untouchable(fresh, policy)
    if why is not None:
        return None, why
    return fresh, None


def _safe_group(pgid: int, policy: Policy, port: int) -> list[tuple[int, float | None]] | None:
    """The members of process group `pgid` if every one of them may be signalled, else None."""
    if pgid <= 1:
        return None
    members: list[tuple[int, float | None]] = []
    for pid in scan.group_members(pgid):
        facts = scan.describe_process(pid, port)
        if facts is None:
            continue
        if untouchable(facts, policy) is not None:
            return None
        members.append((pid, facts.create_time))
    return members


def _send(pid: int, pgid: int | None, sig: int) -> None:
    try:
        if pgid is not None:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def terminate_holder(owner: Owner, policy: Policy, grace: float) -> str:
    """End one holder: SIGTERM to its process group (or to it alone when the group holds
    a process that must not be signalled), SIGKILL after `grace`. Returns "ok" or why not.
    """
    fresh, refused = await asyncio.to_thread(_recheck, owner, policy)
    if refused is not None:
        return f"failed: not signalled: {refused}"
    if fresh is None:
        return "ok"  # ended by itself since the scan
    pid = fresh.pid
    assert pid is not None
    group = await asyncio.to_thread(_safe_group, fresh.pgid, policy, owner.port) if fresh.pgid is not None else None
    targets = group if group else [(pid, fresh.create_time)]
    pgid = fresh.pgid if group else None
    _send(pid, pgid, signal.SIGTERM)
    alive = await _wait_gone(targets, grace)
    if not alive:
        return "ok"
    # Escalate, reading everything again first: the grace period is long enough for
    # the holder to change identity (exec into something protected) and for the group
    # to change. Members that exited are skipped by their start time below.
    if scan.same_process(pid, fresh.create_time):
        _, refused = await asyncio.to_thread(_recheck, owner, policy)
        if refused is not None:
            return f"failed: not signalled: {refused}"
    if pgid is not None and await asyncio.to_thread(_safe_group, pgid, policy, owner.port) is not None:
        _send(pid, pgid, signal.SIGKILL)
    else:
        for member, started in alive:
            if scan.same_process(member, started):
                _send(member, None, signal.SIGKILL)
    alive = await _wait_gone(alive, _KILL_WAIT)
    if alive:
        return f"failed: pid {', '.join(str(p) for p, _ in alive)} still alive after SIGKILL"
    return "ok"


# --- entry points ----------------------------------------------------------------


def _holder_hints(ctx: PortContext) -> list[int]:
    return [pid for pid, _ in ctx.known_children]


async def secure_port(service: Service, ctx: PortContext) -> PortResolution:
    """Make the service's port usable before it starts (or restarts).

    Returns the port to use; terminations and migrations are described in
    `conflict` for the history. Raises PortConflictError when the effective strategy
    may not resolve the conflict or termination did not free the port.
    """
    name = service.name or "service"
    if service.port is None:
        return PortResolution(name, None, None, None)
    requested = service.port
    if isinstance(requested, int) and requested not in ctx.taken and scan.is_free(requested):
        # The common case, answered by one netlink query (tens of microseconds).
        return PortResolution(name, requested, requested, None)
    strategy = ctx.strategy_for(service)
    policy = await asyncio.to_thread(ctx.policy)
    if isinstance(requested, int):
        holders = await asyncio.to_thread(scan.find_owners, requested, _holder_hints(ctx))
    else:
        holders = []
    busy = await asyncio.to_thread(scan.listening_ports) if service.candidate_ports() or holders else set()
    plan = plan_port(service, strategy, holders, busy, policy, ctx.taken, name)
    return await carry_out(plan, service, ctx, policy)


async def carry_out(plan: PortAction, service: Service, ctx: PortContext, policy: Policy) -> PortResolution:
    """Act on one service's plan: the only place a port conflict causes a signal."""
    name, requested = plan.service, plan.requested
    if plan.action is Action.USE:
        port = plan.port
        if port == "auto":
            port = await asyncio.to_thread(kernel_port, set(ctx.taken) | set(ctx.reserved_ports))
        return PortResolution(name, requested, port if isinstance(port, int) else None, None)
    if plan.action is Action.MIGRATE:
        assert isinstance(plan.port, int)
        return PortResolution(name, requested, plan.port, ConflictRecord.of(plan, "ok", plan.port))
    if plan.action is Action.FAIL:
        record = ConflictRecord.of(plan, "failed: unresolved")
        raise PortConflictError(plan.message, record)

    assert isinstance(requested, int)
    for holder in plan.holders:
        outcome = await terminate_holder(holder, policy, ctx.grace)
        if outcome != "ok":
            message = f"{plan.message} Ending pid {holder.pid} failed: {outcome.removeprefix('failed: ')}."
            raise PortConflictError(message, ConflictRecord.of(plan, outcome, None, message))
    if not await wait_port_free(requested, _PORT_WAIT):
        left = await asyncio.to_thread(scan.find_owners, requested)
        who = ", ".join(f"pid {o.pid}" for o in left) or "another process"
        outcome = f"failed: port {requested} still held by {who} after termination"
        message = f"{plan.message} But port {requested} is still held ({who})."
        raise PortConflictError(message, ConflictRecord.of(plan, outcome, None, message))
    return PortResolution(name, requested, requested, ConflictRecord.of(plan, "ok", None))


def plan_stack(
    config: StackConfig,
    strategy_override: Strategy | None = None,
    known_children: Iterable[tuple[int, float]] = (),
) -> list[PortAction]:
    """The plan for every service of the stack, doing nothing (reads /proc only)."""
    ctx = PortContext.from_config(config, strategy_override, known_children)
    policy = ctx.policy()
    fixed = [svc.port for svc in config.services.values() if isinstance(svc.port, int)]
    holders = scan.find_owners_many(fixed, _holder_hints(ctx)) if fixed else {}
    busy = scan.listening_ports()
    services = [(name, svc, ctx.strategy_for(svc)) for name, svc in config.services.items()]
    return plan_services(services, holders, busy, policy)


def listener_pgid_matches(port: int, pgid: int) -> bool | None:
    """Whether the listener on `port` belongs to process group `pgid` (None: no listener yet)."""
    owners = scan.find_owners(port, prefer=[pgid])
    if not owners:
        return None
    return any(owner.pgid == pgid for owner in owners)
