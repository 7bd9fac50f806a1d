"""`${...}` interpolation reads as docker compose reads it.

The expectations are those of compose-go's template tests, written here as data, with
its variables: FOO set, BAR set but empty, JSON a JSON text, the rest unset.
"""

from __future__ import annotations

import pytest

from stackvisor.config.interpolate import InterpolationError, interpolate

VARIABLES = {"FOO": "first", "BAR": "", "JSON": '{"json":2}'}

EXPANDED = [
    ("$${foo}", "${foo}"),
    ("foo", "foo"),
    ("a $ string", "a $ string"),
    ("^REGEX$", "^REGEX$"),
    ("$}", "$}"),
    ("$", "$"),
    ("$FOO-bar", "first-bar"),
    ("This ${missing} var", "This  var"),
    ("This ${BAR} var", "This  var"),
    ("This $FOO var", "This first var"),
    ("This ${FOO} var", "This first var"),
    ("ok ${missing:-def}", "ok def"),
    ("ok ${missing-def}", "ok def"),
    ("${A:+${A},}B", "B"),
    ("${A:-${B}}", ""),
    ("ok ${BAR:-def}", "ok def"),
    ("ok ${FOO:-def}", "ok first"),
    ("ok ${BAR-def}", "ok "),
    ("ok ${UNSET_VAR:+presence_value}", "ok "),
    ("ok ${UNSET_VAR+presence_value}", "ok "),
    ("ok ${FOO:+presence_value}", "ok presence_value"),
    ("ok ${FOO+presence_value}", "ok presence_value"),
    ("ok ${BAR+presence_value}", "ok presence_value"),
    ("ok ${BAR:+presence_value}", "ok "),
    ("ok ${BAR:-/non:-alphanumeric}", "ok /non:-alphanumeric"),
    ("-ok ${BAR:-defaultValue}", "-ok defaultValue"),
    ("+ok ${UNSET:-${BAR-defaultValue}}", "+ok "),
    ("-ok ${FOO:-defaultValue}", "-ok first"),
    (":-ok ${UNSET-defaultValue}", ":-ok defaultValue"),
    (":-ok ${BAR-defaultValue}", ":-ok "),
    (":?ok ${BAR-defaultValue}", ":?ok "),
    (":?ok ${BAR:-defaultValue}", ":?ok defaultValue"),
    (":+ok ${BAR:-defaultValue}", ":+ok defaultValue"),
    ("+ok ${BAR-defaultValue}", "+ok "),
    ("?ok ${BAR:-defaultValue}", "?ok defaultValue"),
    ("ok ${UNSET_VAR-$FOO}", "ok first"),
    ("ok ${UNSET_VAR-${FOO}}", "ok first"),
    ("ok ${UNSET_VAR-${FOO} ${FOO}}", "ok first first"),
    ("ok ${BAR:-$FOO}", "ok first"),
    ("ok ${BAR:-${FOO}}", "ok first"),
    ("ok ${BAR:-${FOO} ${FOO}}", "ok first first"),
    ("ok ${BAR+$FOO}", "ok first"),
    ("ok ${BAR+$FOO ${FOO:+second}}", "ok first second"),
    ("ok ${FOO:?err}", "ok first"),
    ("ok ${FOO?err}", "ok first"),
    ("ok ${BAR?err}", "ok "),
    ('ok ${missing:-{"json":1}}', 'ok {"json":1}'),
    ('ok ${missing-{"json":1}}', 'ok {"json":1}'),
    ('ok ${JSON:-{"json":1}}', 'ok {"json":2}'),
    ('ok ${JSON-{"json":1}}', 'ok {"json":2}'),
]


@pytest.mark.parametrize(("template", "expected"), EXPANDED)
def test_a_template_expands_as_compose_expands_it(template: str, expected: str) -> None:
    assert interpolate(template, VARIABLES) == expected


REFUSED = [
    ("${", "unterminated"),
    ("${}", "invalid variable name"),
    ("${ }", "invalid variable name"),
    ("${ foo}", "invalid variable name"),
    ("${foo }", "invalid interpolation"),
    ("${foo!}", "invalid interpolation"),
    (
        "not ok ${UNSET_VAR:?Mandatory Variable Unset}",
        "required variable UNSET_VAR is missing a value: Mandatory Variable Unset",
    ),
    (
        "not ok ${BAR:?Mandatory Variable Empty}",
        "required variable BAR is missing a value: Mandatory Variable Empty",
    ),
    ("not ok ${UNSET_VAR:?}", "required variable UNSET_VAR is missing a value"),
    (
        "not ok ${UNSET_VAR?Mandatory Variable Unset}",
        "required variable UNSET_VAR is missing a value: Mandatory Variable Unset",
    ),
    ("not ok ${UNSET_VAR?}", "required variable UNSET_VAR is missing a value"),
    (
        "not ok ${UNSET_VAR:?Mandatory Variable ${FOO}}",
        "required variable UNSET_VAR is missing a value: Mandatory Variable first",
    ),
    (
        "not ok ${UNSET_VAR?Mandatory Variable ${FOO}}",
        "required variable UNSET_VAR is missing a value: Mandatory Variable first",
    ),
]


@pytest.mark.parametrize(("template", "message"), REFUSED)
def test_what_compose_refuses_is_refused(template: str, message: str) -> None:
    with pytest.raises(InterpolationError, match=message.replace("$", r"\$").replace("{", r"\{")):
        interpolate(template, VARIABLES)
