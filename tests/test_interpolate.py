"""Compose-style `${VAR}` interpolation, the two-pass port variables, and their names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stackvisor.config.interpolate import (
    InterpolationError,
    interpolate,
    port_env,
    port_variable,
    port_variables,
)

VARS = {"SET": "value", "EMPTY": "", "HOST": "db.local", "DOLLAR": "a$b"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("$SET", "value"),
        ("${SET}", "value"),
        ("x${SET}y", "xvaluey"),
        ("$SET.txt", "value.txt"),
        ("$SETX", ""),
        ("${UNSET}", ""),
        ("$UNSET", ""),
        # :- default when unset or empty; - only when unset
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${SET:-dflt}", "value"),
        ("${UNSET-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${SET-dflt}", "value"),
        # :+ alternative when set and non-empty; + when set
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${UNSET:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        # ? forms pass when the value is there
        ("${SET:?missing}", "value"),
        ("${EMPTY?missing}", ""),
        # nested defaults
        ("${UNSET:-${HOST}}", "db.local"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-http://${HOST}:${P:-80}/x}", "http://db.local:80/x"),
        ("${SET:-${NOT:?never evaluated}}", "value"),
        # dollars
        ("$$", "$"),
        ("$$SET", "$SET"),
        ("$${SET}", "${SET}"),
        ("cost: 5$", "cost: 5$"),
        ("awk '{print $1}'", "awk '{print $1}'"),
        ("echo $? $(date)", "echo $? $(date)"),
        ("${UNSET:-$$}", "$"),
        ("$DOLLAR", "a$b"),
        ("${EMPTY:-a}}", "a}"),
    ],
)
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, VARS) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${UNSET:?set UNSET first}", "required variable UNSET is missing a value: set UNSET first"),
        ("${EMPTY:?need it}", "required variable EMPTY is missing a value: need it"),
        ("${UNSET?}", "required variable UNSET is missing a value"),
        ("${UNSET", "unterminated ${"),
        ("${UNSET:-${HOST}", "unterminated ${"),
        ("${}", "invalid variable name"),
        ("${1X}", "invalid variable name"),
        ("${A B}", "invalid interpolation ${A B}"),
        ("${A:x}", "invalid interpolation ${A:x}"),
    ],
)
def test_interpolate_errors(text: str, message: str) -> None:
    with pytest.raises(InterpolationError) as caught:
        interpolate(text, VARS)
    assert message in str(caught.value)


KEEP = {"PORT", "DB_PORT"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--port ${PORT}", "--port ${PORT}"),
        ("--port $PORT", "--port ${PORT}"),
        ("redis://${HOST}:${DB_PORT}", "redis://db.local:${DB_PORT}"),
        ("${PORT:-8000}", "${PORT:-8000}"),
        ("${PORT:?no port}", "${PORT:?no port}"),
        ("${PORT:-${SET}}", "${PORT:-value}"),
        ("$PORTS", ""),
        # The result is a template again: literal dollars stay escaped for the next pass.
        ("$$HOME", "$$HOME"),
        ("$DOLLAR", "a$$b"),
        ("echo $1", "echo $$1"),
    ],
)
def test_keep_leaves_port_variables_for_later(text: str, expected: str) -> None:
    assert interpolate(text, {**VARS, "PORT": "1"}, keep=KEEP) == expected


@pytest.mark.parametrize(
    ("text", "final"),
    [
        ("--port ${PORT} --db ${DB_PORT}", "--port 8000 --db 6379"),
        ("$$HOME:${PORT}", "$HOME:8000"),
        ("${NOPE:-${PORT}}", "8000"),
        ("pw=$DOLLAR", "pw=a$b"),
    ],
)
def test_two_passes_give_the_final_text(text: str, final: str) -> None:
    first = interpolate(text, VARS, keep=KEEP)
    assert interpolate(first, port_env({"db": 6379, "api": 8000}, own="api")) == final


# Templates built from a small grammar: two passes must agree with one pass that knows
# every variable at once.
_names = st.sampled_from(["PORT", "DB_PORT", "SET", "EMPTY", "UNSET"])
_ops = st.sampled_from(["", ":-", "-", ":+", "+"])
_text = st.text(alphabet="ab :/-", max_size=4)


def _template(depth: int = 2) -> st.SearchStrategy[str]:
    leaf = st.one_of(
        _text,
        st.just("$$"),
        st.just("$1"),
        _names.map(lambda n: "$" + n),
        _names.map(lambda n: "${" + n + "}"),
    )
    if depth == 0:
        return leaf
    braced = st.builds(
        lambda n, op, arg: "${" + n + op + (arg if op else "") + "}", _names, _ops, _template(depth - 1)
    )
    return st.lists(st.one_of(leaf, braced), max_size=4).map("".join)


@given(_template(), st.dictionaries(st.sampled_from(["SET", "EMPTY"]), st.sampled_from(["", "v", "a$b"])))
def test_two_passes_equal_one(text: str, others: dict[str, str]) -> None:
    ports = {"PORT": "8000", "DB_PORT": "6379"}
    one_pass = interpolate(text, {**others, **ports})
    two_passes = interpolate(interpolate(text, others, keep=set(ports)), ports)
    assert two_passes == one_pass


@given(st.text(alphabet=st.characters(blacklist_characters="$")))
def test_text_without_dollars_is_unchanged(text: str) -> None:
    assert interpolate(text, VARS) == text
    assert interpolate(text, VARS, keep=KEEP) == text


@pytest.mark.parametrize(
    ("name", "variable"),
    [("db", "DB_PORT"), ("my-api", "MY_API_PORT"), ("web.v2", "WEB_V2_PORT"), ("Cache2", "CACHE2_PORT")],
)
def test_port_variable_names(name: str, variable: str) -> None:
    assert port_variable(name) == variable


def test_port_variables_include_port() -> None:
    assert port_variables(["db", "my-api"]) == {"PORT", "DB_PORT", "MY_API_PORT"}


@pytest.mark.parametrize(
    ("ports", "own", "expected"),
    [
        ({"db": 6379, "api": 8000}, None, {"DB_PORT": "6379", "API_PORT": "8000"}),
        ({"db": 6379, "api": 8000}, "api", {"DB_PORT": "6379", "API_PORT": "8000", "PORT": "8000"}),
        ({"db": 6379, "job": None}, "job", {"DB_PORT": "6379"}),
        ({}, "ghost", {}),
    ],
)
def test_port_env(ports: dict[str, int | None], own: str | None, expected: dict[str, str]) -> None:
    assert port_env(ports, own) == expected
