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
    expected = "larger than 1 MB" if target == "big.env" else "an env file must be one"
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


def stackvisor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stackvisor", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_a_pipe_or_a_loop_of_links_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A named pipe would block a reader until somebody writes; a link to itself makes
    `Path.resolve` raise. Each is a config error, for every command that reads the file."""
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    (tmp_path / "services.yaml").write_text("include: [pipe.yaml]\nservices:\n  web: {command: x}\n")
    for name, reason in (("pipe.yaml", "not a regular file"), ("loop.yaml", "cannot read")):
        for command in (["validate"], ["up", "--dry-run"]):
            result = stackvisor(*command, "-f", name, cwd=tmp_path)
            assert result.returncode == 2, (command, name, result.stderr)
            assert reason in result.stderr and "Traceback" not in result.stderr, (
                command,
                name,
                result.stderr,
            )
        # Those that ask a running stack find none here (they would ask the one its
        # supervisor recorded, whatever the file is now).
        for command, code in ((["status"], 3), (["down"], 0)):
            result = stackvisor(*command, "-f", name, cwd=tmp_path)
            assert result.returncode == code and "not running" in result.stderr, (
                command,
                name,
                result.stderr,
            )
    included = stackvisor("validate", cwd=tmp_path)
    assert included.returncode == 2 and "pipe.yaml: not a regular file" in included.stderr
    for source in ("pipe.yaml", "/dev/zero"):
        imported = stackvisor("import", source, cwd=tmp_path)
        assert imported.returncode == 2 and "not a regular file" in imported.stderr, imported.stderr


def merge_bomb(width: int) -> str:
    """Merge keys (`<<`) copy what they name: 100 keys, times `width`, times `width`."""
    keys = ", ".join(f"k{i}: 1" for i in range(100))
    return (
        f"x-a0: &a0 {{{keys}}}\n"
        f"x-a1: &a1 {{<<: [{', '.join(['*a0'] * width)}]}}\n"
        f"x-a2: &a2 {{<<: [{', '.join(['*a1'] * width)}]}}\n"
        "services:\n  web: {command: x}\n"
    )


def test_a_merge_key_bomb_is_refused_cheaply(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text(merge_bomb(1000))
    code = (
        "import resource, sys, time\n"
        "from stackvisor.config import ConfigError, load_config\n"
        "began = time.monotonic()\n"
        "try:\n    load_config(__import__('pathlib').Path(sys.argv[1]))\n"
        "except ConfigError as exc:\n    print(exc)\n"
        "print(time.monotonic() - began)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "services.yaml"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    # PyYAML from 6.0.4 folds each merged key in once (the bomb is then 200 values);
    # before, it copied every pair: either way it costs little, and a refusal says why.
    if len(out) == 3:
        assert "refused: the file expands to more than 500,000 values" in out[0]
    assert float(out[-2]) < 10 and int(out[-1]) < 400_000  # seconds, KB: not minutes and gigabytes
    # Merge keys themselves still work as YAML says.
    (tmp_path / "services.yaml").write_text(
        "x-base: &base {command: x, stop_timeout: 3s}\nservices:\n  web: {<<: *base, command: y}\n"
    )
    web = load_config(tmp_path / "services.yaml").services["web"]
    assert (web.command, web.stop_timeout) == ("y", 3.0)


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("{command: x, replicas: 99999999999999999999999}", "replicas: expected at most 1000"),
        ("{command: x, replicas: 1001}", "replicas: expected at most 1000"),
        ('{command: "sleep 1\\0"}', "a NUL character"),
        ('{command: [sleep, "1\\0"]}', "a NUL character"),
        ('{command: x, environment: {A: "x\\0y"}}', "a NUL character"),
        ('{command: x, environment: {"A\\0B": y}}', "a NUL character"),
    ],
)
def test_values_no_program_can_be_given_are_refused(tmp_path: Path, service: str, expected: str) -> None:
    message = load_error(tmp_path, f"services:\n  web: {service}\n")
    assert expected in message and message.startswith("services.yaml:2:")


def test_a_name_too_long_for_a_file_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, f"services:\n  {'x' * 300}: {{command: x}}\n")
    assert "at most 100 characters" in message


def test_an_env_file_with_a_nul_is_refused(tmp_path: Path) -> None:
    (tmp_path / "e.env").write_bytes(b"A=x\0y\n")
    message = load_error(tmp_path, "services:\n  web: {command: x, env_file: e.env}\n")
    assert "a NUL character" in message


def test_interpolation_nested_too_deeply_is_an_error(tmp_path: Path) -> None:
    deep = "${X:-" * 1000 + "d" + "}" * 1000
    message = load_error(tmp_path, f'services:\n  web: {{command: "echo {deep}"}}\n')
    assert "nested too deeply" in message


def test_variables_that_double_each_line_are_refused_before_they_fill_memory(tmp_path: Path) -> None:
    lines = ["V0=" + "x" * 16] + [f"V{i}=${{V{i - 1}}}${{V{i - 1}}}" for i in range(1, 41)]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    message = load_error(tmp_path, "services:\n  web: {command: echo $V40}\n")
    assert "longer than 1 MB" in message


def test_an_env_file_sees_the_lines_above(tmp_path: Path) -> None:
    (tmp_path / "e.env").write_text("A=hello\nB=${A}-world\n")
    (tmp_path / "services.yaml").write_text("services:\n  web: {command: x, env_file: e.env}\n")
    web = load_config(tmp_path / "services.yaml").services["web"]
    assert (web.env["A"], web.env["B"]) == ("hello", "hello-world")
