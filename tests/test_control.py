"""The control socket and the CI commands, against real detached supervisors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support import alive, children_rows, cli, free_ports, kill_marked, kill_tree, child_env, wait_for, write_program, write_stack

from stackvisor.control import sockets
from stackvisor.paths import StackPaths
from stackvisor.control.client import Client
from stackvisor.errors import ApiError

pytestmark = pytest.mark.timeout(120)

PY = "python3"


def supervisor_pid(root: Path) -> int | None:
    return sockets.StackLock(StackPaths.at(root).lock).holder()


@contextlib.contextmanager
def detached(root: Path, *args: str, wait: bool = True) -> Iterator[subprocess.CompletedProcess[str]]:
    """`up -d [--wait]`; whatever happens in the test, the stack is ended afterwards."""
    flags = ["-d", "--wait"] if wait else ["-d"]
    result = cli("up", *flags, *args, cwd=root)
    pid = supervisor_pid(root)
    try:
        yield result
    finally:
        cli("down", "--timeout", "10", cwd=root)
        if pid:
            kill_tree(pid)
        kill_marked(root)


def client(root: Path) -> Client:
    return Client(root / ".stackvisor" / "control.sock")


def simple_stack(root: Path) -> None:
    db, api = free_ports(2)
    write_stack(
        root,
        f"""
        services:
          db:
            command: {PY} server.py
            port: {db}
            healthcheck: {{tcp: "${{PORT}}"}}
          api:
            command: {PY} server.py
            port: {api}
            depends_on: {{db: {{condition: service_healthy}}}}
            healthcheck: {{http: "http://127.0.0.1:${{PORT}}/"}}
          worker:
            command: {PY} -c "import time; print('working', flush=True); time.sleep(300)"
            depends_on: [api]
        """,
    )


def pids(root: Path) -> dict[str, int]:
    status = json.loads(cli("status", "--json", cwd=root).stdout)
    return {s["name"]: s["pid"] for s in status["services"]}


def test_socket_is_private_and_a_second_up_is_refused(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    with detached(tmp_path) as first:
        assert first.returncode == 0, first.stderr
        sock = tmp_path / ".stackvisor" / "control.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        owner = supervisor_pid(tmp_path)
        inode = sock.stat().st_ino
        second = cli("up", "-d", cwd=tmp_path)
        assert second.returncode == 1
        assert f"already running (pid {owner})" in second.stderr
        assert sock.stat().st_ino == inode
        assert client(tmp_path).get("/v1/status")["pid"] == owner
        foreground = cli("up", cwd=tmp_path)
        assert foreground.returncode == 1 and "already running" in foreground.stderr


def test_wait_status_restart_and_down(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    with detached(tmp_path) as up:
        assert up.returncode == 0, up.stderr
        assert "ready: db, api, worker" in up.stderr
        status = json.loads(cli("status", "--json", cwd=tmp_path).stdout)
        assert {s["name"]: s["state"] for s in status["services"]} == {
            "db": "healthy", "api": "healthy", "worker": "running"
        }
        assert status["pid"] == supervisor_pid(tmp_path)
        before = pids(tmp_path)
        table = cli("status", cwd=tmp_path).stdout
        assert "healthy" in table and str(before["api"]) in table
        restarted = cli("restart", "api", cwd=tmp_path)
        assert restarted.returncode == 0, restarted.stderr
        wait_for(lambda: client(tmp_path).get("/v1/services/api")["state"] == "healthy")
        after = pids(tmp_path)
        assert after["api"] != before["api"]
        assert after["db"] == before["db"] and after["worker"] == before["worker"]
        logs = cli("logs", "-n", "5", "worker", cwd=tmp_path)
        assert "worker | working" in logs.stdout
        supervisor = supervisor_pid(tmp_path)
        everything = [supervisor, *after.values()]
        down = cli("down", cwd=tmp_path)
        assert down.returncode == 0 and "stopped" in down.stderr
        wait_for(lambda: not any(alive(p) for p in everything), timeout=3)
        assert not (tmp_path / ".stackvisor" / "control.sock").exists()
        assert cli("status", cwd=tmp_path).returncode == 3
        again = cli("down", cwd=tmp_path)
        assert again.returncode == 0 and "was not running" in again.stderr


def test_wait_fails_with_the_log_tail_when_a_service_cannot_become_healthy(tmp_path: Path) -> None:
    write_stack(
        tmp_path,
        f"""
        services:
          sick:
            command: {PY} -c "print('cannot reach the database', flush=True); raise SystemExit(4)"
            healthcheck: {{exec: "false"}}
            max_restarts: 1
            backoff: {{initial: 50ms}}
          fine:
            command: {PY} -c "import time; time.sleep(300)"
        """,
    )
    with detached(tmp_path) as up:
        assert up.returncode == 1
        assert "sick: failed" in up.stderr
        assert "sick | cannot reach the database" in up.stderr


def test_wait_times_out_with_exit_1(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    write_stack(
        tmp_path,
        f"""
        services:
          never:
            command: {PY} -c "import time; print('still booting', flush=True); time.sleep(300)"
            port: {port}
            healthcheck: {{tcp: "${{PORT}}", interval: 100ms, retries: 100}}
        """,
    )
    with detached(tmp_path, "--timeout", "1s") as up:
        assert up.returncode == 1
        assert "not ready after 1s" in up.stderr
        assert "never | still booting" in up.stderr


def test_run_exits_with_the_command_code_and_leaves_nothing(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    out = tmp_path / "seen"
    result = cli(
        "run", "--", sys.executable, "-c",
        f"import os, sys; open({str(out)!r}, 'w').write(os.environ['API_PORT']); raise SystemExit(7)",
        cwd=tmp_path,
    )
    try:
        assert result.returncode == 7, result.stderr
        status_port = next(r["port"] for r in children_rows(tmp_path) if r["service"] == "api")
        assert out.read_text() == str(status_port)
        assert supervisor_pid(tmp_path) is None
        assert not any(alive(r["pid"]) for r in children_rows(tmp_path))
    finally:
        kill_marked(tmp_path)


def test_run_goes_down_when_interrupted(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    marker = tmp_path / "started"
    command = (
        "import subprocess, sys, time; "
        "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True); "
        f"open({str(marker)!r}, 'w').write(str(kid.pid)); time.sleep(300)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "run", "--", sys.executable, "-c", command],
        cwd=tmp_path, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: marker.exists() and marker.read_text(), timeout=30)
        background = int(marker.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
        assert supervisor_pid(tmp_path) is None
        assert not any(alive(r["pid"]) for r in children_rows(tmp_path))
        wait_for(lambda: not alive(background), timeout=3)
    finally:
        kill_tree(proc.pid)
        kill_marked(tmp_path)


def test_exit_with_stops_the_stack_when_the_pid_dies(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        with detached(tmp_path, "--exit-with", str(job.pid)) as up:
            assert up.returncode == 0, up.stderr
            supervisor = supervisor_pid(tmp_path)
            children = list(pids(tmp_path).values())
            job.kill()
            job.wait()
            gone = time.monotonic()
            wait_for(lambda: not alive(supervisor) and not any(alive(p) for p in children), timeout=2)
            assert time.monotonic() - gone <= 2
    finally:
        job.kill()


def test_lease_without_heartbeat_stops_the_stack(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    with detached(tmp_path, "--lease", "1500ms") as up:
        assert up.returncode == 0, up.stderr
        supervisor = supervisor_pid(tmp_path)
        children = list(pids(tmp_path).values())
        # heartbeats keep it up past its lease...
        for _ in range(3):
            assert cli("heartbeat", cwd=tmp_path).returncode == 0
            time.sleep(0.6)  # the heartbeat's rhythm is what is tested here
        assert alive(supervisor)
        # ...and without them it goes down
        last = time.monotonic()
        wait_for(lambda: not alive(supervisor) and not any(alive(p) for p in children), timeout=5)
        assert time.monotonic() - last <= 1.5 + 2


def test_orphans_of_a_killed_supervisor_are_ended_by_down(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    write_program(
        tmp_path,
        "family.py",
        f"""
        import os, subprocess, sys, time
        sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
        same_group = subprocess.Popen(sleeper)
        escaped = subprocess.Popen(sleeper, start_new_session=True)
        with open("{pidfile}.tmp", "w") as fh:
            fh.write(f"{{same_group.pid}} {{escaped.pid}}")
        os.rename("{pidfile}.tmp", "{pidfile}")
        time.sleep(300)
        """,
    )
    write_stack(tmp_path, f"services:\n  family:\n    command: {PY} family.py\n")
    with detached(tmp_path) as up:
        assert up.returncode == 0, up.stderr
        wait_for(pidfile.exists)
        grandchildren = [int(p) for p in pidfile.read_text().split()]
        os.kill(supervisor_pid(tmp_path), signal.SIGKILL)
        wait_for(lambda: supervisor_pid(tmp_path) is None)
        # The child itself dies with its supervisor (PDEATHSIG); its own children do not.
        assert all(alive(p) for p in grandchildren)
        down = cli("down", cwd=tmp_path)
        assert down.returncode == 0
        assert "ended orphaned family" in down.stderr
        wait_for(lambda: not any(alive(p) for p in grandchildren), timeout=3)


def test_a_recycled_pid_is_never_taken_for_an_orphan(tmp_path: Path) -> None:
    from stackvisor.runtime.orphans import find_orphans
    from stackvisor.runtime.state import StateDB

    write_stack(tmp_path, "services:\n  api: {command: x}\n")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        db = StateDB.open(tmp_path / ".stackvisor" / "state.db", 999_999)
        real = psutil.Process(bystander.pid).create_time()
        # Recorded by a supervisor that is gone, with the bystander's pid but another start time.
        db.child_started("api", bystander.pid, bystander.pid, real - 100, None, "999999-1.00-1/api/1")
        found = find_orphans(db, "another-instance")
        assert [(r.service, procs) for r, procs in found] == [("api", [])]
        db.close()
        assert cli("down", cwd=tmp_path).returncode == 0
        assert alive(bystander.pid)
        with contextlib.closing(sqlite3.connect(tmp_path / ".stackvisor" / "state.db")) as conn:
            assert conn.execute("SELECT exited_at IS NOT NULL FROM children").fetchone() == (1,)
    finally:
        bystander.kill()
        bystander.wait()


def test_api_errors_are_json_4xx(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    with detached(tmp_path):
        c = client(tmp_path)
        cases = [
            ("GET", "/v1/services/nope", None, 404),
            ("POST", "/v1/services/nope/restart", None, 404),
            ("GET", "/v1/nothing", None, 404),
            ("DELETE", "/v1/status", None, 405),
            ("GET", "/v1/stop", None, 405),
            ("POST", "/v1/services/api/start", None, 409),
            ("GET", "/v1/services/api/logs?tail=x", None, 400),
            ("GET", "/v1/events?since=yesterday", None, 400),
        ]
        for method, url, body, code in cases:
            conn, resp = c._open(method, url, body)
            data = json.loads(resp.read())
            conn.close()
            assert resp.status == code, (method, url, data)
            assert set(data) == {"error", "detail"}
        with pytest.raises(ApiError) as err:
            c.request("POST", "/v1/restart", body=["not", "an", "object"])
        assert err.value.status == 400
        deep = sockets.connect_unix(c.path)
        payload = b"[" * 200_000  # nested too deeply for json
        deep.sendall(
            b"POST /v1/restart HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload
        )
        assert deep.recv(100).startswith(b"HTTP/1.1 400")
        deep.close()
        assert c.get("/v1/status")["pid"] == supervisor_pid(tmp_path)
        metrics = c.get("/metrics")
        assert 'stackvisor_service_up{service="api"} 1' in metrics
        assert 'stackvisor_service_state{service="db",state="healthy"} 1' in metrics
        assert "process_resident_memory_bytes" in metrics


def test_tcp_needs_the_bearer_token(tmp_path: Path) -> None:
    import http.client

    (port,) = free_ports(1)
    write_stack(
        tmp_path,
        f"""
        settings:
          control: {{tcp: "127.0.0.1:{port}"}}
        services:
          a: {{command: "{PY} -c 'import time; time.sleep(300)'"}}
        """,
    )
    with detached(tmp_path) as up:
        assert up.returncode == 0, up.stderr
        token_file = tmp_path / ".stackvisor" / "token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()

        def get(headers: dict[str, str]) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/v1/status", headers=headers)
                return conn.getresponse().status
            finally:
                conn.close()

        assert get({}) == 401
        assert get({"Authorization": "Bearer wrong"}) == 401
        assert get({"Authorization": "Bearer " + "\u00e9" * 10}) == 401
        assert get({"Authorization": f"Bearer {token}"}) == 200
        # the unix socket needs no token: its 0600 mode is the guard
        assert client(tmp_path).get("/v1/status")["services"][0]["name"] == "a"


async def test_events_over_websocket(tmp_path: Path) -> None:
    import asyncio

    import aiohttp

    simple_stack(tmp_path)
    with detached(tmp_path) as up:
        assert up.returncode == 0, up.stderr
        connector = aiohttp.UnixConnector(path=str(tmp_path / ".stackvisor" / "control.sock"))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.ws_connect("http://stack/v1/ws") as ws:
                await ws.send_json({"type": "ping"})
                assert (await ws.receive_json(timeout=5))["type"] == "pong"
                await ws.send_json({"type": "subscribe", "kinds": 5})
                assert (await ws.receive_json(timeout=5))["type"] == "error"
                await ws.send_json({"type": "subscribe", "kinds": ["state"], "services": ["worker"]})
                assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
                restart = asyncio.create_task(asyncio.to_thread(cli, "restart", "worker", cwd=tmp_path))
                seen = []
                while "running" not in seen:
                    message = await ws.receive_json(timeout=10)
                    assert message["type"] == "event" and message["event"]["service"] == "worker"
                    seen.append(message["event"]["data"]["new"])
                assert seen[:2] == ["stopping", "stopped"]
                assert (await restart).returncode == 0
