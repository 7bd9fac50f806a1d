"""What the supervisor will do, decided over plain data: selections, restart targets, reloads.

Pure: configurations and sets of names in, names out. The supervisor carries the
plans out (stops, starts, swaps configurations); tests check them without a process.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from stackvisor import graph
from stackvisor.config import ReloadDiff, restart_set
from stackvisor.config.diff import followers
from stackvisor.config.replicas import expand_names
from stackvisor.config.schema import Service, StackConfig
from stackvisor.runtime.status import ReloadResult

# Settings that take effect only when the supervisor starts again.
RESTART_SETTINGS = frozenset({"control", "logs_dir", "logs_mode", "log_max_bytes", "log_backups", "reload"})


def selection(config: StackConfig, requested: Sequence[str], profiles: Collection[str] = ()) -> set[str]:
    """What `up SERVICE...` runs under `config`: the named services still there and what
    they need. When nothing was named: every service that is not `disabled`, without
    `profiles` or with an active one, and what they need (a needed service starts
    whatever its profiles or `disabled`, as a named one does)."""
    if requested:
        names = [n for n in expand_names(config, requested) if n in config.services]
    else:
        names = [
            n
            for n, svc in config.services.items()
            if not svc.disabled and (not svc.profiles or set(svc.profiles) & set(profiles))
        ]
    return graph.closure(config.graph(), names) if names else set()


def restart_targets(config: StackConfig, named: Sequence[str], running: set[str]) -> set[str]:
    """Who a restart of `named` stops and starts: the named ones always, their
    `restart: true` followers only when they are running."""
    return {n for n in followers(config, named) if n in named or n in running}


@dataclass(frozen=True)
class ReloadPlan:
    """How to go from the running stack to the edited one.

    First `stop` (running services that are removed or restart), then drop `removed`,
    give `changed` their new configuration, create `added`, and `start` (in start
    order) within the new `selection`. The services in `keep_sockets` hold their
    listening socket throughout, as a restart does (see `keeps_socket`); a removed one
    among them hands it to its heir (`heirs`).
    """

    diff: ReloadDiff
    restarts: tuple[str, ...]  # changed services and their followers (by the new file)
    stop: tuple[str, ...]
    start: tuple[str, ...]
    selection: frozenset[str]
    keep_sockets: frozenset[str] = frozenset()
    heirs: Mapping[str, str] = field(default_factory=dict)  # removed -> added (see `heirs`)

    @property
    def restarted(self) -> list[str]:
        """What the reload report calls restarted: the restarts still selected."""
        return [n for n in self.restarts if n in self.selection]


def plan_reload(
    old: StackConfig,
    new: StackConfig,
    diff: ReloadDiff,
    *,
    requested: Sequence[str],
    running: set[str],
    stopped_by_hand: set[str],
    profiles: Collection[str] = (),
) -> ReloadPlan:
    """`running`: services with a live lifecycle; `stopped_by_hand`: those in `stopped`.

    Changed services start again even if they had failed (the edit may be the fix);
    one stopped by hand stays stopped.
    """
    restarts = sorted(restart_set(diff, new) & set(old.services))
    chosen = selection(new, requested, profiles)
    stop = tuple(n for n in (*diff.removed, *restarts) if n in running)
    by_hand = {n for n in restarts if n not in stop and n in stopped_by_hand}
    starting = set(diff.added) | (set(restarts) - by_hand)
    start = tuple(n for n in graph.start_order(new.graph()) if n in starting and n in chosen)
    keep = frozenset(n for n in start if n in restarts and keeps_socket(old.services[n], new.services[n]))
    handed = heirs(old, new, diff.removed, [n for n in diff.added if n in chosen])
    return ReloadPlan(diff, tuple(restarts), stop, start, frozenset(chosen), keep | set(handed), handed)


def heirs(old: StackConfig, new: StackConfig, removed: Sequence[str], added: Sequence[str]) -> dict[str, str]:
    """The removed services whose listening socket an added one takes over, as a kept
    socket (`keeps_socket`): the same mode and fixed port. A rename; a service made a
    group of copies, or a group made one service, where the first copy has the port."""
    takers = {(svc.socket, svc.port): n for n in added if (svc := new.services[n]).socket is not None}
    return {
        name: takers[key]
        for name in removed
        if isinstance((svc := old.services[name]).port, int) and (key := (svc.socket, svc.port)) in takers
    }


def keeps_socket(old: Service, new: Service) -> bool:
    """Whether an edit leaves the listening socket the supervisor holds for a service as
    it is: the same mode (`socket: inherit` or `proxy`) and the same fixed port. Then a
    reload restarts it as `restart` does: connections that arrive meanwhile wait (in the
    socket's backlog, or held by the proxy) for the new process instead of being reset."""
    return old.socket == new.socket is not None and isinstance(new.port, int) and old.port == new.port


def reload_result(plan: ReloadPlan, *, dry_run: bool, source: str, now: float) -> ReloadResult:
    """The report of a reload (or of what it would do): what changed and what restarts."""
    diff = plan.diff
    return {
        "ok": True,
        "dry_run": dry_run,
        "source": source,
        "time": now,
        "added": list(diff.added),
        "removed": list(diff.removed),
        "changed": list(diff.changed),
        "restarted": plan.restarted,
        "settings_changed": list(diff.settings_changed),
        "needs_supervisor_restart": [f for f in diff.settings_changed if f in RESTART_SETTINGS],
        "summary": diff.describe(),
    }


def failed_reload(error: str, *, dry_run: bool, source: str, now: float) -> ReloadResult:
    """The report of a reload that changed nothing: the file was refused."""
    return {"ok": False, "dry_run": dry_run, "source": source, "time": now, "error": error}
