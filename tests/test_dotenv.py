"""`.env` and `env_file` read exactly as docker compose reads them.

The expectations are those of compose-go's dotenv tests (its fixtures and its parsing
cases), written here as data: what a line holds, and what Compose makes of it.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from stackvisor.config.envfiles import parse_env_text, resolve


def read(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    entries, problems = parse_env_text(text)
    assert problems == []
    values, more = resolve(entries, environ or {})
    assert more == []
    return values


# One line (or a few), and the single value Compose reads from it.
ONE_VALUE = [
    ("FOO=bar", "FOO", "bar"),
    ("FOO =bar", "FOO", "bar"),
    ("FOO= bar", "FOO", "bar"),
    ('FOO="bar"', "FOO", "bar"),
    ("FOO='bar'", "FOO", "bar"),
    (r'FOO="escaped\"bar"', "FOO", 'escaped"bar'),
    (r'FOO="\"quoted\""', "FOO", '"quoted"'),
    ("FOO=\"'d'\"", "FOO", "'d'"),
    ("OPTION_A: 1", "OPTION_A", "1"),
    ("OPTION_A: Foo=bar", "OPTION_A", "Foo=bar"),
    ("OPTION_A=1:B", "OPTION_A", "1:B"),
    ("export OPTION_A=2", "OPTION_A", "2"),
    (r"export OPTION_B='\n'", "OPTION_B", r"\n"),
    ("export exportFoo=2", "exportFoo", "2"),
    ("exportFOO=2", "exportFOO", "2"),
    ("export_FOO =2", "export_FOO", "2"),
    ("export.FOO= 2", "export.FOO", "2"),
    ("export\tOPTION_A=2", "OPTION_A", "2"),
    ("  export OPTION_A=2", "OPTION_A", "2"),
    ("\texport OPTION_A=2", "OPTION_A", "2"),
    ('export OPTION_A="export A"', "OPTION_A", "export A"),
    (r'FOO="bar\nbaz"', "FOO", "bar\nbaz"),
    (r"FOO=a\tb", "FOO", r"a\tb"),
    (r'FOO="a\tb"', "FOO", "a\tb"),
    (r'KEY="Z\aZ\bZ\fZ\nZ\rZ\tZ\vZ\\Z\0123Z"', "KEY", "Z\aZ\bZ\fZ\nZ\rZ\tZ\vZ\\ZSZ"),
    ("FOO.BAR=foobar", "FOO.BAR", "foobar"),
    ("FOO=foobar=", "FOO", "foobar="),
    ("FOO=bar ", "FOO", "bar"),
    ("FOO=bar # this is foo", "FOO", "bar"),
    ("FOO=bar #this is foo", "FOO", "bar"),
    ("FOO=bar #", "FOO", "bar"),
    ("FOO=123#not-an-inline-comment", "FOO", "123#not-an-inline-comment"),
    ('FOO="bar#baz"', "FOO", "bar#baz"),
    ('FOO="bar#baz"#', "FOO", "bar#baz"),
    ('FOO="bar#baz" # comment', "FOO", "bar#baz"),
    ("FOO='bar#baz' # comment", "FOO", "bar#baz"),
    ('FOO="bar#baz#bang" # comment', "FOO", "bar#baz#bang"),
    ('FOO="ba#r"', "FOO", "ba#r"),
    ("FOO='ba#r'", "FOO", "ba#r"),
    (r'FOO="bar\n\ b\az"', "FOO", "bar\n\\ b\az"),
    (r'FOO="bar\\\n\ b\az"', "FOO", "bar\\\n\\ b\az"),
    (r'FOO="bar\\r\ b\az"', "FOO", "bar\\r\\ b\az"),
    (r'FOO="bar\nbaz\\"', "FOO", "bar\nbaz\\"),
    ('="value"', "", "value"),
    (" KEY =value", "KEY", "value"),
    ("   KEY=value", "KEY", "value"),
    ("\tKEY=value", "KEY", "value"),
    (r'KEY="\0123"', "KEY", "S"),
    (r'KEY="\x07"', "KEY", r"\x07"),
    (r'KEY="\u12e4"', "KEY", r"\u12e4"),
    (r'KEY="\U00101234"', "KEY", r"\U00101234"),
    ("OPTION_K='Let\\'s go!'", "OPTION_K", "Let's go!"),
    (
        'TEST_URLS="stratum+tcp://a:3333\nstratum+tcp://b:443"',
        "TEST_URLS",
        "stratum+tcp://a:3333\nstratum+tcp://b:443",
    ),
    (
        "OPTION_A='postgres://localhost:5432/database?sslmode=disable'",
        "OPTION_A",
        "postgres://localhost:5432/database?sslmode=disable",
    ),
    ("456 = ABC", "456", "ABC"),
    ("a[1]=c", "a[1]", "c"),
    ("a.propertyKey=d", "a.propertyKey", "d"),
    ("árvíztűrő-TÜKÖRFÚRÓGÉP=ÁRVÍZTŰRŐ-tükörfúrógép", "árvíztűrő-TÜKÖRFÚRÓGÉP", "ÁRVÍZTŰRŐ-tükörfúrógép"),
    ("VAR-WITH-DASHES=dashes", "VAR-WITH-DASHES", "dashes"),
    (
        "OPTION_D = then another one with an unquoted phrase special è char",
        "OPTION_D",
        "then another one with an unquoted phrase special è char",
    ),
    ("OPTION_I = \"echo 'asd'\" # Inline comment", "OPTION_I", "echo 'asd'"),
    (
        "OPTION_J = 'first line\nsecond line\nthird line\nand so on'",
        "OPTION_J",
        "first line\nsecond line\nthird line\nand so on",
    ),
    ("OPTION_H = my string # Inline comment", "OPTION_H", "my string"),
    ("OPTION_F = ", "OPTION_F", ""),
]


@pytest.mark.parametrize(("text", "key", "value"), ONE_VALUE)
def test_a_line_reads_as_compose_reads_it(text: str, key: str, value: str) -> None:
    assert read(text) == {key: value}


# Whole files, and what Compose reads from them.
FILES = [
    ("ONE=1\nTWO='2'\nTHREE = \"3\"", {}, {"ONE": "1", "TWO": "2", "THREE": "3"}),
    (  # a byte order mark, then blanks around separators
        "\ufeffOPTION_A=1\nOPTION_B=2\nOPTION_C= 3\nOPTION_D =4\nOPTION_E = 5\nOPTION_F =\nOPTION_G=\n",
        {},
        {
            "OPTION_A": "1",
            "OPTION_B": "2",
            "OPTION_C": "3",
            "OPTION_D": "4",
            "OPTION_E": "5",
            "OPTION_F": "",
            "OPTION_G": "",
        },
    ),
    (  # quotes of both kinds, empty ones, escapes only in double quotes
        "OPTION_A='1'\nOPTION_C=''\nOPTION_D='\\n'\nOPTION_E=\"1\"\nOPTION_G=\"\"\nOPTION_H=\"\\n\"\n",
        {},
        {
            "OPTION_A": "1",
            "OPTION_C": "",
            "OPTION_D": "\\n",
            "OPTION_E": "1",
            "OPTION_G": "",
            "OPTION_H": "\n",
        },
    ),
    (  # lines above are variables for lines below
        "OPTION_A=1\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\nOPTION_D=${OPTION_A}_${OPTION_B}\nOPTION_E=${OPTION_NOT_DEFINED}",
        {},
        {"OPTION_A": "1", "OPTION_B": "1", "OPTION_C": "1", "OPTION_D": "1_1", "OPTION_E": ""},
    ),
    (  # ... but the environment comes first
        "OPTION_A=1\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\nOPTION_D=${OPTION_A}_${OPTION_B}\nOPTION_E=${OPTION_NOT_DEFINED}",
        {"OPTION_A": "5"},
        {"OPTION_A": "1", "OPTION_B": "5", "OPTION_C": "5", "OPTION_D": "5_5", "OPTION_E": ""},
    ),
    (
        "OPTION_A=${OPTION_A:-1}\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\nOPTION_D=${OPTION_A}_${OPTION_B}",
        {"OPTION_A": "5"},
        {"OPTION_A": "5", "OPTION_B": "5", "OPTION_C": "5", "OPTION_D": "5_5"},
    ),
    (
        "OPTION_A=${OPTION_A:-1}\nOPTION_B=${OPTION_A}\nOPTION_C=$OPTION_B\nOPTION_D=${OPTION_A}_${OPTION_B}",
        {},
        {"OPTION_A": "1", "OPTION_B": "1", "OPTION_C": "1", "OPTION_D": "1_1"},
    ),
    ("FOO=test\nBAR=$FOO", {}, {"FOO": "test", "BAR": "test"}),
    ("FOO=test\nBAR=${FOO}bar", {}, {"FOO": "test", "BAR": "testbar"}),
    ("BAR=$FOO", {}, {"BAR": ""}),
    ('FOO=test\nBAR="quote $FOO"', {}, {"FOO": "test", "BAR": "quote test"}),
    ("BAR='quote $FOO'", {}, {"BAR": "quote $FOO"}),
    (r'FOO="foo\$BAR"', {}, {"FOO": "foo$BAR"}),
    (r'FOO="foo\${BAR}"', {}, {"FOO": "foo${BAR}"}),
    ('FOO=test\nBAR="foo\\${FOO} ${FOO}"', {}, {"FOO": "test", "BAR": "foo${FOO} test"}),
    ("TEST=$ME", {"ME": "YES"}, {"TEST": "YES"}),
    (  # a name alone takes the environment's value, and is left out when there is none
        "foo=bar\nVAR_TO_BE_LOADED_FROM_OS_ENV\nbar=baz",
        {"VAR_TO_BE_LOADED_FROM_OS_ENV": "SOME_RANDOM_VALUE"},
        {"foo": "bar", "VAR_TO_BE_LOADED_FROM_OS_ENV": "SOME_RANDOM_VALUE", "bar": "baz"},
    ),
    ("VARIABLE_NOT_FOUND", {}, {}),
    (
        "VAR.WITH.DOTS=dots\nVAR_WITH_UNDERSCORES=underscores\nVAR-WITH-DASHES=dashes",
        {},
        {"VAR.WITH.DOTS": "dots", "VAR_WITH_UNDERSCORES": "underscores", "VAR-WITH-DASHES": "dashes"},
    ),
    ("\n", {}, {}),
    ("\r\n", {}, {}),
    ("\t\t ", {}, {}),
    ("# Comment", {}, {}),
    ("\t # comment", {}, {}),
    ("\n".join(f"KEY{i}=VALUE{i}" for i in range(1000)), {}, {f"KEY{i}": f"VALUE{i}" for i in range(1000)}),
]


@pytest.mark.parametrize(("text", "environ", "values"), FILES)
def test_a_file_reads_as_compose_reads_it(text: str, environ: dict[str, str], values: dict[str, str]) -> None:
    assert read(text, environ) == values


# What Compose refuses, and where we say it is.
REFUSED = [
    ('KEY="', (1, 5), 'KEY: the " quote is never closed'),
    ('KEY="value', (1, 5), 'KEY: the " quote is never closed'),
    ('KEY="value\\"', (1, 5), 'KEY: the " quote is never closed'),
    ("KEY=\"value'", (1, 5), 'KEY: the " quote is never closed'),
    ("KEY='", (1, 5), "KEY: the ' quote is never closed"),
    ("KEY='value", (1, 5), "KEY: the ' quote is never closed"),
    ("KEY='value\\'", (1, 5), "KEY: the ' quote is never closed"),
    ("KEY='value\"", (1, 5), "KEY: the ' quote is never closed"),
    ("lol$wut", (1, 4), "unexpected character '$' in a variable name"),
    ("%!(EXTRA string)=foo", (1, 1), "unexpected character '%' in a variable name"),
    (
        '# some comments\nfoo="\n  a\n  multine\n  value\n"\nINVALID LINE\nzot=qix',
        (7, 1),
        "expected KEY=VALUE",
    ),
]


@pytest.mark.parametrize(("text", "where", "message"), REFUSED)
def test_what_compose_refuses_is_refused_with_its_place(
    text: str, where: tuple[int, int], message: str
) -> None:
    _, problems = parse_env_text(text)
    assert len(problems) == 1
    line, column, said = problems[0]
    assert (line, column) == where and said.startswith(message)


def test_a_bad_line_loses_only_itself() -> None:
    entries, problems = parse_env_text(
        '# some comments\nfoo="\n  a\n  multine\n  value\n"\nINVALID LINE\nzot=qix'
    )
    assert [(e.key, e.value) for e in entries] == [("foo", "\n  a\n  multine\n  value\n"), ("zot", "qix")]
    assert [p[:2] for p in problems] == [(7, 1)]
