"""Stacks and scripts sharing the port registry: real supervisors (`up -d`), real
servers, the real CLI and control API, one registry file per test process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stackvisor.errors import ApiError
from stackvisor.ports.registry import Registry
from tests.conftest import (
    cli,
    cli_process,
    client,
    free_ports,
    service_pid,
    wait_for,
    write_stack,
)


def stack(root: Path, port: int, spare: list[int], *names: str) -> Path:
    others = ", ".join(map(str, spare))
    text = "services:\n" + "".join(
        f"  {name}:\n    command: python3 server.py\n    port: {port}\n"
        f"    alternative_ports: [{others}]\n    healthcheck: {{tcp: '${{PORT}}', interval: 0.2s}}\n"
        f"    backoff: {{initial: 0.2s, max: 0.4s}}\n    max_restarts: 0\n"
        for name in names
    )
    return write_stack(root, text)


def ports_of(root: Path) -> dict[str, int | None]:
    return {s["name"]: s["port"] for s in client(root).get("/v1/status")["services"]}


def test_two_stacks_on_one_port_run_side_by_side(tmp_path: Path, detached: Any) -> None:
    port, *spare = free_ports(4)
    (a := tmp_path / "a").mkdir()
    (b := tmp_path / "b").mkdir()
    stack(a, port, spare, "api")
    stack(b, port, spare, "api")
    assert detached(a).returncode == 0
    assert detached(b).returncode == 0
    assert ports_of(a) == {"api": port}
    moved = ports_of(b)["api"]
    assert moved in spare
    registry = Registry.open()
    try:
        owners = {a.owner: a.port for a in registry.live()}
    finally:
        registry.close()
    assert owners == {str(a / "services.yaml"): port, str(b / "services.yaml"): moved}
    # `down` gives the ports back.
    assert cli("down", cwd=b).returncode == 0
    registry = Registry.open()
    try:
        assert [x.owner for x in registry.live()] == [str(a / "services.yaml")]
    finally:
        registry.close()


def test_a_restarting_stack_keeps_its_port_from_another(tmp_path: Path, detached: Any) -> None:
    """Stack A's api is SIGKILLed again and again; each time, while it is down, stack B
    restarts services that want the same port. B never gets it; A always gets it back."""
    port, *spare = free_ports(6)
    (a := tmp_path / "a").mkdir()
    (b := tmp_path / "b").mkdir()
    stack(a, port, spare, "api")
    # B's "one" asks for A's port; "two" lists it first among where it may go.
    checks = "healthcheck: {tcp: '${PORT}', interval: 0.2s}"
    others = ", ".join(map(str, spare))
    write_stack(
        b,
        f"""
        services:
          one: {{command: python3 server.py, port: {port}, alternative_ports: [{others}], {checks}}}
          two: {{command: python3 server.py, port: auto, alternative_ports: [{port}, {others}], {checks}}}
        """,
    )
    assert detached(a).returncode == 0
    assert detached(b).returncode == 0
    api = client(b)
    for _ in range(8):
        victim = service_pid(a, "api")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda victim=victim: service_pid(a, "api") != victim, timeout=10)
        api.post("/v1/restart", {"services": ["one", "two"]}, timeout=30)
        taken = ports_of(b)
        assert port not in taken.values(), taken
        assert set(taken.values()) <= set(spare)
        wait_for(lambda: client(a).get("/v1/services/api")["state"] == "healthy", timeout=10)
        assert ports_of(a) == {"api": port}


def test_scripts_allocate_and_stacks_respect_them(tmp_path: Path, detached: Any) -> None:
    port, *spare = free_ports(3)
    got = cli_process("ports", "allocate", "e2e", "--preferred", str(port), "--quiet", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout == f"{port}\n"
    # Held by this test process (the parent of the CLI): a stack wanting it moves away.
    stack(tmp_path, port, spare, "api")
    planned = cli("ports", cwd=tmp_path)  # `ports` alone is still the plan, and it knows
    assert planned.returncode == 0 and "migrate" in planned.stdout
    assert f"port {port} is allocated to script allocation 'e2e'" in planned.stdout
    assert detached(tmp_path).returncode == 0
    assert ports_of(tmp_path)["api"] in spare
    history = cli("history", "--json", cwd=tmp_path)
    conflicts = json.loads(history.stdout)
    assert any("allocated to script allocation 'e2e'" in c["data"]["message"] for c in conflicts)
    # --required on the stack's port names the holder, exit 1.
    taken = ports_of(tmp_path)["api"]
    refused = cli_process("ports", "allocate", "x", "--preferred", str(taken), "--required", cwd=tmp_path)
    assert refused.returncode == 1
    assert f"port {taken} is allocated to {tmp_path / 'services.yaml'}'s api" in refused.stderr
    listed = json.loads(cli_process("ports", "list", "--json", cwd=tmp_path).stdout)
    assert {(r["name"], r["port"], r["status"]) for r in listed} == {
        ("e2e", port, "reserved"),
        ("api", taken, "active"),
    }


def test_a_lease_from_the_cli_and_bad_input(tmp_path: Path) -> None:
    made = cli_process(
        "ports", "allocate", "fwd", "--type", "rest-api", "--ttl", "30s", "--pid", "0", "--json", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    lease = json.loads(made.stdout)
    assert 8080 <= lease["port"] <= 8099 and lease["ttl"] == 30 and lease["pid"] is None
    assert cli("ports", "heartbeat", lease["id"]).returncode == 0
    assert cli("ports", "lookup", str(lease["port"])).returncode == 0
    assert cli("ports", "release", lease["id"]).returncode == 0
    unknown = cli("ports", "heartbeat", lease["id"])
    assert unknown.returncode == 1 and f"no allocation '{lease['id']}'" in unknown.stderr
    for args, says in [
        (("allocate", "x", "--type", "nope"), "unknown service type 'nope'"),
        (("allocate", "x", "--preferred", "70000"), "between 1 and 65535"),
        (("allocate", "x", "--pid", "0"), "needs a ttl"),
        (("lookup", "nothing-here"), "no live allocation for nothing-here"),
    ]:
        shown = cli("ports", *args)
        assert shown.returncode == 1 and says in shown.stderr and "Traceback" not in shown.stderr
    ranges = json.loads(cli("ports", "ranges", "--json").stdout)
    assert ranges["database"] == [5400, 5499] and ranges["custom"] is None


def test_the_api_allocates_and_refuses_with_4xx(tmp_path: Path, detached: Any) -> None:
    port, *spare = free_ports(3)
    stack(tmp_path, port, spare, "api")
    assert detached(tmp_path).returncode == 0
    api = client(tmp_path)
    got = api.post("/v1/ports/allocate", {"name": "tool", "type": "database", "ttl": "1m"})
    assert 5400 <= got["port"] <= 5499 and got["owner"] == "script"
    assert api.post(f"/v1/ports/{got['id']}/heartbeat")["id"] == got["id"]
    assert [r["id"] for r in api.get(f"/v1/ports/port/{got['port']}")] == [got["id"]]
    assert {r["name"] for r in api.get("/v1/ports/directory")} == {"api", "tool"}
    assert api.get("/v1/ports/ranges")["rest-api"] == [8080, 8099]
    assert api.get("/v1/ports/stats")["by_type"] == {"custom": 1, "database": 1}
    with pytest.raises(ApiError) as taken:
        api.post("/v1/ports/allocate", {"name": "x", "preferred": port, "required": True, "ttl": 5})
    assert taken.value.status == 409 and "'s api" in str(taken.value)
    for body in (
        {"name": "x", "preferred": 0, "ttl": 5},
        {"name": "x", "type": "nope", "ttl": 5},
        {"name": "x"},
    ):
        with pytest.raises(ApiError) as bad:
            api.post("/v1/ports/allocate", body)
        assert bad.value.status == 400, body
    for url, code in (
        ("/v1/ports/port/%C2%B9", 400),
        ("/v1/ports/port/70000", 400),
        ("/v1/ports/service/%C2%B9", 404),
    ):
        with pytest.raises(ApiError) as refused:
            api.get(url)
        assert refused.value.status == code, url
    with pytest.raises(ApiError) as gone:
        api.post("/v1/ports/release", {"id": "no-such-id"})
    assert gone.value.status == 404
    assert api.post("/v1/ports/release", {"id": got["id"]})["port"] == got["port"]

    def kinds() -> list[str]:  # the history is written within 50 ms of an event
        return [e["kind"] for e in json.loads(cli("history", "--all", "--json", cwd=tmp_path).stdout)]

    wait_for(lambda: kinds().count("port_allocated") == 2 and "port_released" in kinds(), timeout=5)


def test_a_corrupt_registry_is_made_again_and_the_stack_claims_its_ports(
    tmp_path: Path, detached: Any
) -> None:
    port, *spare = free_ports(3)
    stack(tmp_path, port, spare, "api")
    assert detached(tmp_path).returncode == 0
    path = Path(os.environ["STACKVISOR_REGISTRY"])
    garbage = path.with_name("garbage")
    garbage.write_bytes(b"not a database" * 1000)
    garbage.chmod(0o600)
    os.replace(garbage, path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    def claimed_again() -> bool:  # read only: the supervisor must do the recovery
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                return db.execute("SELECT name, port FROM allocations").fetchall() == [("api", port)]
        except sqlite3.DatabaseError:
            return False

    wait_for(claimed_again, timeout=10)
    assert list(path.parent.glob(f"{path.name}.corrupt-*"))
    assert client(tmp_path).get("/v1/services/api")["pid"] is not None


def test_port_auto_with_a_type_takes_its_range(tmp_path: Path, detached: Any) -> None:
    low = free_ports(1)[0]
    write_stack(
        tmp_path,
        f"""
        settings: {{port_types: {{mine: "{low}-{low}"}}}}
        services:
          web: {{command: python3 server.py, port: auto, type: mine}}
        """,
    )
    assert detached(tmp_path).returncode == 0
    assert ports_of(tmp_path) == {"web": low}
    # The CLI knows the stack's types: its one port is the stack's now.
    assert json.loads(cli("ports", "ranges", "--json", cwd=tmp_path).stdout)["mine"] == [low, low]
    full = cli("ports", "allocate", "x", "--type", "mine", cwd=tmp_path)
    assert full.returncode == 1 and f"no port of {low}-{low} is available" in full.stderr


def test_racing_cli_allocations_are_distinct(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stackvisor",
                "ports",
                "allocate",
                f"r{i}",
                "--type",
                "analytics",
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for i in range(8)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ports = [int(o) for o in outs]
    assert len(set(ports)) == 8 and all(8200 <= p <= 8299 for p in ports)


def test_a_waiting_service_has_its_port_before_it_starts(tmp_path: Path, detached: Any) -> None:
    db, api = free_ports(2)
    write_stack(
        tmp_path,
        f"""
        services:
          db:
            command: python3 server.py
            port: {db}
            environment: {{GO: "{tmp_path / "go"}"}}
            healthcheck: {{tcp: "${{PORT}}", interval: 0.2s}}
          api:
            command: python3 server.py
            port: {api}
            depends_on: {{db: {{condition: service_healthy}}}}
        """,
    )
    assert detached(tmp_path, wait=False).returncode == 0
    wait_for(lambda: client(tmp_path).get("/v1/services/api")["state"] == "pending")
    registry = Registry.open()
    try:
        assert {(a.name, a.port) for a in registry.live()} == {("db", db), ("api", api)}
    finally:
        registry.close()
    # Nobody else is handed it meanwhile.
    refused = cli("ports", "allocate", "x", "--preferred", str(api), "--required")
    assert refused.returncode == 1 and "'s api" in refused.stderr
    (tmp_path / "go").touch()
    wait_for(lambda: client(tmp_path).get("/v1/services/api")["state"] == "running", timeout=15)
