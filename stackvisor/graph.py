"""The dependency graph of a stack: cycles, start order, closures, depth.

Pure functions over plain data: a graph is a mapping from each node to the nodes it
depends on (`StackConfig.graph()` gives one). Nothing here knows about services,
processes or configuration files: the loader reports each cycle `find_cycle` finds as
a config error with a line number; the CLI and the supervisor use the start order, the
closures and the depths; a `GraphError` names an unknown node (`stackvisor up apii`)
or a cycle in a graph that did not come through the loader. The order of stopping is
the supervisor's own (dependents first, independent services together).

Every result is deterministic (ties broken by name), so two runs of the same stack
start in the same order and tests can compare exact lists.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

Graph = Mapping[str, Iterable[str]]


class GraphError(ValueError):
    """A cycle, or a node that names a dependency the graph does not contain."""


def _normalise(graph: Graph) -> dict[str, list[str]]:
    # Iterables may be one-shot (generators); read each once, in a stable order.
    return {node: sorted(set(deps)) for node, deps in graph.items()}


def _check_known(graph: dict[str, list[str]]) -> None:
    for node in sorted(graph):
        for dep in graph[node]:
            if dep not in graph:
                raise GraphError(f"{node} depends on {dep}, which is not in the graph")


def find_cycle(graph: Graph) -> list[str] | None:
    """One dependency loop as a closed path (`["api", "worker", "api"]`), or None.

    The loop starts at its alphabetically first node. Dependencies missing from the
    graph are treated as nodes without dependencies of their own.
    """
    adjacency = _normalise(graph)
    done: set[str] = set()
    for root in sorted(adjacency):
        if root in done:
            continue
        # Iterative depth-first search: `path` is the current chain, `on_path` its set,
        # `pending` the not yet visited dependencies of each node on the chain.
        path = [root]
        on_path = {root}
        pending = [iter(adjacency.get(root, ()))]
        while path:
            dep = next(pending[-1], None)
            if dep is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                pending.pop()
                continue
            if dep in on_path:
                loop = path[path.index(dep) :]
                first = loop.index(min(loop))
                loop = loop[first:] + loop[:first]
                return loop + [loop[0]]
            if dep in done:
                continue
            path.append(dep)
            on_path.add(dep)
            pending.append(iter(adjacency.get(dep, ())))
    return None


def start_order(graph: Graph) -> list[str]:
    """Every node after all of its dependencies; among the ready ones, by name."""
    adjacency = _normalise(graph)
    _check_known(adjacency)
    waiting = {node: len(deps) for node, deps in adjacency.items()}
    users: dict[str, list[str]] = {node: [] for node in adjacency}
    for node, deps in adjacency.items():
        for dep in deps:
            users[dep].append(node)
    ready = [node for node, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for user in users[node]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) < len(adjacency):
        loop = find_cycle(adjacency) or sorted(set(adjacency) - set(order))
        raise GraphError("dependency cycle: " + " -> ".join(loop))
    return order


def closure(graph: Graph, names: Iterable[str]) -> set[str]:
    """`names` and everything they depend on, directly or not (what `up api` starts)."""
    adjacency = _normalise(graph)
    result: set[str] = set()
    stack: list[tuple[str, str | None]] = [(name, None) for name in names]
    while stack:
        node, needed_by = stack.pop()
        if node in result:
            continue
        if node not in adjacency:
            if needed_by is None:
                raise GraphError(f"unknown node {node}")
            raise GraphError(f"{needed_by} depends on {node}, which is not in the graph")
        result.add(node)
        stack.extend((dep, node) for dep in adjacency[node])
    return result


def levels(graph: Graph) -> dict[str, int]:
    """Depth of each node: 0 without dependencies, else one more than its deepest one."""
    adjacency = _normalise(graph)
    depth: dict[str, int] = {}
    for node in start_order(adjacency):
        depth[node] = 1 + max((depth[dep] for dep in adjacency[node]), default=-1)
    return depth
