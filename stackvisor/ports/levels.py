"""How dangerous a holder of a port is: conflict levels and the never-signal rules.

Pure: an `Owner` (what `owners` read about a holding process) and a `Policy` (the
facts about the supervisor and the rules of the stack) in, a `Classification` out.
`untouchable` holds the rules that spare a process whatever the strategy says;
`resolve` asks it again with fresh facts right before any signal. The strategies
and the plan built on these levels are in `conflicts`.

Levels, from harmless to untouchable (the README's "Ports" section says what each
one means): none < low < medium < high < critical.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from stackvisor.config.schema import Service
from stackvisor.ports.owners import Owner
from stackvisor.system.procfs import same_start

# Processes that look like development servers. Each entry matches as a whole word
# (letters and digits do not continue it) in the process name, in the base names of
# its arguments, or in its full command line, so `uvicorn` matches
# `python -m uvicorn app:app` and `/tmp/uvicorn_dev.py` but `next` does not match
# `nextcloud`.
# fmt: off
DEFAULT_DEV_PATTERNS: tuple[str, ...] = (
    "node", "nodemon", "npm", "npx", "yarn", "pnpm", "bun", "deno", "ts-node", "tsx",
    "vite", "webpack", "webpack-dev-server", "parcel", "esbuild", "rollup", "next",
    "nuxt", "remix", "astro", "ng serve", "react-scripts", "vue-cli-service",
    "uvicorn", "gunicorn", "hypercorn", "daphne", "flask", "fastapi", "streamlit",
    "manage.py runserver", "http.server", "livereload", "jupyter",
    "rails", "puma", "rackup", "jekyll", "hugo", "php -S", "mix phx.server",
)
# fmt: on


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
    # The running stack's own live children, (pid, start since boot) -> service: asked about
    # while the stack runs, they are its services at work, not conflicts.
    running: tuple[tuple[int, float, str], ...] = ()

    def running_service(self, owner: Owner) -> str | None:
        if owner.pid is None or owner.started is None:
            return None
        for pid, started, service in self.running:
            if pid == owner.pid and same_start(owner.started, started):
                return service
        return None


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
    if owner.pid is None or owner.started is None:
        return False
    return any(pid == owner.pid and same_start(owner.started, started) for pid, started in known_children)


def is_stackvisor(owner: Owner) -> bool:
    """Whether the process is stackvisor itself (`stackvisor ...`, `python -m stackvisor
    ...`): another stack's supervisor listens on the ports of its on-demand and proxied
    services, and ending it ends that whole stack."""
    args = [a.rstrip("/").rsplit("/", 1)[-1] for a in owner.cmdline[:3]]
    python = bool(args) and args[0].startswith("python")
    module = python and args[1:3] == ["-m", "stackvisor"]
    script = python and args[1:2] == ["stackvisor"]  # the installed command, run by its python
    return owner.name == "stackvisor" or args[:1] == ["stackvisor"] or module or script


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
    other_user = owner.uid != policy.uid or (owner.euid is not None and owner.euid != policy.uid)
    # A child a root stack started as another user (`user: postgres`) is still its own:
    # its pid and start time are recorded, so it is that very process. (A non-root
    # stack cannot start one; its child of another user went through a setuid program.)
    ours = policy.uid == 0 and is_known_child(owner, policy.known_children)
    if other_user and not ours:
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
    if is_stackvisor(owner):  # after a stale copy of the service, which it may be
        return Classification(ConflictLevel.CRITICAL, "it is stackvisor (another stack's supervisor)")
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
