"""Port conflicts decided: how dangerous a holder is, and what to do about it.

Everything here is pure: plain data in (the service, the holders `scan` found, the
strategy, the rules of the stack), a plan out. Nothing here reads /proc, binds a
socket or sends a signal; `resolve` does that, and checks the never-signal rules
again right before it acts.

Levels (DESIGN.md, "Ports"): none < low < medium < high < critical.
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

import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal

from stackvisor.config.schema import Service, Strategy
from stackvisor.ports.scan import START_TIME_TOLERANCE, Owner

PortSpec = int | Literal["auto"] | None

# Processes that look like development servers. Each entry matches as a whole word
# (letters and digits do not continue it) in the process name, in the base names of
# its arguments, or in its full command line, so `uvicorn` matches
# `python -m uvicorn app:app` and `/tmp/uvicorn_dev.py` but `next` does not match
# `nextcloud`.
DEFAULT_DEV_PATTERNS: tuple[str, ...] = (
    "node", "nodemon", "npm", "npx", "yarn", "pnpm", "bun", "deno", "ts-node", "tsx",
    "vite", "webpack", "webpack-dev-server", "parcel", "esbuild", "rollup", "next",
    "nuxt", "remix", "astro", "ng serve", "react-scripts", "vue-cli-service",
    "uvicorn", "gunicorn", "hypercorn", "daphne", "flask", "fastapi", "streamlit",
    "manage.py runserver", "http.server", "livereload", "jupyter",
    "rails", "puma", "rackup", "jekyll", "hugo", "php -S", "mix phx.server",
)


class ConflictLevel(StrEnum):
    NONE = "none"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {level: i for i, level in enumerate(ConflictLevel)}


class Action(StrEnum):
    USE = "use"  # no conflict: start on the requested (or automatic) port
    TERMINATE = "terminate"
    MIGRATE = "migrate"
    FAIL = "fail"


@dataclass(frozen=True)
class Policy:
    """The facts and rules classification needs, besides the holder itself.

    `lineage` is the supervisor's pid and all its ancestors; `uid` its user; `now`
    the wall-clock time used only to say how long ago a holder started.
    """

    uid: int
    lineage: frozenset[int] = frozenset()
    reserved_ports: frozenset[int] = frozenset()
    protected: tuple[str, ...] = ()
    dev_patterns: tuple[str, ...] = DEFAULT_DEV_PATTERNS
    known_children: frozenset[tuple[int, float]] = frozenset()
    now: float = 0.0


@dataclass(frozen=True)
class Classification:
    level: ConflictLevel
    reason: str  # why this level, in words: "it belongs to another user (nobody)"


# --- matching process names --------------------------------------------------------


@lru_cache(maxsize=512)
def _word_pattern(pattern: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in pattern.split()]
    return re.compile(r"(?<![A-Za-z0-9])" + r"\s+".join(words) + r"(?![A-Za-z0-9])")


def _haystacks(owner: Owner) -> tuple[str, ...]:
    base_names = " ".join(arg.rstrip("/").rsplit("/", 1)[-1] for arg in owner.cmdline)
    return (owner.name or "", base_names, " ".join(owner.cmdline))


def matching_pattern(owner: Owner, patterns: Iterable[str]) -> str | None:
    """The first of `patterns` found as a whole word in the owner's name or command line."""
    texts = _haystacks(owner)
    for pattern in patterns:
        if pattern.strip() and any(_word_pattern(pattern.strip()).search(t) for t in texts):
            return pattern
    return None


# --- classification ----------------------------------------------------------------


def is_known_child(owner: Owner, known_children: Set[tuple[int, float]]) -> bool:
    if owner.pid is None or owner.create_time is None:
        return False
    return any(
        pid == owner.pid and abs(started - owner.create_time) <= START_TIME_TOLERANCE
        for pid, started in known_children
    )


def untouchable(owner: Owner, policy: Policy) -> str | None:
    """Why this process must never be signalled, or None when it may be.

    These are the critical rules that do not depend on the service; `resolve` asks
    this again, with freshly read facts, right before sending any signal.
    """
    if not owner.readable or owner.pid is None:
        return "its owner cannot be read"
    if owner.pid == 1:
        return "it is pid 1"
    if owner.pid in policy.lineage:
        return "it is stackvisor itself or one of its parent processes"
    if owner.uid != policy.uid or (owner.euid is not None and owner.euid != policy.uid):
        return f"it belongs to another user ({owner.user or owner.uid})"
    protected = matching_pattern(owner, policy.protected)
    if protected is not None:
        return f"it is a protected process ({protected})"
    if owner.port in policy.reserved_ports:
        return f"port {owner.port} is a reserved port"
    return None


def classify(owner: Owner, service: Service, policy: Policy) -> Classification:
    """The conflict level of one holder of the service's port."""
    reason = untouchable(owner, policy)
    if reason is not None:
        return Classification(ConflictLevel.CRITICAL, reason)
    if is_known_child(owner, policy.known_children):
        return Classification(ConflictLevel.LOW, "a child left behind by an earlier run of this stack")
    pattern = matching_pattern(owner, service.process_patterns)
    if pattern is not None:
        return Classification(ConflictLevel.LOW, f"it matches {service.name}'s process_patterns ({pattern})")
    pattern = matching_pattern(owner, policy.dev_patterns)
    if pattern is not None:
        return Classification(ConflictLevel.MEDIUM, f"it looks like a development server ({pattern})")
    return Classification(ConflictLevel.HIGH, "another process of the same user")


def classify_all(holders: Sequence[Owner], service: Service, policy: Policy) -> Classification:
    """The worst classification among several holders of one port (none if no holder)."""
    worst = Classification(ConflictLevel.NONE, "nobody listens on it")
    for owner in holders:
        found = classify(owner, service, policy)
        if found.level.rank > worst.level.rank:
            worst = found
    return worst


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
    def of(cls, plan: PortAction, outcome: str, new_port: int | None = None, message: str | None = None) -> ConflictRecord:
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
    service: Service, busy: Set[int], taken: Set[int], reserved: Set[int]
) -> _Candidates:
    """The first usable migration target: alternative_ports, then port_range, then,
    for `port: auto`, "auto" (the kernel picks one when the service starts)."""
    skipped: list[str] = []
    for port in service.candidate_ports():
        if port == service.port:
            continue
        if port in reserved:
            skipped.append(f"{port} reserved")
        elif port in taken:
            skipped.append(f"{port} used by another service of the stack")
        elif port in busy:
            skipped.append(f"{port} in use")
        else:
            return _Candidates(port, tuple(skipped))
    if service.port == "auto":
        return _Candidates("auto", tuple(skipped))
    return _Candidates(None, tuple(skipped))


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


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
) -> PortAction:
    """Decide one service's port.

    `holders` are the processes listening on the requested port (empty: free);
    `busy` every port with a listener (for migration targets); `taken` the ports other
    services of the stack have or will have, never migration targets; `claimed` those
    already handed to another service, which the service must move away from
    (default: `taken`).
    """
    name = name or service.name or "service"
    requested: PortSpec = service.port
    base = dict(service=name, requested=requested, strategy=strategy)
    if requested is None:
        return PortAction(port=None, action=Action.USE, message=f"{name} has no port", **base)
    reserved = policy.reserved_ports
    candidates = pick_port(service, busy, taken, reserved)

    if requested == "auto":
        chosen = candidates.chosen or "auto"
        where = "a port the kernel picks" if chosen == "auto" else f"port {chosen}"
        return PortAction(port=chosen, action=Action.USE, message=f"{name} gets {where}", **base)

    if requested in (taken if claimed is None else claimed):
        # Two services of one stack asked for the same port: the later one moves.
        level, reason = ConflictLevel.NONE, "another service of this stack uses it"
        head = f"port {requested} is used by another service of this stack"
        if candidates.chosen is not None:
            return PortAction(
                port=candidates.chosen, action=Action.MIGRATE, level=level, reason=reason,
                message=f"{head}; {name} moves to port {candidates.chosen}.", **base,
            )
        hint = _alternatives_hint(name, service, candidates)
        return PortAction(
            port=None, action=Action.FAIL, level=level, reason=reason,
            message=f"{head}; {hint}.", **base,
        )

    found = classify_all(holders, service, policy)
    if found.level is ConflictLevel.NONE:
        return PortAction(port=requested, action=Action.USE, reason=found.reason, message=f"port {requested} is free", **base)

    head = f"{_held_by(requested, holders, policy.now)}: level {found.level}"
    base.update(level=found.level, holders=tuple(holders), reason=found.reason)
    established = sum(h.established for h in holders[:1])  # the count is per port

    def terminate(why: str) -> PortAction:
        return PortAction(port=requested, action=Action.TERMINATE, message=f"{head}. {why}", **base)

    def migrate(why: str) -> PortAction:
        return PortAction(
            port=candidates.chosen, action=Action.MIGRATE,
            message=f"{head}. {why}; {name} moves to port {candidates.chosen}.", **base,
        )

    def fail(why: str, can_escalate: bool) -> PortAction:
        hint = _alternatives_hint(name, service, candidates)
        tail = f"{hint}, or run with --strategy aggressive to end it" if can_escalate else f"{hint}, or free port {requested} yourself"
        return PortAction(port=None, action=Action.FAIL, message=f"{head}. {why}; {tail}.", **base)

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
            service, strategy, holders.get(port, ()) if port else (), busy, policy, taken, name, claimed=assigned
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
        rows.append((a.service, "-" if a.requested is None else str(a.requested), who, str(a.level), str(a.action), uses))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    notes = [f"{a.service}: {a.message}" for a in actions if a.is_conflict]
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)
