"""After a SIGKILL of the supervisor, the next `up` (not only `down`) ends what it left
in the stack's cgroups and starts: real supervisors, a real server behind a shell."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import alive, free_ports, supervisor_pid, wait_for, write_stack

# Binds $PORT and waits; started by a shell that stays (and ignores SIGTERM): the process
# holding the port is the recorded child's child.
SERVER = """
import os, socket, time
s = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
open("listening", "w").close()
time.sleep(300)
"""


def test_up_after_a_killed_supervisor_ends_its_leftover_holding_the_port(
    tmp_path: Path, detached: Any
) -> None:
    (port,) = free_ports(1)
    (tmp_path / "holder.py").write_text(SERVER)
    write_stack(
        tmp_path,
        f"""
        services:
          api:
            command: sh -c 'trap "" TERM; python3 holder.py'
            port: {port}
            stop_timeout: 2s
        """,
    )
    assert detached(tmp_path).returncode == 0
    wait_for((tmp_path / "listening").exists)
    holder = next(c for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid)
    os.kill(supervisor_pid(tmp_path), signal.SIGKILL)
    wait_for(lambda: supervisor_pid(tmp_path) is None)
    assert alive(holder.pid)  # left behind, holding the port
    (tmp_path / "listening").unlink()
    again = detached(tmp_path)
    assert again.returncode == 0, again.stderr
    assert not alive(holder.pid)
    wait_for((tmp_path / "listening").exists)
