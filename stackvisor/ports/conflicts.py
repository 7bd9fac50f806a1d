"""Port conflicts decided: what to do about a held port (the plan).

Everything here is pure: plain data in (the service, the holders `owners` found, the
strategy, the rules of the stack), a plan out, and the record the history keeps.
Nothing here reads /proc, binds a socket or sends a signal; `resolve` does that, and
checks the never-signal rules again right before it acts. How dangerous a holder is
(its level) is decided in `levels`.

Strategies map a level (and whether a free alternative port exists) to an action:

| level    | conservative        | aggressive          | intelligent                          |
|----------|---------------------|---------------------|--------------------------------------|
| low      | terminate           | terminate           | terminate                            |
| medium   | migrate, else fail  | terminate           | migrate, else terminate if no        |
|          |                     |                     | established connections, else fail   |
| high     | migrate, else fail  | terminate           | migrate, else fail                   |
| critical | migrate, else fail  | migrate, else fail  | migrate, else fail                   |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from stackvisor.config.schema import Service, Strategy
from stackvisor.ports.levels import ConflictLevel, Policy, classify_all
from stackvisor.ports.owners import Owner
from stackvisor.textfmt import format_age, table

PortSpec = int | Literal["auto"] | None


class Action(StrEnum):
    USE = "use"  # no conflict: start on the requested (or automatic) port
    KEEP = "keep"  # the running stack's own service holds it: nothing to do
    TERMINATE = "terminate"
    MIGRATE = "migrate"
    FAIL = "fail"


# --- the plan ----------------------------------------------------------------------


@dataclass(frozen=True)
class PortAction:
    """What to do about one service's port, and why; `port` is where it will listen."""

    service: str
    requested: PortSpec
    port: PortSpec
    action: Action
    level: ConflictLevel = ConflictLevel.NONE
    strategy: Strategy = Strategy.INTELLIGENT
    holders: tuple[Owner, ...] = ()
    reason: str = ""
    message: str = ""

    @property
    def holder(self) -> Owner | None:
        return self.holders[0] if self.holders else None

    @property
    def is_conflict(self) -> bool:
        return self.action in (Action.TERMINATE, Action.MIGRATE, Action.FAIL)

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "requested": self.requested,
            "port": self.port,
            "action": str(self.action),
            "level": str(self.level),
            "strategy": str(self.strategy),
            "holders": [h.as_dict() for h in self.holders],
            "reason": self.reason,
            "message": self.message,
        }


@dataclass(frozen=True)
class ConflictRecord:
    """One conflict and how it ended, as written to the history (plain, JSON-able)."""

    service: str
    port: int | None
    holder_pid: int | None
    holder_name: str | None
    holder_user: str | None
    level: str
    action: str  # "terminate" | "migrate" | "fail"
    outcome: str  # "ok" | "failed: <why>"
    new_port: int | None
    message: str
    strategy: str = ""

    @classmethod
    def of(
        cls, plan: PortAction, outcome: str, new_port: int | None = None, message: str | None = None
    ) -> ConflictRecord:
        holder = plan.holder
        return cls(
            service=plan.service,
            port=plan.requested if isinstance(plan.requested, int) else None,
            holder_pid=holder.pid if holder else None,
            holder_name=holder.name if holder else None,
            holder_user=holder.user if holder else None,
            level=str(plan.level),
            action=str(plan.action),
            outcome=outcome,
            new_port=new_port,
            message=plan.message if message is None else message,
            strategy=str(plan.strategy),
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PortConflictError(Exception):
    """A port conflict that the effective strategy may not (or could not) resolve."""

    def __init__(self, message: str, record: ConflictRecord) -> None:
        super().__init__(message)
        self.message = message
        self.record = record


@dataclass(frozen=True)
class _Candidates:
    chosen: int | Literal["auto"] | None
    skipped: tuple[str, ...] = field(default=())  # "8001 (in use)" ...


def pick_port(
    service: Service, busy: Set[int], taken: Set[int], reserved: Set[int], allocated: Set[int] = frozenset()
) -> _Candidates:
    """The first usable migration target: alternative_ports, then port_range, then,
    for `port: auto`, "auto" (the kernel picks one when the service starts)."""
    skipped: list[str] = []
    for port in service.candidate_ports():
        if port == service.port:
            continue
        if port in reserved:
            skipped.append(f"{port} reserved")
        elif port in allocated:
            skipped.append(f"{port} allocated to another stack or script")
        elif port in taken:
            skipped.append(f"{port} used by another service of the stack")
        elif port in busy:
            skipped.append(f"{port} in use")
        else:
            return _Candidates(port, tuple(skipped))
    if service.port == "auto":
        return _Candidates("auto", tuple(skipped))
    return _Candidates(None, tuple(skipped))


def describe_holder(owner: Owner, now: float) -> str:
    """`pid 4242 (node, user dev, started 3h ago)`, or what is known of an unreadable one."""
    if not owner.readable:
        who = f"pid {owner.pid}" if owner.pid is not None else "a process"
        user = f"user {owner.user}" if owner.user is not None else "unknown user"
        return f"{who} ({user}, not readable)"
    details = [owner.name or "?", f"user {owner.user if owner.user is not None else owner.uid}"]
    if owner.create_time and now:
        details.append(f"started {format_age(now - owner.create_time)} ago")
    return f"pid {owner.pid} ({', '.join(details)})"


def _held_by(port: int, holders: Sequence[Owner], now: float) -> str:
    return f"port {port} is held by " + " and ".join(describe_holder(h, now) for h in holders)


def _alternatives_hint(name: str, service: Service, candidates: _Candidates) -> str:
    if not service.candidate_ports():
        return f"give {name} alternative_ports"
    shown = ", ".join(candidates.skipped[:4]) + (", ..." if len(candidates.skipped) > 4 else "")
    return f"none of {name}'s alternative ports is free ({shown}): free one or add more"


def plan_port(
    service: Service,
    strategy: Strategy,
    holders: Sequence[Owner],
    busy: Set[int],
    policy: Policy,
    taken: Set[int] = frozenset(),
    name: str | None = None,
    claimed: Set[int] | None = None,
    allocated: Mapping[int, str] | None = None,
) -> PortAction:
    """Decide one service's port.

    `holders` are the processes listening on the requested port (empty: free);
    `busy` every port with a listener (for migration targets); `taken` the ports other
    services of the stack have or will have, never migration targets; `claimed` those
    already handed to another service, which the service must move away from
    (default: `taken`); `allocated` the ports the registry gave another stack or a
    script (port -> who), never taken from them, by any strategy, listened on or not.
    """
    allocated = allocated or {}
    name = name or service.name or "service"
    requested: PortSpec = service.port
    # What every answer shares; each one below fills in port, action and message.
    base = PortAction(service=name, requested=requested, port=None, action=Action.USE, strategy=strategy)
    if requested is None:
        return replace(base, message=f"{name} has no port")
    reserved = policy.reserved_ports
    candidates = pick_port(service, busy, taken, reserved, set(allocated))

    if requested == "auto":
        chosen = candidates.chosen or "auto"
        where = "a port the kernel picks" if chosen == "auto" else f"port {chosen}"
        return replace(base, port=chosen, message=f"{name} gets {where}")

    if requested in (taken if claimed is None else claimed):
        # Two services of one stack asked for the same port: the later one moves.
        shared = replace(base, level=ConflictLevel.NONE, reason="another service of this stack uses it")
        head = f"port {requested} is used by another service of this stack"
        if candidates.chosen is not None:
            return replace(
                shared,
                port=candidates.chosen,
                action=Action.MIGRATE,
                message=f"{head}; {name} moves to port {candidates.chosen}.",
            )
        hint = _alternatives_hint(name, service, candidates)
        return replace(shared, action=Action.FAIL, message=f"{head}; {hint}.")

    if requested in allocated:
        # Another stack's port (maybe restarting right now), or a script's: never ours.
        head = f"port {requested} is allocated to {allocated[requested]}"
        moved = replace(base, holders=tuple(holders), reason="allocated in the port registry")
        if candidates.chosen is not None:
            message = f"{head}; {name} moves to port {candidates.chosen}."
            return replace(moved, port=candidates.chosen, action=Action.MIGRATE, message=message)
        return replace(
            moved, action=Action.FAIL, message=f"{head}; {_alternatives_hint(name, service, candidates)}."
        )

    own = next((s for s in map(policy.running_service, holders) if s is not None), None)
    if own is not None:
        reason = f"this stack's {own} (running)"
        return replace(
            base,
            port=requested,
            action=Action.KEEP,
            holders=tuple(holders),
            reason=reason,
            message=f"port {requested} is held by {reason}",
        )
    found = classify_all(holders, service, policy)
    if found.level is ConflictLevel.NONE:
        return replace(base, port=requested, reason=found.reason, message=f"port {requested} is free")

    head = f"{_held_by(requested, holders, policy.now)}: level {found.level}"
    base = replace(base, level=found.level, holders=tuple(holders), reason=found.reason)
    established = sum(h.established for h in holders[:1])  # the count is per port

    def terminate(why: str) -> PortAction:
        return replace(base, port=requested, action=Action.TERMINATE, message=f"{head}. {why}")

    def migrate(why: str) -> PortAction:
        return replace(
            base,
            port=candidates.chosen,
            action=Action.MIGRATE,
            message=f"{head}. {why}; {name} moves to port {candidates.chosen}.",
        )

    def fail(why: str, can_escalate: bool) -> PortAction:
        hint = _alternatives_hint(name, service, candidates)
        if can_escalate:
            tail = f"{hint}, or run with --strategy aggressive to end it"
        else:
            tail = f"{hint}, or free port {requested} yourself"
        return replace(base, action=Action.FAIL, message=f"{head}. {why}; {tail}.")

    level = found.level
    if level is ConflictLevel.LOW:
        return terminate(f"{strategy} strategy ends it ({found.reason}).")
    if level is ConflictLevel.CRITICAL:
        why = f"stackvisor never ends it ({found.reason})"
        return migrate(why) if candidates.chosen is not None else fail(why, can_escalate=False)
    if strategy is Strategy.AGGRESSIVE:
        return terminate(f"aggressive strategy ends it ({found.reason}).")
    if candidates.chosen is not None:
        return migrate(f"{strategy} strategy keeps it")
    if strategy is Strategy.INTELLIGENT and level is ConflictLevel.MEDIUM:
        if established == 0:
            return terminate(
                "intelligent strategy ends it: a development server with no established "
                "connections, and no alternative port."
            )
        plural = "s" if established != 1 else ""
        return fail(f"intelligent strategy keeps it ({established} established connection{plural})", True)
    if strategy is Strategy.INTELLIGENT:
        return fail("intelligent strategy ends only idle development servers", True)
    return fail(f"{strategy} strategy keeps it", True)


def plan_services(
    services: Sequence[tuple[str, Service, Strategy]],
    holders: Mapping[int, Sequence[Owner]],
    busy: Set[int],
    policy: Policy,
    allocated: Mapping[int, str] | None = None,
) -> list[PortAction]:
    """Plan every service of a stack, in order, so migration targets never collide.

    A fixed port of any service is off limits to every other service's migration,
    and each port handed out is off limits to the services planned after it (when two
    services ask for one port, the first keeps it).
    """
    fixed: dict[str, int] = {name: svc.port for name, svc, _ in services if isinstance(svc.port, int)}
    assigned: set[int] = set()
    plan: list[PortAction] = []
    for name, service, strategy in services:
        taken = {p for other, p in fixed.items() if other != name} | assigned
        port = service.port if isinstance(service.port, int) else None
        action = plan_port(
            service,
            strategy,
            holders.get(port, ()) if port else (),
            busy,
            policy,
            taken,
            name,
            claimed=assigned,
            allocated=allocated,
        )
        plan.append(action)
        if isinstance(action.port, int):
            assigned.add(action.port)
    return plan


def format_plan(actions: Sequence[PortAction]) -> str:
    """A table (service, port, holder, level, action, result) and the messages of conflicts."""
    header = ("SERVICE", "PORT", "HOLDER", "LEVEL", "ACTION", "USES")
    rows: list[tuple[str, ...]] = [header]
    for a in actions:
        holder = a.holder
        if holder is None:
            who = "-"
        else:
            user = holder.user if holder.user is not None else holder.uid
            who = "/".join(str(v) if v is not None else "?" for v in (holder.pid, holder.name, user))
            if len(a.holders) > 1:
                who += f" (+{len(a.holders) - 1})"
        uses = "-" if a.port is None else str(a.port)
        rows.append(
            (
                a.service,
                "-" if a.requested is None else str(a.requested),
                who,
                str(a.level),
                str(a.action),
                uses,
            )
        )
    lines = table(rows)
    notes = [f"{a.service}: {a.message}" for a in actions if a.is_conflict]
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)
