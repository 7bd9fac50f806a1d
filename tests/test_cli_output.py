"""What the CLI prints in the situations people meet: a pipe closed early, a refused edit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import SLEEP, child_env, running_stack, until_state, write_stack

from stackvisor.cli.render import format_status
from stackvisor.paths import StackPaths


def test_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    logs = StackPaths.at(tmp_path).logs
    logs.mkdir(mode=0o700)
    (logs / "a.log").write_text("".join(f"line {i} of what the service printed\n" for i in range(20_000)))
    # `stackvisor logs -n 20000 | head -1`, with the stack not running: the files are read.
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "logs", "-n", "20000"],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"a | line 0 of what the service printed\n"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(30) == 0
    assert err == b""


async def test_plain_status_shows_a_refused_edit(tmp_path: Path) -> None:
    path = write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    async with running_stack(path) as sup:
        await until_state(sup, "a", "running")
        path.write_text("services:\n  a: {command: 42, nonsense: 1}\n")
        result = await sup.reload()
        assert not result["ok"]
        text = format_status(sup.status())
    assert "the last edit of the stack file was refused; it runs as before:" in text
    assert "services.yaml:2:" in text and "nonsense" in text


def web_stack(root: Path, port: int, extra: str = "") -> None:
    """A stack of one TCP server, `web`, on `port`, healthy once it accepts."""
    web = (
        f"    command: python3 server.py\n    port: {port}\n    healthcheck: {{tcp: '127.0.0.1:${{PORT}}'}}\n"
    )
    write_stack(root, f"services:\n  web:\n{web}{extra}")


def test_ports_against_a_running_stack_keeps_its_own_services(tmp_path: Path, detached) -> None:
    from conftest import cli, free_ports

    (port,) = free_ports(1)
    web_stack(tmp_path, port)
    assert detached(tmp_path).returncode == 0
    result = cli("ports", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (web,) = json.loads(result.stdout)
    assert (web["action"], web["level"], web["reason"]) == ("keep", "none", "this stack's web (running)")
    table = cli("ports", cwd=tmp_path).stdout
    assert "keep" in table and "terminate" not in table


def test_up_wait_says_which_port_it_moved_to(tmp_path: Path, detached) -> None:
    from conftest import free_ports

    port, alternative = free_ports(2)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])));"
            " s.listen(); print('ready', flush=True); time.sleep(300)",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        web_stack(tmp_path, port, f"    alternative_ports: [{alternative}]\n")
        result = detached(tmp_path)
        assert result.returncode == 0, result.stderr
        moved = rf"web: {port} is held by \S+ \(pid {holder.pid}, root\) -> moved to {alternative}\n"
        assert re.search(moved, result.stderr), result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_restart_wait_returns_once_the_service_is_ready_again(tmp_path: Path, detached) -> None:
    from conftest import cli, client, free_ports

    (port,) = free_ports(1)
    web_stack(tmp_path, port, "    env: {DELAY: '0.5'}\n")
    assert detached(tmp_path).returncode == 0
    result = cli("restart", "--wait", "web", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (web,) = client(tmp_path).get("/v1/status")["services"]
    assert web["state"] == "healthy"  # not `starting`: the restart was waited for
    assert "ready: web" in result.stderr


def test_exec_runs_a_command_as_the_service_runs(open_tmp: Path) -> None:
    import os

    from conftest import cli_process

    (open_tmp / "site").mkdir()
    user = "    user: nobody\n" if os.geteuid() == 0 else ""
    write_stack(
        open_tmp,
        "services:\n  web:\n    command: python3 -m http.server ${PORT}\n    port: 8123\n"
        f"    working_dir: site\n    env: {{GREETING: hello}}\n{user}",
        programs=False,
    )
    shown = cli_process(
        "exec", "web", "--", "sh", "-c", 'echo "$PORT $WEB_PORT $GREETING $(pwd) $(id -u)"', cwd=open_tmp
    )
    assert shown.returncode == 0, shown.stderr
    uid = 65534 if user else os.geteuid()
    assert shown.stdout == f"8123 8123 hello {open_tmp / 'site'} {uid}\n"
    assert cli_process("exec", "web", "--", "sh", "-c", "exit 7", cwd=open_tmp).returncode == 7
    missing = cli_process("exec", "web", "--", "no-such-program-here", cwd=open_tmp)
    assert missing.returncode == 127 and "cannot run 'no-such-program-here'" in missing.stderr


def test_exec_in_a_group_of_copies_runs_as_its_first_copy_or_the_one_named(open_tmp: Path) -> None:
    """As `docker compose exec`: the first copy, or `--index N`."""
    from conftest import cli_process

    write_stack(open_tmp, "services:\n  web:\n    command: sleep 60\n    replicas: 2\n", programs=False)
    said = 'echo "$REPLICA"'
    assert cli_process("exec", "web", "--", "sh", "-c", said, cwd=open_tmp).stdout == "0\n"
    assert cli_process("exec", "--index", "1", "web", "--", "sh", "-c", said, cwd=open_tmp).stdout == "1\n"
    assert cli_process("exec", "web.1", "--", "sh", "-c", said, cwd=open_tmp).stdout == "1\n"
    beyond = cli_process("exec", "--index", "2", "web", "--", "true", cwd=open_tmp)
    assert beyond.returncode == 2 and "web has copies web.0, web.1: no copy 2" in beyond.stderr
    assert "Traceback" not in beyond.stderr


def test_exec_reaches_a_copy_that_scale_added(tmp_path: Path, detached: Any) -> None:
    from conftest import cli, cli_process

    write_stack(tmp_path, "services:\n  web:\n    command: sleep 60\n    replicas: 2\n", programs=False)
    assert detached(tmp_path).returncode == 0
    assert cli("scale", "web", "3", cwd=tmp_path).returncode == 0
    said = 'echo "$REPLICA"'
    assert cli_process("exec", "web.2", "--", "sh", "-c", said, cwd=tmp_path).stdout == "2\n"
    assert cli_process("exec", "--index", "2", "web", "--", "sh", "-c", said, cwd=tmp_path).stdout == "2\n"


def test_the_stack_is_located_from_its_yaml_alone_unless_the_loader_is_needed(tmp_path: Path) -> None:
    from stackvisor.stackref import StackRef

    stack = tmp_path / "services.yaml"
    stack.write_text(
        "name: shop\nsettings: {logs_dir: out, control: {socket: run/c.sock}}\nservices: {a: {command: x}}\n"
    )
    quick = StackRef._read_quickly(stack)
    assert quick is not None and quick == StackRef.locate(stack)
    assert (quick.name, quick.paths.socket, quick.paths.logs, quick.services) == (
        "shop",
        tmp_path / "run" / "c.sock",
        tmp_path / "out",
        ("a",),
    )
    # The loader decides when a path is interpolated or the stack spans files.
    stack.write_text("settings: {logs_dir: '${LOGS:-out2}'}\nservices: {a: {command: x}}\n")
    assert StackRef._read_quickly(stack) is None
    assert StackRef.locate(stack).paths.logs == tmp_path / "out2"
    stack.write_text("include: [other.yaml]\nservices: {}\n")
    assert StackRef._read_quickly(stack) is None


def test_ctrl_c_while_the_command_loads_is_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in the first half second (the schema being imported, the parser built)
    lands before any command runs."""
    from stackvisor import cli
    from stackvisor.cli import parser

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(parser, "build_parser", interrupted)
    assert cli.main(["status"]) == 130
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_while_the_console_script_imports_the_cli_is_130_without_a_traceback() -> None:
    """The `stackvisor` command as installed: a Ctrl-C while it imports the CLI (the
    first tenths of a second) ends it with 130 and no traceback."""
    code = textwrap.dedent(
        """
        import importlib.abc, importlib.metadata, sys

        class Interrupted(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "stackvisor.cli":
                    raise KeyboardInterrupt

        sys.meta_path.insert(0, Interrupted())
        (script,) = importlib.metadata.entry_points(group="console_scripts", name="stackvisor")
        sys.exit(script.load()())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "")
