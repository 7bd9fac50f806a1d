"""`validate` finds programs that are not there: an error where exec would fail, a warning
where a shell decides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stackvisor.cli import main
from stackvisor.config.commands import program, shell_argv


def validate(tmp_path: Path, services: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    (tmp_path / "services.yaml").write_text("services:\n" + services)
    code = main(["validate", "-f", str(tmp_path / "services.yaml")])
    return code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_a_missing_program_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = validate(
        tmp_path, "  a: {command: no-such-program --flag}\n  b: {command: [nope-either]}\n", capsys
    )
    assert code == 2
    assert "services.yaml:2:16: services.a.command: program 'no-such-program' not found on the PATH" in err
    assert "services.yaml:3:7: services.b.command: program 'nope-either' not found on the PATH" in err


def test_a_program_that_cannot_run_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o644)
    code, err = validate(tmp_path, "  a: {command: ./run.sh}\n", capsys)
    assert code == 2 and "program './run.sh' is not executable" in err


def test_a_folder_is_not_a_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "adir").mkdir()
    code, err = validate(tmp_path, "  a: {command: ./adir}\n", capsys)
    assert code == 2 and "program './adir' is a folder, not a program" in err


def test_a_compound_shell_command_only_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = validate(tmp_path, "  a: {command: 'maybe-a-function && echo ok'}\n", capsys)
    assert code == 0
    assert "services.a.command: program 'maybe-a-function' not found on the PATH (warning)" in err


def test_programs_that_are_there_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = validate(
        tmp_path,
        "  a: {command: 'sh -c true'}\n  b: {command: ['true']}\n  c: {command: '${X:-true}'}\n",
        capsys,
    )
    assert code == 0 and err == ""


@pytest.mark.parametrize(
    ("command", "exec_d"),
    [
        ('nginx -p "$PWD/" -g "daemon off;"', True),  # the `;` is nginx's, inside quotes
        ("python3 -c 'import time; time.sleep(1)'", True),
        ("echo \\; done", True),  # an escaped `;` is a word
        ('echo "a \\" b; c"', True),
        ("migrate && serve", False),
        ("a; b", False),
        ('echo "$(date)" | cat', False),
        ("sleep 1 &", False),
        ("if true; then x; fi", False),
    ],
)
def test_one_simple_command_is_execd_whatever_its_quotes_hold(command: str, exec_d: bool) -> None:
    argv = shell_argv(command)
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[2] == (f"exec {command}" if exec_d else command)
    assert program(command)[1] is exec_d  # the program is certain only when exec'd
