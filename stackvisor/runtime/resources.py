"""What each running service uses now: memory, CPU time and its number of processes.

From the service's cgroup where it has one (every process it ever started, whatever
it did); otherwise from its process tree, added up over one pass of /proc. Read at
most once a `period` (half a second): status is asked often (`--wait` polls,
dashboards), and the figures move slowly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from stackvisor.runtime.clock import Clock
from stackvisor.runtime.process import Child
from stackvisor.runtime.status import Resources
from stackvisor.system import cgroups, procfs


def tree_usage(table: Mapping[int, procfs.Stat], pid: int) -> Resources:
    """A process and everything below it in `table`, added up (pure)."""
    below: dict[int, list[int]] = defaultdict(list)
    for child, stat in table.items():
        below[stat.ppid].append(child)
    memory, cpu, count = 0, 0.0, 0
    todo = [pid] if pid in table else []
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        stat = table[current]
        memory, cpu, count = memory + stat.rss_bytes, cpu + stat.cpu_seconds, count + 1
        todo.extend(below.get(current, ()))
    return {"memory_bytes": memory, "cpu_seconds": round(cpu, 3), "processes": count}


class Meter:
    def __init__(self, clock: Clock, period: float = 0.5) -> None:
        self.clock = clock
        self.period = period
        self._read_at: float | None = None
        self._for: dict[str, int] = {}
        self._figures: dict[str, Resources] = {}

    def read(self, children: Mapping[str, Child]) -> dict[str, Resources]:
        """The figures of each service's running `children`, fresh within `period`."""
        now = self.clock.now()
        pids = {name: child.pid for name, child in children.items()}
        fresh = self._read_at is not None and now - self._read_at < self.period
        if fresh and pids == self._for:
            return self._figures
        table: Mapping[int, procfs.Stat] | None = None
        figures: dict[str, Resources] = {}
        for name, child in children.items():
            if child.cgroup is not None:
                used = cgroups.usage(child.cgroup)
                figures[name] = {
                    "memory_bytes": used.memory_bytes,
                    "cpu_seconds": round(used.cpu_seconds, 3),
                    "processes": used.processes,
                }
            else:
                table = table if table is not None else procfs.stat_table()
                figures[name] = tree_usage(table, child.pid)
        self._read_at, self._for, self._figures = now, pids, figures
        return figures
