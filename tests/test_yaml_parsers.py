"""libyaml (fast) and PyYAML's Python parser (the fallback) read a stack file the same way."""

from __future__ import annotations

import pytest
import yaml

from stackvisor.config import yamlpos

STACK = """\
x-defaults: &defaults
  restart: on-failure
  env: {A: "1", B: '2'}
services:
  db:
    <<: *defaults
    command: redis-server --port ${PORT}
    port: 6379
  api:
    command: ["python", "-m", "api"]
    depends_on:
      db: {condition: service_healthy}
    healthcheck:
      tcp: 127.0.0.1:${PORT}
    restart: no
  empty:
  literal: |
    two
    lines
"""


def parse(text: str, *, libyaml: bool, monkeypatch: pytest.MonkeyPatch) -> yamlpos.Document:
    monkeypatch.setattr(yaml, "__with_libyaml__", libyaml)
    document, problems = yamlpos.parse_yaml(text)
    assert problems == [] and document is not None
    return document


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml: one parser only")
def test_both_parsers_give_the_same_data_and_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = parse(STACK, libyaml=True, monkeypatch=monkeypatch)
    slow = parse(STACK, libyaml=False, monkeypatch=monkeypatch)
    assert fast.data == slow.data
    assert fast.values == slow.values and fast.keys == slow.keys
    assert fast.data["services"]["api"]["restart"] == "no"  # YAML 1.2: a string
    assert fast.values[("services", "empty")] == fast.keys[("services", "empty")]


def test_broken_yaml_is_worded_by_the_python_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    document, problems = yamlpos.parse_yaml("services:\n  api: {command: x\n")
    assert document is None
    assert (
        problems[0].message
        == "invalid YAML: expected ',' or '}', but got '<stream end>' (while parsing a flow mapping)"
    )


def test_without_libyaml_deep_nesting_is_still_refused_where_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yaml, "__with_libyaml__", False)
    document, problems = yamlpos.parse_yaml(
        "services:\n  a:\n    env: {K: " + "[" * 5000 + "]" * 5000 + "}\n"
    )
    assert document is None
    assert (problems[0].line, problems[0].message) == (3, "refused: nested more than 100 levels deep")
