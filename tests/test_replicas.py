"""`replicas`: copies of a service, each with its own port, `REPLICA` and log; `scale`.

The pure parts (the copies made, their ports, the reload diff, the port variables)
with tables; then a real stack: copies listening, a dependent that waits for every
copy, scaling by the CLI, the API and a reload without touching the other copies.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import alive, cli, client, save, state_events, wait_for, write_stack

from stackvisor.cli.scaling import with_copies
from stackvisor.config import ConfigError, diff_configs, load_config
from stackvisor.config.interpolate import port_env
from stackvisor.config.replicas import expand_names, groups, problems, with_replicas, written
from stackvisor.errors import ApiError

pytestmark = pytest.mark.timeout(120)


def stack(tmp_path: Path, text: str) -> Any:
    return load_config(write_stack(tmp_path, text, programs=False))


# ----- the copies (pure) ------------------------------------------------------------------


def test_copies_are_named_by_index_with_the_next_port_each(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          api: {command: serve, port: 8000, replicas: 3}
          web:
            command: web
            depends_on: {api: {condition: service_started, restart: true}}
        """,
    )
    assert list(config.services) == ["api.0", "api.1", "api.2", "web"]
    assert [config.services[f"api.{i}"].port for i in range(3)] == [8000, 8001, 8002]
    assert [config.services[f"api.{i}"].name for i in range(3)] == ["api.0", "api.1", "api.2"]
    deps = config.services["web"].depends_on
    assert list(deps) == ["api.0", "api.1", "api.2"] and all(d.restart for d in deps.values())
    assert groups(config) == {"api": ["api.0", "api.1", "api.2"]}
    assert expand_names(config, ["web", "api"]) == ["web", "api.0", "api.1", "api.2"]
    assert list(written(config)) == ["api", "web"]
    assert list(written(config)["web"].depends_on) == ["api"]


def test_one_replica_is_the_service_itself_and_zero_is_none(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          api: {command: serve, port: 8000, replicas: 1}
          job: {command: work, replicas: 0}
          auto: {command: serve, port: auto, replicas: 2}
          web: {command: web, depends_on: [api, job]}
        """,
    )
    assert list(config.services) == ["api", "auto.0", "auto.1", "web"]
    assert config.services["auto.1"].port == "auto"  # each copy is given a port of its own
    assert list(config.services["web"].depends_on) == ["api"]
    assert set(config.groups) == {"job", "auto"}
    assert list(written(config)) == ["api", "auto", "web", "job"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api: {command: x, replicas: -1}", "services.api.replicas"),
        ("api: {command: x, port: 65535, replicas: 2}", "go past 65535"),
        ("api: {command: x, port: 8000, replicas: 3}\n  db: {command: y, port: 8002}", "8002 of"),
        ("api: {command: x, replicas: 2}\n  api.1: {command: y}", "api.1 is the name of a copy of api"),
        ("api: {command: x}\ngroups: {}", "groups: unknown field"),
    ],
)
def test_copies_that_cannot_be_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        stack(tmp_path, "services:\n  " + text + "\n")


def test_a_new_count_adds_or_removes_copies_and_changes_nothing_else(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          api: {command: serve, port: 8000, replicas: 2}
          web: {command: web, depends_on: {api: {condition: service_started}}}
        """,
    )
    more = with_replicas(config, "api", 3)
    assert list(more.services["web"].depends_on) == ["api.0", "api.1", "api.2"]
    diff = diff_configs(config, more)
    assert (diff.added, diff.removed, diff.changed) == (("api.2",), (), ())
    diff = diff_configs(more, with_replicas(more, "api", 1))
    assert (diff.added, diff.removed, diff.changed) == (("api",), ("api.0", "api.1", "api.2"), ())
    edited = with_replicas(config.model_copy(update={"groups": {}}), "web", 2)  # web as written
    assert "web.1" in edited.services
    assert problems(written(config), with_replicas(config, "api", 3)) == []


def test_the_port_variables_of_a_group(tmp_path: Path) -> None:
    ports: dict[str, int | None] = {"api.0": 8000, "api.1": 8001, "db": 5432, "w.0": None}
    copies = {"api": ["api.0", "api.1"], "w": ["w.0"], "none": []}
    env = port_env(ports, own="api.1", groups=copies)
    assert env["API_PORTS"] == "8000,8001" and env["API_PORT"] == "8000"
    assert (env["PORT"], env["REPLICA"], env["DB_PORT"]) == ("8001", "1", "5432")
    assert env["NONE_PORTS"] == "" and "NONE_PORT" not in env
    assert port_env(ports, own="w.0", groups=copies)["REPLICA"] == "0"
    assert "REPLICA" not in port_env(ports, own="db", groups=copies)
    assert port_env({"db": 1}, own="db") == {"DB_PORT": "1", "PORT": "1"}  # no groups: as ever


def test_the_cli_reads_a_group_as_its_copies() -> None:
    known = ["api.0", "api.1", "web", "v.2x"]
    assert with_copies(["api", "web"], known) == ["api.0", "api.1", "web"]
    assert with_copies(["api.1", "v"], known) == ["api.1", "v"]


# ----- a running stack ---------------------------------------------------------------------


def consecutive_ports(n: int) -> int:
    """The first of `n` consecutive ports that were free a moment ago."""
    for first in range(21000, 60000, 97):
        socks: list[socket.socket] = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free ports")


STACK = """
settings: {{reload: false}}
services:
  api:
    command: echo replica $REPLICA on $PORT; DELAY=$((REPLICA)) exec python3 server.py
    port: {port}
    replicas: {replicas}
    stop_timeout: 3s
    healthcheck: {{tcp: "127.0.0.1:${{PORT}}", start_interval: 50ms}}
  web:
    command: echo web sees ${{API_PORTS}}; exec python3 -c 'import time; time.sleep(300)'
    stop_timeout: 1s
    depends_on: {{api: {{condition: service_healthy}}}}
"""


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def pids(api: Any) -> dict[str, int]:
    return {s["name"]: s["pid"] for s in api.get("/v1/status")["services"] if s["pid"]}


def kept(now: dict[str, int], before: dict[str, int]) -> bool:
    """api.0 and api.1 run the processes they ran before."""
    return all(now[n] == before[n] for n in ("api.0", "api.1"))


def state(api: Any, name: str) -> str:
    return str(api.get(f"/v1/services/{name}")["state"])


def test_copies_listen_each_on_its_port_and_a_dependent_waits_for_all(tmp_path: Path, detached: Any) -> None:
    port = consecutive_ports(5)
    write_stack(tmp_path, STACK.format(port=port, replicas=3))
    up = detached(tmp_path)
    assert up.returncode == 0, up.stderr
    api = client(tmp_path)
    status = {s["name"]: s for s in api.get("/v1/status")["services"]}
    assert [status[f"api.{i}"]["port"] for i in range(3)] == [port, port + 1, port + 2]
    assert all(status[f"api.{i}"]["group"] == "api" for i in range(3)) and status["web"]["group"] is None
    assert all(connects(port + i) for i in range(3))
    every = f"{port},{port + 1},{port + 2}"
    logs = cli("logs", "api.1", cwd=tmp_path)
    assert f"replica 1 on {port + 1}" in logs.stdout and "api.1 | " in logs.stdout
    assert f"replica 1 on {port + 1}" in (tmp_path / "logs" / "api.1.log").read_text()
    group = cli("logs", "api", cwd=tmp_path).stdout
    assert all(f"api.{i} | replica {i} on {port + i}" in group for i in range(3))
    assert f"web sees {every}" in cli("logs", "web", cwd=tmp_path).stdout
    # web waited for the slowest copy (api.2 binds after 2 s) to be healthy
    # (state.db takes events in batches: wait for them to be written)
    healthy = min(
        wait_for(lambda: [e["ts"] for e in state_events(tmp_path, "api.2") if e.get("new") == "healthy"])
    )
    starting = min(
        wait_for(lambda: [e["ts"] for e in state_events(tmp_path, "web") if e.get("new") == "starting"])
    )
    assert starting >= healthy

    # scale up and down: only the copies added or removed are touched, and web, whose
    # command names API_PORTS, follows
    before = pids(api)
    scaled = cli("scale", "api", "5", cwd=tmp_path)
    assert scaled.returncode == 0, scaled.stderr
    # "added", not "started": a copy on demand waits idle
    assert scaled.stderr == "api: 5 copies (added api.3, api.4)\n"
    wait_for(lambda: state(api, "api.4") == "healthy", timeout=20)
    wait_for(lambda: f"web sees {every},{port + 3},{port + 4}" in cli("logs", "web", cwd=tmp_path).stdout)
    after = pids(api)
    assert {n: after[n] for n in before if n != "web"} == {n: p for n, p in before.items() if n != "web"}
    assert connects(port + 4) and after["web"] != before["web"]
    assert api.post("/v1/services/api/scale", {"replicas": 2})["removed"] == ["api.2", "api.3", "api.4"]
    gone = [after[f"api.{i}"] for i in (2, 3, 4)]
    wait_for(lambda: not any(alive(p) for p in gone))
    assert kept(pids(api), before)
    assert "api.2" not in pids(api) and not connects(port + 2)

    # a reload keeps the scale while the file's count is the same, and follows its edit
    assert cli("reload", cwd=tmp_path).returncode == 0
    assert "api.2" not in pids(api)
    save(tmp_path / "services.yaml", STACK.format(port=port, replicas=4))
    result = api.post("/v1/reload")
    assert result["added"] == ["api.2", "api.3"] and result["changed"] == []
    wait_for(lambda: state(api, "api.3") == "healthy", timeout=20)
    assert kept(pids(api), before)

    # the group by name: its copies, as the group's actions answer; restart every copy
    group = api.get("/v1/services/api")
    assert group["name"] == "api" and [s["name"] for s in group["services"]] == [f"api.{i}" for i in range(4)]
    assert group["state"] == ", ".join(f"api.{i} healthy" for i in range(4))
    restarted = cli("restart", "api", cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: all(state(api, f"api.{i}") == "healthy" for i in range(4)), timeout=20)
    assert pids(api)["api.0"] != before["api.0"]

    # `up api` against the running stack names the group: every copy is there already
    running = pids(api)
    again = cli("up", "-d", "--wait", "api", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert pids(api) == running

    everything = list(pids(api).values())
    assert cli("down", cwd=tmp_path).returncode == 0
    assert not any(alive(p) for p in everything)


def test_scale_refuses_a_bad_count_and_an_unknown_service(tmp_path: Path, detached: Any) -> None:
    port = consecutive_ports(2)
    write_stack(tmp_path, STACK.format(port=port, replicas=1))
    assert detached(tmp_path).returncode == 0
    api = client(tmp_path)
    assert [s["name"] for s in api.get("/v1/status")["services"]] == ["api", "web"]  # as ever
    for body, code in (({"replicas": -1}, 400), ({"replicas": "2"}, 400), ({}, 400)):
        with pytest.raises(ApiError) as caught:
            api.post("/v1/services/api/scale", body)
        assert caught.value.status == code
    with pytest.raises(ApiError) as caught:
        api.post("/v1/services/nope/scale", {"replicas": 2})
    assert caught.value.status == 404
    with pytest.raises(ApiError) as caught:
        api.post("/v1/services/api/scale", {"replicas": 65536 - port + 1})
    assert caught.value.status == 400
    assert cli("scale", "api", "x", cwd=tmp_path).returncode == 2
    # from one to two: `api` becomes `api.0` and `api.1`
    web = pids(api)["web"]
    assert cli("scale", "api", "2", cwd=tmp_path).returncode == 0
    wait_for(lambda: state(api, "api.1") == "healthy", timeout=20)
    assert pids(api)["web"] == web and "api" not in pids(api)
    # Scripts that follow the events hear of it: one `scaled` event, the group's.
    events = json.loads(cli("history", "--all", "--json", cwd=tmp_path).stdout)
    (scaled,) = [e for e in events if e["kind"] == "scaled"]
    assert scaled["service"] == "api"
    assert scaled["data"] == {"replicas": 2, "previous": 1, "added": ["api.0", "api.1"], "removed": ["api"]}
