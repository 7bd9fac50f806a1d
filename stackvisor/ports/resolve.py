"""Port conflicts acted on: the supervisor's entry point before a service starts.

Here: `secure_port` (scan, plan, then terminate / migrate / fail), the termination of a
holder (SIGTERM to its group, SIGKILL after the grace period, wait for the port) and
its result type `Termination`, and `plan_stack` for `stackvisor ports` and
`up --dry-run`. The decisions themselves are in `conflicts` (pure); reading the
system is in `tables` and `owners`; every signal goes through the context's
`SignalGate`, which refuses pid 1, the supervisor, its ancestors and other users'
processes whatever the plan says.

Before any signal the holder is read again and checked against the never-signal rules
with fresh facts, and its start time must equal the scanned one, so a pid recycled
since the scan is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

import psutil

from stackvisor.config.schema import Service, StackConfig, Strategy
from stackvisor.ports import tables
from stackvisor.ports.conflicts import (
    Action,
    ConflictRecord,
    PortAction,
    PortConflictError,
    plan_port,
    plan_services,
)
from stackvisor.ports.levels import DEFAULT_DEV_PATTERNS, Policy, is_known_child, untouchable
from stackvisor.ports.owners import Owner, OwnerSearch, describe_process
from stackvisor.system import procfs
from stackvisor.system.signals import SignalGate

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
    # Ports the registry gave other stacks and scripts (port -> who): never taken.
    allocated: dict[int, str] = field(default_factory=dict)
    grace: float = 5.0
    supervisor_pid: int = field(default_factory=os.getpid)
    # A command-line --strategy: wins over both the default and a service's own.
    strategy_override: Strategy | None = None
    # The supervisor passes its long-lived ones: the search remembers sockets it saw,
    # the gate the supervisor's ancestors.
    owners: OwnerSearch = field(default_factory=OwnerSearch)
    gate: SignalGate = field(default_factory=SignalGate)

    def strategy_for(self, service: Service) -> Strategy:
        return self.strategy_override or service.conflict_strategy or self.strategy

    @classmethod
    def from_config(
        cls,
        config: StackConfig,
        strategy_override: Strategy | None = None,
        known_children: Iterable[tuple[int, float]] = (),
        taken: Iterable[int] = (),
        *,
        owners: OwnerSearch | None = None,
        gate: SignalGate | None = None,
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
            owners=owners if owners is not None else OwnerSearch(),
            gate=gate if gate is not None else SignalGate(),
        )

    def policy(self) -> Policy:
        """The pure rules, with the facts about the supervisor read now."""
        try:
            uid = psutil.Process(self.supervisor_pid).uids().effective
        except psutil.Error:
            uid = os.geteuid()
        return Policy(
            uid=uid,
            lineage=procfs.ancestors(self.supervisor_pid),
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


class Ending(StrEnum):
    """How the termination of one holder went."""

    ENDED = "ended"  # signalled, and gone (with its group)
    GONE = "gone"  # it had exited by itself before any signal
    REFUSED = "refused"  # not signalled: a never-signal rule applies
    SURVIVED = "survived"  # still alive after SIGKILL


@dataclass(frozen=True)
class Termination:
    """The result of `terminate_holder`: how it went and, when it failed, why."""

    ending: Ending
    why: str = ""

    @property
    def ok(self) -> bool:
        return self.ending in (Ending.ENDED, Ending.GONE)

    @property
    def failure(self) -> str:
        """What went wrong, in words ("" when nothing did)."""
        if self.ending is Ending.REFUSED:
            return f"not signalled: {self.why}"
        return self.why

    @property
    def outcome(self) -> str:
        """As the history records it: "ok" or "failed: <what went wrong>"."""
        return "ok" if self.ok else f"failed: {self.failure}"


def kernel_port(avoid: Iterable[int] = ()) -> int:
    """A port the kernel picks as free (bind port 0 on 127.0.0.1), not one of `avoid`."""
    avoid = set(avoid)
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid and tables.is_free(port):
            return port
    raise OSError("the kernel kept handing out ports that are reserved or taken")


async def wait_port_free(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if await asyncio.to_thread(tables.is_free, port):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL)


async def _wait_gone(
    targets: Sequence[tuple[int, float | None]], timeout: float
) -> list[tuple[int, float | None]]:
    """Wait until every (pid, start time) is gone; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [t for t in targets if procfs.same_process(*t)]
        if not alive or time.monotonic() >= deadline:
            return alive
        await asyncio.sleep(_POLL)


def _recheck(owner: Owner, policy: Policy) -> tuple[Owner | None, str | None]:
    """Read the holder again: (fresh facts, None) when it may be signalled,
    (None, None) when it is gone, (None, why) when it must not be signalled."""
    if owner.pid is None or not owner.readable:
        return None, "its owner cannot be read"
    fresh = describe_process(owner.pid, owner.port, owner.established)
    if fresh is None:
        return None, None
    if owner.started is None or fresh.started is None or not procfs.same_start(fresh.started, owner.started):
        return None, f"pid {owner.pid} is now another process (started at a different time)"
    why = untouchable(fresh, policy)
    if why is not None:
        return None, why
    return fresh, None


def _holds(pid: int, inodes: Sequence[int]) -> bool:
    """`pid` has one of the sockets `inodes` open (a forking server's parent, say)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
    return False


def _safe_group(owner: Owner, pgid: int, policy: Policy) -> list[tuple[int, float | None]] | None:
    """The members of process group `pgid` if the group is the holder's own job and every
    one of them may be signalled, else None. Its own job: the group's leader is the holder,
    or an ancestor of it holding the same socket (a forking server whose worker was found),
    and every member started below the leader. A group that holds anything else (the CI
    script that started the holder in the background, the `stackvisor` command that asked
    for the port) is never signalled as a group."""
    holder = owner.pid
    if pgid <= 1 or holder is None:
        return None
    if pgid != holder and (pgid not in procfs.ancestors(holder) or not _holds(pgid, owner.inodes)):
        return None
    family = {pgid, *(p.pid for p in procfs.descendants(pgid))}
    members: list[tuple[int, float | None]] = []
    for pid in procfs.group_members(pgid):
        facts = describe_process(pid, owner.port)
        if facts is None:
            continue
        if pid not in family or untouchable(facts, policy) is not None:
            return None
        members.append((pid, facts.started))
    return members


def _signal(
    gate: SignalGate,
    pgid: int | None,
    targets: Sequence[tuple[int, float | None]],
    sig: int,
    *,
    ours: bool = False,
) -> None:
    """`sig` to process group `pgid` when given and the gate lets it through, else to
    each of `targets` that is still the process we saw. `ours`: a recorded child of this
    stack, which may run as another user."""
    if pgid is not None and gate.send_group(pgid, sig):
        return
    for pid, started in targets:
        if procfs.same_process(pid, started):
            gate.send(pid, sig, ours=ours)


async def terminate_holder(owner: Owner, policy: Policy, grace: float, gate: SignalGate) -> Termination:
    """End one holder: SIGTERM to its process group when the group is its own (else,
    or when the group holds a process that must not be signalled, to it alone), SIGKILL
    after `grace`.

    `policy` says whom the port rules spare; `gate` is asked too, and a holder it
    refuses (pid 1, the supervisor, an ancestor, another user's process) is never
    signalled even when the policy would allow it.
    """
    fresh, refused = await asyncio.to_thread(_recheck, owner, policy)
    if refused is not None:
        return Termination(Ending.REFUSED, refused)
    if fresh is None:
        return Termination(Ending.GONE)  # ended by itself since the scan
    pid = fresh.pid
    assert pid is not None
    ours = policy.uid == 0 and is_known_child(fresh, policy.known_children)
    if not gate.may_signal(pid, ours=ours):
        why = f"the signal gate refuses pid {pid} (pid 1, stackvisor, its ancestors, another user's)"
        return Termination(Ending.REFUSED, why)
    group = None
    if fresh.pgid is not None:
        group = await asyncio.to_thread(_safe_group, owner, fresh.pgid, policy)
        if group and not all(gate.may_signal(member) for member, _ in group):
            group = None
    targets = group if group else [(pid, fresh.started)]
    pgid = fresh.pgid if group else None
    _signal(gate, pgid, targets, signal.SIGTERM, ours=ours)
    alive = await _wait_gone(targets, grace)
    if not alive:
        return Termination(Ending.ENDED)
    # Escalate, reading everything again first: the grace period is long enough for
    # the holder to change identity (exec into something protected) and for the group
    # to change. Members that exited are skipped by their start time.
    if procfs.same_process(pid, fresh.started):
        _, refused = await asyncio.to_thread(_recheck, owner, policy)
        if refused is not None:
            return Termination(Ending.REFUSED, refused)
    if pgid is not None:
        group = await asyncio.to_thread(_safe_group, owner, pgid, policy)
        if group is None or not all(gate.may_signal(member) for member, _ in group):
            pgid = None
    _signal(gate, pgid, alive, signal.SIGKILL, ours=ours)
    alive = await _wait_gone(alive, _KILL_WAIT)
    if alive:
        pids = ", ".join(str(p) for p, _ in alive)
        return Termination(Ending.SURVIVED, f"pid {pids} still alive after SIGKILL")
    return Termination(Ending.ENDED)


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
    if (
        isinstance(requested, int)
        and requested not in ctx.taken
        and requested not in ctx.allocated
        and tables.is_free(requested)
    ):
        # The common case, answered by one netlink query (tens of microseconds).
        return PortResolution(name, requested, requested, None)
    strategy = ctx.strategy_for(service)
    policy = await asyncio.to_thread(ctx.policy)
    if isinstance(requested, int):
        holders = await asyncio.to_thread(ctx.owners.find_owners, requested, _holder_hints(ctx))
    else:
        holders = []
    busy = await asyncio.to_thread(tables.listening_ports) if service.candidate_ports() or holders else set()
    plan = plan_port(service, strategy, holders, busy, policy, ctx.taken, name, allocated=ctx.allocated)
    return await carry_out(plan, service, ctx, policy)


async def carry_out(plan: PortAction, service: Service, ctx: PortContext, policy: Policy) -> PortResolution:
    """Act on one service's plan: the only place a port conflict causes a signal."""
    name, requested = plan.service, plan.requested
    if plan.action in (Action.USE, Action.KEEP):
        port = plan.port
        if port == "auto":
            avoid = set(ctx.taken) | set(ctx.reserved_ports) | set(ctx.allocated)
            port = await asyncio.to_thread(kernel_port, avoid)
        return PortResolution(name, requested, port if isinstance(port, int) else None, None)
    if plan.action is Action.MIGRATE:
        assert isinstance(plan.port, int)
        return PortResolution(name, requested, plan.port, ConflictRecord.of(plan, "ok", plan.port))
    if plan.action is Action.FAIL:
        record = ConflictRecord.of(plan, "failed: unresolved")
        raise PortConflictError(plan.message, record)

    assert isinstance(requested, int)
    for holder in plan.holders:
        result = await terminate_holder(holder, policy, ctx.grace, ctx.gate)
        if not result.ok:
            message = f"{plan.message} Ending pid {holder.pid} failed: {result.failure}."
            raise PortConflictError(message, ConflictRecord.of(plan, result.outcome, None, message))
    if not await wait_port_free(requested, _PORT_WAIT):
        left = await asyncio.to_thread(ctx.owners.find_owners, requested)
        who = ", ".join(f"pid {o.pid}" for o in left) or "another process"
        outcome = f"failed: port {requested} still held by {who} after termination"
        message = f"{plan.message} But port {requested} is still held ({who})."
        raise PortConflictError(message, ConflictRecord.of(plan, outcome, None, message))
    return PortResolution(name, requested, requested, ConflictRecord.of(plan, "ok", None))


def plan_stack(
    config: StackConfig,
    strategy_override: Strategy | None = None,
    known_children: Iterable[tuple[int, float]] = (),
    running: Iterable[tuple[int, float, str]] = (),
    allocated: dict[int, str] | None = None,
) -> list[PortAction]:
    """The plan for every service of the stack, doing nothing (reads /proc only).

    `running`: the live children of the stack's running supervisor, (pid, start time,
    service): holders among them are kept, not planned against. `allocated`: what the
    registry gave other stacks and scripts (port -> who)."""
    ctx = PortContext.from_config(config, strategy_override, known_children)
    policy = replace(ctx.policy(), running=tuple(running))
    fixed = [svc.port for svc in config.services.values() if isinstance(svc.port, int)]
    holders = ctx.owners.find_owners_many(fixed, _holder_hints(ctx)) if fixed else {}
    busy = tables.listening_ports()
    services = [(name, svc, ctx.strategy_for(svc)) for name, svc in config.services.items()]
    return plan_services(services, holders, busy, policy, allocated)
