"""Hostile or broken stack files are refused with a position, cheaply, and never crash."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stackvisor.config import ConfigError, load_config


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # errors name the file relative to here


def load_error(tmp_path: Path, text: str, name: str = "services.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def alias_bomb(levels: int = 10, width: int = 10) -> str:
    lines = ["x-bomb:", "  a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join([*lines, "services:", "  web: {command: x}", ""])


def test_an_alias_bomb_is_refused_with_bounded_memory(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text(alias_bomb())
    # A separate process, so its peak memory is its own: ten levels of ten aliases
    # would be 10^10 values; the loader stops long before.
    code = (
        "import resource, sys\n"
        "from stackvisor.config import ConfigError, load_config\n"
        "try:\n    load_config(__import__('pathlib').Path(sys.argv[1]))\n"
        "except ConfigError as exc:\n    print(exc)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "services.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith("services.yaml:2:")
    assert "refused: the file expands to more than 500,000 values" in out[0]
    assert int(out[-1]) < 400_000  # KB: bounded, not gigabytes


def test_deep_nesting_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    deep = "[" * 3000 + "]" * 3000
    message = load_error(tmp_path, f"services:\n  web:\n    command: x\n    env: {{K: {deep}}}\n")
    assert message.startswith("services.yaml:4:") and "nested more than 100 levels deep" in message
    mappings = "".join(f"{'  ' * i}k{i}:\n" for i in range(3000))
    text = "services:\n  web: {command: x}\nx-deep:\n" + textwrap.indent(mappings, "  ")
    message = load_error(tmp_path, text)
    assert "nested more than 100 levels deep" in message


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    with open(path, "w") as fh:
        fh.write("services:\n  web: {command: x}\n")
        fh.write("#" * (11 * 1024 * 1024))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == "services.yaml: larger than 10 MB; a stack file may not be"


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "big.env"])
def test_an_env_file_must_be_a_small_regular_file(tmp_path: Path, target: str) -> None:
    os.mkfifo(tmp_path / "fifo")  # opening it must not wait for a writer
    (tmp_path / "big.env").write_text("A=" + "x" * (2 * 1024 * 1024) + "\n")
    message = load_error(tmp_path, f"services:\n  web: {{command: x, env_file: {target}}}\n")
    expected = "larger than 1 MB" if target == "big.env" else "not a regular file; an env file must be one"
    assert expected in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0s", "expected at least 10ms: a shorter interval is a busy loop (got 0s)"),
        ("5ms", "expected at least 10ms"),
        ("99999999999999999999h", "expected a duration of at most a week (168h)"),
        ("169h", "expected a duration of at most a week (168h)"),
        (".nan", "expected a duration like 500ms"),
    ],
)
def test_durations_have_bounds(tmp_path: Path, value: str, expected: str) -> None:
    message = load_error(
        tmp_path, f"services:\n  web:\n    command: x\n    healthcheck: {{tcp: '1', interval: {value}}}\n"
    )
    assert message.startswith("services.yaml:4:") and "services.web.healthcheck.interval" in message
    assert expected in message


def test_bounds_leave_real_values_alone(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    check = "{tcp: '1', interval: 10ms, timeout: 168h}"
    path.write_text(f"services:\n  web:\n    command: x\n    healthcheck: {check}\n")
    check = load_config(path).services["web"].healthcheck
    assert check is not None and (check.interval, check.timeout) == (0.01, 168 * 3600)


@pytest.mark.parametrize("name", ["../../etc", "a/b", ".hidden", "-x", "with space", "é"])
def test_service_names_cannot_become_paths(tmp_path: Path, name: str) -> None:
    message = load_error(tmp_path, f'services:\n  "{name}": {{command: x}}\n')
    assert message.startswith("services.yaml:2:3: ")
    assert f"a service name must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (got {name!r})" in message


def test_compose_service_names_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  Web.v2_x-1: {command: x}\n  9lives: {command: x}\n")
    assert set(load_config(path).services) == {"Web.v2_x-1", "9lives"}


def test_peak_memory_of_this_process_is_untouched_by_refusals() -> None:
    # The refusals above ran in this process (but the bomb): a guard against a
    # refusal that first builds everything and then complains.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 2_000_000


def test_a_private_key_named_as_env_file_is_never_quoted(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    os.chmod(key, 0o600)
    message = load_error(tmp_path, "services:\n  web: {command: x, env_file: id_ed25519}\n")
    assert "OPENSSH" not in message and "b3Blbn" not in message
    assert 'expected KEY=VALUE (got "----...", 35 characters)' in message


def test_values_under_secret_looking_names_are_shown_as_stars() -> None:
    from stackvisor.config.explain import _show

    assert _show("hunter2", ("services", "web", "env", "API_TOKEN")) == "***"
    assert _show("hunter2", ("services", "web", "env", "db_password")) == "***"
    assert _show("hunter2", ("services", "web", "env", "MODE")) == '"hunter2"'
