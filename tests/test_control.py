"""The control socket and the CI commands, against real supervisors: detached ones where
the commands are tested, one in this process where the API itself is.

The commands run in this process (`cli`) unless their process is the point: `run`,
which handles signals, and the foreground `up`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    SLEEP,
    Start,
    alive,
    child_env,
    children_rows,
    cli,
    cli_process,
    client,
    free_ports,
    kill_marked,
    kill_tree,
    read_pids,
    running_stack,
    supervisor_pid,
    until_ready,
    wait_for,
    write_stack,
)

from stackvisor.control import sockets
from stackvisor.errors import ApiError
from stackvisor.paths import StackPaths
from stackvisor.system import procfs

pytestmark = pytest.mark.timeout(120)

PY = "python3"


def simple_stack(root: Path) -> None:
    """db, api healthy once db is, and worker after api."""
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
    return {s["name"]: s["pid"] for s in client(root).get("/v1/status")["services"]}


def test_socket_is_private_and_a_second_up_keeps_the_supervisor(tmp_path: Path, detached) -> None:
    simple_stack(tmp_path)
    first = detached(tmp_path)
    assert first.returncode == 0, first.stderr
    sock = StackPaths.at(tmp_path).socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    owner = supervisor_pid(tmp_path)
    inode = sock.stat().st_ino
    second = cli("up", "-d", cwd=tmp_path)  # converges with the running one (tests/test_converge.py)
    assert second.returncode == 0
    assert f"already running (pid {owner})" in second.stderr
    assert sock.stat().st_ino == inode
    assert client(tmp_path).get("/v1/status")["pid"] == owner


def test_wait_status_restart_and_down(tmp_path: Path, detached) -> None:
    simple_stack(tmp_path)
    up = detached(tmp_path)
    assert up.returncode == 0, up.stderr
    assert "ready: db, api, worker" in up.stderr
    status = json.loads(cli("status", "--json", cwd=tmp_path).stdout)
    assert {s["name"]: s["state"] for s in status["services"]} == {
        "db": "healthy",
        "api": "healthy",
        "worker": "running",
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
    assert not StackPaths.at(tmp_path).socket.exists()
    assert cli("status", cwd=tmp_path).returncode == 3
    again = cli("down", cwd=tmp_path)
    assert again.returncode == 0 and "was not running" in again.stderr


def test_wait_fails_with_the_log_tail_when_a_service_cannot_become_healthy(tmp_path: Path, detached) -> None:
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
    up = detached(tmp_path)
    assert up.returncode == 1
    assert "sick: failed" in up.stderr
    assert "sick | cannot reach the database" in up.stderr


def test_wait_times_out_with_exit_1(tmp_path: Path, detached) -> None:
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
    up = detached(tmp_path, "--timeout", "1s")
    assert up.returncode == 1
    assert "not ready after 1s" in up.stderr
    assert "never | still booting" in up.stderr


def test_run_exits_with_the_command_code_and_leaves_nothing(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    out = tmp_path / "seen"
    result = cli_process(
        "run",
        "--",
        sys.executable,
        "-c",
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
        "kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
        "start_new_session=True); "
        f"open({str(marker)!r}, 'w').write(str(kid.pid)); time.sleep(300)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "run", "--", sys.executable, "-c", command],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


def test_exit_with_stops_the_stack_when_the_pid_dies(tmp_path: Path, detached, start: Start) -> None:
    simple_stack(tmp_path)
    job = start([sys.executable, "-c", "import time; time.sleep(300)"])
    up = detached(tmp_path, "--exit-with", str(job.pid))
    assert up.returncode == 0, up.stderr
    supervisor = supervisor_pid(tmp_path)
    children = list(pids(tmp_path).values())
    job.kill()
    job.wait()
    gone = time.monotonic()
    wait_for(lambda: not alive(supervisor) and not any(alive(p) for p in children), timeout=2)
    assert time.monotonic() - gone <= 2


def test_lease_without_heartbeat_stops_the_stack(tmp_path: Path, detached) -> None:
    simple_stack(tmp_path)
    up = detached(tmp_path, "--lease", "1500ms")
    assert up.returncode == 0, up.stderr
    supervisor = supervisor_pid(tmp_path)
    children = list(pids(tmp_path).values())
    # Heartbeats every 0.2 s keep it up past its lease (which began when it started)...
    outlived = client(tmp_path).get("/v1/status")["started_at"] + 1.5 + 0.3

    def beat_until_outlived() -> bool:
        assert cli("heartbeat", cwd=tmp_path).returncode == 0
        return time.time() > outlived

    wait_for(beat_until_outlived, timeout=10, interval=0.2)
    assert alive(supervisor)
    # ...and without them it goes down
    last = time.monotonic()
    wait_for(lambda: not alive(supervisor) and not any(alive(p) for p in children), timeout=5)
    assert time.monotonic() - last <= 1.5 + 2


def test_orphans_of_a_killed_supervisor_are_ended_by_down(tmp_path: Path, detached) -> None:
    pidfile = tmp_path / "pids"
    write_stack(tmp_path, f"services:\n  family:\n    command: {PY} family.py {pidfile}\n")
    up = detached(tmp_path)
    assert up.returncode == 0, up.stderr
    grandchildren = read_pids(pidfile)
    os.kill(supervisor_pid(tmp_path), signal.SIGKILL)
    wait_for(lambda: supervisor_pid(tmp_path) is None)
    # The child itself dies with its supervisor (PDEATHSIG); its own children do not.
    assert all(alive(p) for p in grandchildren)
    down = cli("down", cwd=tmp_path)
    assert down.returncode == 0
    assert "ended orphaned family" in down.stderr
    wait_for(lambda: not any(alive(p) for p in grandchildren), timeout=3)


def test_a_recycled_pid_is_never_taken_for_an_orphan(tmp_path: Path, start: Start) -> None:
    from stackvisor.runtime.orphans import find_orphans
    from stackvisor.runtime.state import StateDB

    write_stack(tmp_path, "services:\n  api: {command: x}\n", programs=False)
    bystander = start([sys.executable, "-c", "import time; time.sleep(300)"])
    state_db = StackPaths.at(tmp_path).state_db
    db = StateDB.open(state_db, 999_999)
    real = procfs.started(bystander.pid)
    assert real is not None
    # Recorded by a supervisor that is gone, with the bystander's pid but another start time.
    db.child_started("api", bystander.pid, bystander.pid, real - 100, None, "999999-1.00-1/api/1")
    found = find_orphans(db, "another-instance")
    assert [(r.service, procs) for r, procs in found] == [("api", [])]
    db.close()
    assert cli("down", cwd=tmp_path).returncode == 0
    assert alive(bystander.pid)
    with contextlib.closing(sqlite3.connect(state_db)) as conn:
        assert conn.execute("SELECT exited_at IS NOT NULL FROM children").fetchone() == (1,)


def test_an_orphan_is_known_after_the_clock_steps_and_not_after_a_reboot(
    tmp_path: Path, start: Start, clock_step
) -> None:
    """A record's start counts from the boot: a wall clock stepped since does not hide
    the orphan, and a record of another boot never names a process of this one."""
    from stackvisor.runtime.orphans import find_orphans
    from stackvisor.runtime.state import StateDB

    write_stack(tmp_path, "services:\n  api: {command: x}\n", programs=False)
    orphan = start([sys.executable, "-c", "import time; time.sleep(300)"])
    began = procfs.started(orphan.pid)
    assert began is not None
    db = StateDB.open(StackPaths.at(tmp_path).state_db, 999_999)
    try:
        db.child_started("api", orphan.pid, orphan.pid, began, None, "")
        clock_step(3.0)
        found = find_orphans(db, "another-instance")
        assert [(r.service, [p.pid for p in procs]) for r, procs in found] == [("api", [orphan.pid])]
        db.db.execute("UPDATE children SET boot = 'an-earlier-boot'")
        assert [procs for _, procs in find_orphans(db, "another-instance")] == [[]]
    finally:
        db.close()
    assert alive(orphan.pid)


async def test_api_errors_are_json_4xx(tmp_path: Path) -> None:
    simple_stack(tmp_path)
    async with running_stack(tmp_path / "services.yaml") as sup:
        await until_ready(sup)
        await asyncio.to_thread(refused_requests_answer_json_4xx, tmp_path)


def refused_requests_answer_json_4xx(root: Path) -> None:
    c = client(root)
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
        + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    assert deep.recv(100).startswith(b"HTTP/1.1 400")
    deep.close()
    assert c.get("/v1/status")["pid"] == supervisor_pid(root)
    metrics = c.get("/metrics")
    assert 'stackvisor_service_up{service="api"} 1' in metrics
    assert 'stackvisor_service_state{service="db",state="healthy"} 1' in metrics
    assert "process_resident_memory_bytes" in metrics


async def test_tcp_needs_the_bearer_token(tmp_path: Path) -> None:
    import http.client

    (port,) = free_ports(1)
    path = write_stack(
        tmp_path,
        f"""
        settings:
          control: {{tcp: "127.0.0.1:{port}"}}
        services:
          a: {{command: "{SLEEP}"}}
        """,
    )
    async with running_stack(path) as sup:
        await until_ready(sup)
        await asyncio.to_thread(client(tmp_path).get, "/v1/status")  # the control server is up
        token_file = StackPaths.at(tmp_path).token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()

        def get(headers: dict[str, str]) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/v1/status", headers=headers)
                return conn.getresponse().status
            finally:
                conn.close()

        assert await asyncio.to_thread(get, {}) == 401
        assert await asyncio.to_thread(get, {"Authorization": "Bearer wrong"}) == 401
        assert await asyncio.to_thread(get, {"Authorization": "Bearer " + "\u00e9" * 10}) == 401
        assert await asyncio.to_thread(get, {"Authorization": f"Bearer {token}"}) == 200
        # The scheme is case-insensitive (RFC 7235); the token is not.
        assert await asyncio.to_thread(get, {"Authorization": f"bearer {token}"}) == 200
        assert await asyncio.to_thread(get, {"Authorization": f"BEARER  {token} "}) == 200
        assert await asyncio.to_thread(get, {"Authorization": f"Bearer {token.upper()}x"}) == 401
        assert await asyncio.to_thread(get, {"Authorization": f"Basic {token}"}) == 401
        # the unix socket needs no token: its 0600 mode is the guard
        status = await asyncio.to_thread(client(tmp_path).get, "/v1/status")
        assert status["services"][0]["name"] == "a"


async def test_events_over_websocket(tmp_path: Path) -> None:
    import aiohttp

    simple_stack(tmp_path)
    path = tmp_path / "services.yaml"
    async with running_stack(path) as sup:
        await until_ready(sup)
        connector = aiohttp.UnixConnector(path=str(StackPaths.at(tmp_path).socket))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.ws_connect("http://stack/v1/ws") as ws,
        ):
            await ws.send_json({"type": "ping"})
            assert (await ws.receive_json(timeout=5))["type"] == "pong"
            await ws.send_json({"type": "subscribe", "kinds": 5})
            assert (await ws.receive_json(timeout=5))["type"] == "error"
            await ws.send_json({"type": "subscribe", "kinds": ["state"], "services": ["worker"]})
            assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
            restart = asyncio.create_task(asyncio.to_thread(cli, "restart", "worker", "-f", str(path)))
            seen = []
            while "running" not in seen:
                message = await ws.receive_json(timeout=10)
                assert message["type"] == "event" and message["event"]["service"] == "worker"
                seen.append(message["event"]["data"]["new"])
            assert seen[:2] == ["stopping", "stopped"]
            assert (await restart).returncode == 0


def test_the_status_document_is_what_the_openapi_document_says(tmp_path: Path, detached: Any) -> None:
    """Every kind of service in one stack: its status validates against the published schema."""
    import jsonschema

    from stackvisor.control.openapi import OPENAPI

    port, public = free_ports(2)
    write_stack(
        tmp_path,
        f"""
        services:
          plain: {{command: "python3 -c 'import time; time.sleep(300)'", namespace: core, labels: {{a: b}}}}
          web: {{command: python3 server.py, port: {port}, replicas: 2}}
          lazy: {{command: python3 server.py, port: {public}, socket: proxy, start: on_demand, idle_stop: 1m}}
          nightly: {{command: "true", schedule: {{cron: "0 2 * * *", timezone: UTC}}}}
        """,
    )
    assert detached(tmp_path).returncode == 0
    schema = {"$ref": "#/components/schemas/Status", "components": OPENAPI["components"]}
    for resources in ("false", "true"):
        status = client(tmp_path).get(f"/v1/status?resources={resources}")
        jsonschema.validate(status, schema)
    by_name = {s["name"]: s for s in status["services"]}
    assert by_name["web.1"]["group"] == "web" and by_name["plain"]["namespace"] == "core"
    assert by_name["lazy"]["state"] == "idle" and by_name["nightly"]["next_run"] is not None
    # One service by name is its entry in the stack's status (what it uses aside), and a
    # group by name lists its copies: both as the schema says.
    status = client(tmp_path).get("/v1/status")
    for entry in status["services"]:
        alone = client(tmp_path).get(f"/v1/services/{entry['name']}")
        jsonschema.validate(
            alone, {"$ref": "#/components/schemas/Service", "components": OPENAPI["components"]}
        )
        assert alone == entry
    group = client(tmp_path).get("/v1/services/web")
    jsonschema.validate(group, {"$ref": "#/components/schemas/Group", "components": OPENAPI["components"]})
    assert group["services"] == [e for e in status["services"] if e["group"] == "web"]


def raw_post(
    socket_path: Path, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST `body` as given (no JSON encoding of ours): (status, the JSON answer)."""
    import socket as sock

    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}Connection: close\r\n\r\n"
    )
    with sock.socket(sock.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(str(socket_path))
        conn.sendall(request.encode() + body)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


def test_bodies_that_cannot_be_read_are_400s_with_a_reason(tmp_path: Path, detached: Any) -> None:
    write_stack(tmp_path, f'services:\n  web: {{command: "{SLEEP}"}}\n')
    assert detached(tmp_path).returncode == 0
    sock = StackPaths.at(tmp_path).socket
    cases = [
        ("/v1/restart", b"this is not gzip", {"Content-Encoding": "gzip"}, "cannot be decoded"),
        ("/v1/ports/allocate", b'{"name": "a\\ud800", "ttl": 5}', {}, "not valid unicode"),
        ("/v1/ports/release", b'{"id": "\\ud800"}', {}, "not valid unicode"),
        ("/v1/reload", b'{"dry_run": "false"}', {}, "dry_run: expected true or false"),
    ]
    for path, body, headers, reason in cases:
        status, answer = raw_post(sock, path, body, headers)
        assert status == 400 and reason in answer["detail"], (path, status, answer)
    assert client(tmp_path).get("/v1/status")["services"][0]["state"] == "running"


async def test_tcp_connections_that_never_show_the_token_are_few_and_brief(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone on the machine may connect to the TCP port: a connection that has not shown
    the token within its wait is closed, and beyond a few such connections new ones are
    closed at once, so nobody without the token can hold the supervisor's descriptors
    (a request whose headers never end, sent to hundreds of connections). A connection
    that showed the token keeps its event stream for as long as it likes."""
    from stackvisor.control import server

    monkeypatch.setattr(server, "UNTRUSTED_WAIT", 0.5)
    monkeypatch.setattr(server, "UNTRUSTED_MAX", 8)
    (port,) = free_ports(1)
    path = write_stack(
        tmp_path,
        f"""
        settings:
          control: {{tcp: "127.0.0.1:{port}"}}
        services:
          a: {{command: "{SLEEP}"}}
        """,
    )
    async with running_stack(path) as sup:
        await until_ready(sup)
        await asyncio.to_thread(client(tmp_path).get, "/v1/status")  # the control server is up
        token = StackPaths.at(tmp_path).token.read_text().strip()
        stream_reader, stream_writer = await asyncio.open_connection("127.0.0.1", port)
        stream_writer.write(
            f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        assert b"200" in await asyncio.wait_for(stream_reader.readline(), 5)
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _, writer in slow:
            writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        began = time.monotonic()
        ends = await asyncio.gather(*(asyncio.wait_for(reader.read(), 10) for reader, _ in slow))
        assert all(end == b"" for end in ends)  # closed by the supervisor, no answer
        assert time.monotonic() - began < 5
        # The stream that showed the token outlived them all, and still carries events.
        restart = asyncio.create_task(asyncio.to_thread(cli, "restart", "a", "-f", str(path)))
        seen = b""
        while b"stopping" not in seen:
            seen += await asyncio.wait_for(stream_reader.readline(), 10)
        assert (await restart).returncode == 0
        stream_writer.close()
        for _, writer in slow:
            writer.close()


def test_logs_beyond_the_tail_in_memory_come_from_the_files(tmp_path: Path, detached: Any) -> None:
    """The supervisor keeps the last 1,000 lines in memory; `logs -n 5000` of a running
    stack reads the rest from the service's log files (rotated ones too), in order."""
    write_stack(
        tmp_path,
        """
        settings: {log_max_bytes: 20000, log_backups: 5}
        services:
          flood: {command: "python3 -c 'for i in range(5000): print(f\\"line {i:05}\\")'", restart: "no"}
          idle: {command: "python3 -c 'import time; time.sleep(300)'"}
        """,
    )
    assert detached(tmp_path).returncode == 0
    wait_for(lambda: "line 04999" in cli("logs", "flood", "-n", "1", cwd=tmp_path).stdout)
    shown = cli("logs", "flood", "-n", "2500", cwd=tmp_path).stdout.splitlines()
    assert [line.rpartition(" ")[2] for line in shown] == [f"{i:05}" for i in range(2500, 5000)]
    every = cli("logs", "flood", "-n", "100000", cwd=tmp_path).stdout.splitlines()
    numbers = [line.rpartition(" ")[2] for line in every if "| line " in line]
    # As much as the files kept (five backups of 20 kB), and nothing out of order.
    assert len(numbers) > 1000 and numbers == [f"{i:05}" for i in range(5000 - len(numbers), 5000)]


def test_down_waits_for_a_supervisor_too_busy_to_say_it_holds_the_lock(tmp_path: Path) -> None:
    """A supervisor past its event loop (exiting) or with its loop blocked does not drain
    the lock socket: once its backlog is full, the lock answers "busy", and that is
    still a supervisor holding the stack (the one the kernel shows bound), not a gone one."""
    from stackvisor.config import load_config
    from stackvisor.control import ops
    from stackvisor.control.sockets import StackLock, _ask
    from stackvisor.paths import StackPaths

    path = write_stack(tmp_path, f'services:\n  web: {{command: "{SLEEP}"}}\n')
    name = StackLock(StackPaths.at(tmp_path).lock).name  # abstract: a NUL, then the rest
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time; s = socket.socket(socket.AF_UNIX);"
         " s.bind('\\0' + sys.argv[1]); s.listen(1); print('ready', flush=True); time.sleep(300)",
         name.lstrip("\0")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        config = load_config(path)
        wait_for(lambda: _ask(name)[0] == "busy", timeout=30)  # its backlog filled up
        assert ops.supervisor_pid(config) == holder.pid
        assert not ops._wait_exit(config, holder.pid, 0.5)
        holder.kill()
        holder.wait()
        assert ops._wait_exit(config, holder.pid, 10)
    finally:
        holder.kill()
        holder.wait()
