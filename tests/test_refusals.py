"""A refused `up` says why, starts nothing, and is recorded in the history."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from conftest import SLEEP, child_env, end_stack

from stackvisor.cli import main


def test_a_refused_up_is_in_the_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The port is held by this very process, which runs the CLI: critical, never ended.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        web = f"{{command: {sys.executable} -V, port: {port}}}"
        (tmp_path / "services.yaml").write_text(
            f"settings: {{strategy: conservative}}\nservices:\n  web: {web}\n"
        )
        monkeypatch.chdir(tmp_path)
        assert main(["up", "-d"]) == 1
        assert "web:" in capsys.readouterr().err
    assert main(["history", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["kind"] == "port_conflict" and row["service"] == "web"
    assert row["data"]["port"] == port and row["data"]["action"] == "fail"
    assert row["data"]["outcome"] == "failed: up refused, nothing was started"


def test_up_wait_says_when_down_stopped_the_stack(tmp_path: Path) -> None:
    import subprocess

    from stackvisor.config import load_config
    from stackvisor.control import ops

    never = f'{{command: "{SLEEP}", healthcheck: {{exec: "false"}}}}'
    (tmp_path / "services.yaml").write_text(f"services:\n  web: {never}\n")
    config = load_config(tmp_path / "services.yaml")
    up = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "up", "-d", "--wait", "--timeout", "120"],
        cwd=tmp_path,
        env=child_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stderr is not None
        first = up.stderr.readline()  # `up` is now waiting for the stack to be ready
        assert "running in the background" in first, first
        ops.down(config, timeout=30)
        _, err = up.communicate(timeout=30)
        assert up.returncode == 1
        assert "the stack was stopped before it was ready (stopped by `stackvisor down`" in err
        assert "a service failed" not in err
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        end_stack(tmp_path)
