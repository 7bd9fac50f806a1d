"""Services that daemonise (`daemon:`, `shutdown:`): real programs that fork into the
background, followed through their pidfile or the processes they leave, restarted when
the daemon dies, stopped by a command or a signal; a pidfile naming another process
is never adopted."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.conftest import alive, client, free_ports, wait_for, write_stack

# Forks twice (a new session between), the grandchild serves HTTP 200 on $PORT and
# writes its pid to run/app.pid; the first process exits 0 at once. With STUBBORN it
# ignores SIGTERM; it ends by itself once run/stop exists.
DAEMON = """
import os, signal, socket, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
if os.environ.get("STUBBORN"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(16); s.settimeout(0.05)
os.makedirs("run", exist_ok=True)
with open("run/app.pid.tmp", "w") as fh:
    fh.write(f"{os.getpid()}\\n")
os.replace("run/app.pid.tmp", "run/app.pid")
while not os.path.exists("run/stop"):
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.recv(1024); c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n"); c.close()
"""


def stack(root: Path, daemon: str, extra: str = "") -> int:
    (port,) = free_ports(1)
    (root / "daemon.py").write_text(DAEMON)
    write_stack(
        root,
        f"""
        services:
          app:
            command: {sys.executable} daemon.py
            port: {port}
            daemon: {daemon}
            stop_timeout: 5s
            healthcheck: {{http: "http://127.0.0.1:${{PORT}}/", interval: 200ms}}
            {extra}
        """,
        programs=False,
    )
    return port


def app(root: Path) -> dict[str, Any]:
    return client(root).get("/v1/services/app")


def pidfile(root: Path) -> int:
    return int((root / "run" / "app.pid").read_text())


def test_the_daemon_of_a_pidfile_is_followed_restarted_and_stopped(tmp_path: Path, detached: Any) -> None:
    stack(tmp_path, "{pidfile: run/app.pid}")
    assert detached(tmp_path).returncode == 0
    status = app(tmp_path)
    first = pidfile(tmp_path)
    assert (status["state"], status["pid"]) == ("healthy", first)  # the daemon, not the exited starter
    os.kill(first, signal.SIGKILL)  # it dies: an exit of the service, restarted
    wait_for(
        lambda: app(tmp_path)["state"] == "healthy" and app(tmp_path)["pid"] not in (None, first), timeout=15
    )
    second = app(tmp_path)["pid"]
    assert second == pidfile(tmp_path) and app(tmp_path)["restarts"] == 1
    client(tmp_path).post("/v1/services/app/stop")
    assert app(tmp_path)["state"] == "stopped"
    assert not alive(second)


def test_without_a_pidfile_the_process_it_left_is_followed(tmp_path: Path, detached: Any) -> None:
    stack(tmp_path, "true")
    assert detached(tmp_path).returncode == 0
    assert app(tmp_path)["pid"] == pidfile(tmp_path)
    assert client(tmp_path).post("/v1/stop")["stopping"]
    wait_for(lambda: not alive(pidfile(tmp_path)), timeout=15)


def test_a_shutdown_command_stops_it_before_any_signal(tmp_path: Path, detached: Any) -> None:
    extra = 'shutdown: {command: "touch run/stop", timeout: 5s}\n            env: {STUBBORN: "1"}'
    stack(tmp_path, "{pidfile: run/app.pid}", extra)
    assert detached(tmp_path).returncode == 0
    daemon = pidfile(tmp_path)
    client(tmp_path).post("/v1/services/app/stop")
    assert not alive(daemon)
    log = (tmp_path / "logs" / "app.log").read_text()
    assert "shutdown command succeeded; it ended" in log  # SIGTERM is ignored: the command did it


def test_a_pidfile_naming_another_process_is_never_adopted(tmp_path: Path, detached: Any, start: Any) -> None:
    """A stale or planted pidfile: the process it names is not the service's own."""
    stranger = start([sys.executable, "-c", "import time; time.sleep(300)"])
    (tmp_path / "run").mkdir()
    (tmp_path / "planted.py").write_text(f"open('run/app.pid', 'w').write('{stranger.pid}')\n")
    (port,) = free_ports(1)
    write_stack(
        tmp_path,
        f"""
        services:
          app:
            command: {sys.executable} planted.py
            port: {port}
            daemon: {{pidfile: run/app.pid, wait: 1s}}
            restart: "no"
        """,
        programs=False,
    )
    detached(tmp_path)
    # No daemon of its own: a failure (the exit code is known a moment before the state).
    wait_for(lambda: (app(tmp_path)["exit_code"], app(tmp_path)["state"]) == (-1, "exited"), timeout=10)
    log = (tmp_path / "logs" / "app.log").read_text()
    assert "no live process of the service in pidfile" in log
    assert alive(stranger.pid)
