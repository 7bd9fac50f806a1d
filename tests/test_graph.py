"""The dependency graph: cycles, start order, closures, levels."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stackvisor.graph import GraphError, closure, find_cycle, levels, start_order

STACK = {
    "web": ["api"],
    "api": ["db", "cache", "migrate"],
    "migrate": ["db"],
    "db": [],
    "cache": [],
    "docs": [],
}


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({}, None),
        ({"a": []}, None),
        (STACK, None),
        ({"a": ["a"]}, ["a", "a"]),
        ({"api": ["worker"], "worker": ["api"]}, ["api", "worker", "api"]),
        ({"worker": ["api"], "api": ["worker"]}, ["api", "worker", "api"]),
        ({"a": ["b"], "b": ["c"], "c": ["b"]}, ["b", "c", "b"]),
        ({"z": ["y"], "y": ["x"], "x": ["z"], "start": ["z"]}, ["x", "z", "y", "x"]),
        ({"a": ["missing"]}, None),
    ],
)
def test_find_cycle(graph: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_start_order_dependencies_first_ties_by_name() -> None:
    assert start_order(STACK) == ["cache", "db", "docs", "migrate", "api", "web"]


def test_start_order_does_not_depend_on_insertion_order() -> None:
    shuffled = {name: list(reversed(deps)) for name, deps in reversed(list(STACK.items()))}
    assert start_order(shuffled) == start_order(STACK)


def test_start_order_accepts_any_iterables() -> None:
    assert start_order({"b": iter(["a"]), "a": ()}) == ["a", "b"]


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ({"api": ["worker"], "worker": ["api"]}, "dependency cycle: api -> worker -> api"),
        ({"api": ["dbb"]}, "api depends on dbb"),
    ],
)
def test_start_order_errors(graph: dict[str, list[str]], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        start_order(graph)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["web"], {"web", "api", "db", "cache", "migrate"}),
        (["migrate"], {"migrate", "db"}),
        (["docs", "cache"], {"docs", "cache"}),
        ([], set()),
    ],
)
def test_closure(names: list[str], expected: set[str]) -> None:
    assert closure(STACK, names) == expected


def test_closure_of_unknown_name() -> None:
    with pytest.raises(GraphError, match="unknown node apii"):
        closure(STACK, ["apii"])


def test_levels() -> None:
    assert levels(STACK) == {"db": 0, "cache": 0, "docs": 0, "migrate": 1, "api": 2, "web": 3}


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """Random acyclic graphs: a node only depends on nodes with a smaller index."""
    size = draw(st.integers(min_value=0, max_value=12))
    names = draw(st.permutations([f"n{i:02d}" for i in range(size)]))
    return {
        name: draw(st.lists(st.sampled_from(names[:index]), unique=True)) if index else []
        for index, name in enumerate(names)
    }


@given(dags())
def test_start_order_respects_every_edge(graph: dict[str, list[str]]) -> None:
    order = start_order(graph)
    assert sorted(order) == sorted(graph)
    position = {name: i for i, name in enumerate(order)}
    for node, deps in graph.items():
        assert all(position[dep] < position[node] for dep in deps)
    assert find_cycle(graph) is None


@given(dags(), st.data())
def test_a_back_edge_makes_a_cycle_that_is_reported(graph: dict[str, list[str]], data: st.DataObject) -> None:
    with_deps = [node for node, deps in graph.items() if deps]
    if not with_deps:
        return
    node = data.draw(st.sampled_from(with_deps))
    dep = data.draw(st.sampled_from(graph[node]))
    graph[dep] = [*graph[dep], node]
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    for a, b in itertools.pairwise(cycle):
        assert b in graph[a]
    with pytest.raises(GraphError, match="dependency cycle"):
        start_order(graph)
