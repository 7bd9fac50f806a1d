"""The shipped examples work with the real servers they name, as their comments say.

They need the distribution's packages (postgresql, redis-server, nginx): `.ci/run`
installs them where apt can; elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import REPO, alive, cli, free_ports, save, service_pid, supervisor_pid, wait_for

from stackvisor.paths import StackPaths
from stackvisor.system import cgroups

# What a run of an example leaves beside it (a person may have tried it in the checkout).
LOCAL = shutil.ignore_patterns(".stackvisor", "logs", "run")
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def missing(*programs: str) -> list[str]:
    path = os.pathsep.join([*PG_BIN, os.environ.get("PATH", "")])
    return [p for p in programs if shutil.which(p, path=path) is None]


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of examples/ with a cluster folder of its own, as the example's comment
    says: the postgres user's home as root, a folder of ours otherwise."""
    if lacking := missing("initdb", "postgres", "pg_isready", "psql", "redis-server"):
        pytest.skip(f"needs the postgresql and redis-server packages ({', '.join(lacking)} not found)")
    shutil.copytree(REPO / "examples", tmp_path / "examples", ignore=LOCAL)
    if os.geteuid() == 0:
        pgdata = Path("/var/lib/postgresql") / f"stackvisor-test-{uuid.uuid4().hex[:8]}"
    else:
        pgdata = tmp_path / "pgdata"
        monkeypatch.setenv("PG_USER", str(os.getuid()))
    monkeypatch.setenv("PGDATA", str(pgdata))
    try:
        yield tmp_path / "examples" / "postgres-redis"
    finally:
        shutil.rmtree(pgdata, ignore_errors=True)


def services(root: Path) -> list[dict[str, object]]:
    result = cli("status", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["services"])


def states(root: Path) -> dict[str, str]:
    return {str(s["name"]): str(s["state"]) for s in services(root)}


def processes(root: Path) -> set[int]:
    """Every process of the stack's services now: their pids and all below them."""
    found: set[int] = set()
    for service in services(root):
        if isinstance(pid := service.get("pid"), int):
            proc = psutil.Process(pid)
            found |= {pid, *(p.pid for p in proc.children(recursive=True))}
    return found


def test_postgres_redis_starts_survives_a_database_outage_and_leaves_nothing(
    shop: Path, detached: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    up = detached(shop, "--timeout", "90")
    assert up.returncode == 0, up.stdout + up.stderr
    ready = {"pgdata": "completed", "migrate": "completed", "postgres": "healthy", "redis": "healthy"}
    assert {k: v for k, v in states(shop).items() if k in ready} == ready
    postgres = psutil.Process(service_pid(shop, "postgres"))
    if os.geteuid() == 0:
        assert postgres.username() == "postgres"  # initdb and postgres refuse root

    assert cli("stop", "postgres", cwd=shop).returncode == 0
    assert cli("start", "postgres", cwd=shop).returncode == 0
    wait_for(lambda: states(shop)["postgres"] == "healthy", timeout=60)
    assert "failed" not in states(shop).values()
    log = cli("logs", "postgres", cwd=shop).stdout
    assert "database system is ready to accept connections" in log
    assert "does not exist" not in log  # the health check names a role and a database that exist

    everything = processes(shop)
    assert len(everything) > 5  # postgres's own workers are in it
    assert cli("down", cwd=shop).returncode == 0
    assert supervisor_pid(shop) is None
    assert not [p for p in everything if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


@pytest.fixture
def real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of examples/real-stack, its cluster in a folder of its own."""
    if lacking := missing("initdb", "postgres", "pg_isready", "psql", "redis-server", "nginx"):
        pytest.skip(f"needs the postgresql, redis-server and nginx packages ({', '.join(lacking)} not found)")
    shutil.copytree(REPO / "examples" / "real-stack", tmp_path / "real-stack", ignore=LOCAL)
    if os.geteuid() == 0:
        pgdata = Path("/var/lib/postgresql") / f"stackvisor-test-{uuid.uuid4().hex[:8]}"
    else:
        pgdata = tmp_path / "pgdata"
        monkeypatch.setenv("PG_USER", str(os.getuid()))
        monkeypatch.setenv("REDIS_USER", str(os.getuid()))
    monkeypatch.setenv("PGDATA", str(pgdata))
    try:
        yield tmp_path / "real-stack"
    finally:
        shutil.rmtree(pgdata, ignore_errors=True)


def get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), ""
    except OSError as exc:
        return 0, {}, str(exc)


def by_name(root: Path) -> dict[str, dict[str, Any]]:
    return {str(s["name"]): s for s in services(root)}


def why_restarted(root: Path, restarted: dict[str, int]) -> str:
    """What a failure on a CI machine needs to say: each restarted service's moves and
    the end of its log."""
    events = json.loads(cli("history", "--all", "--json", cwd=root).stdout)
    said = [f"restarted: {restarted}"]
    for name in restarted:
        moves = [
            f"{e['kind']} {e['data']}"
            for e in events
            if e.get("service") == name and e["kind"] in ("state", "restart", "port_conflict")
        ]
        log = (root / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
        said += [f"{name}:", *moves[-20:], "log:", *log]
    return "\n".join(said)


def until(root: Path, predicate: Callable[[], object], timeout: float) -> None:
    """Poll `predicate` until it holds; on timeout fail with the stack's status, so a
    failure on a CI machine says what the stack was doing."""
    try:
        wait_for(predicate, timeout=timeout)
    except AssertionError:
        shown = {n: (s["state"], s["restarts"], s["reason"]) for n, s in by_name(root).items()}
        raise AssertionError(f"not within {timeout}s; the stack: {shown}") from None


def test_the_real_stack_survives_an_outage_reloads_without_restarts_and_leaves_nothing(
    real: Path, detached: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    up = detached(real, "--timeout", "120")
    assert up.returncode == 0, up.stdout + up.stderr
    now = by_name(real)
    assert {n: s["state"] for n, s in now.items()} == {
        "pgdata": "completed",
        "postgres": "healthy",
        "redis": "healthy",
        "migrate": "completed",
        "api": "healthy",
        "worker": "healthy",
        "nginx-conf": "completed",
        "nginx": "healthy",
    }
    if os.geteuid() == 0:
        assert psutil.Process(now["postgres"]["pid"]).username() == "postgres"
        assert psutil.Process(now["redis"]["pid"]).username() == "redis"
    front = f"http://127.0.0.1:{now['nginx']['port']}/api/hits"
    status, headers, body = get(front)
    assert status == 200 and headers["X-Stack"] == "v1" and json.loads(body)["hits"] == 1

    # A database outage: its dependents wait, spend no restarts, and come back by themselves.
    api = now["api"]["pid"]
    assert cli("stop", "postgres", cwd=real).returncode == 0
    assert cli("start", "postgres", cwd=real).returncode == 0

    def recovered() -> bool:
        now = by_name(real)  # the api restarts once postgres is back (restart: true)
        return now["api"]["pid"] not in (None, api) and {s["state"] for s in now.values()} <= {
            "healthy",
            "completed",
        }

    until(real, recovered, 60)
    restarted = {n: s["restarts"] for n, s in by_name(real).items() if s["restarts"]}
    assert not restarted, why_restarted(real, restarted)
    until(real, lambda: get(front)[0] == 200, 10)

    # Hot reload: a new template is rendered again and nginx reloads it (same pid).
    nginx = by_name(real)["nginx"]["pid"]
    template = real / "nginx" / "nginx.conf.in"
    save(template, template.read_text().replace('X-Stack "v1"', 'X-Stack "v2"'))
    until(real, lambda: get(front)[1].get("X-Stack") == "v2", 10)
    assert by_name(real)["nginx"]["pid"] == nginx

    # api moves: the rendering follows, nginx reloads, and the front never answers 502.
    (moved,) = free_ports(1)
    stack = real / "services.yaml"
    save(stack, stack.read_text().replace("port: 18000", f"port: {moved}"))
    until(real, lambda: f"127.0.0.1:{moved}/api/" in (real / "run" / "nginx.conf").read_text(), 20)
    until(real, lambda: get(front)[0] == 200, 10)
    assert by_name(real)["nginx"]["pid"] == nginx

    # kill -9 of the supervisor, then down: no process and no cgroup is left.
    everything = processes(real)
    supervisor = supervisor_pid(real)
    assert supervisor is not None
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: supervisor_pid(real) is None)
    assert cli("down", cwd=real).returncode == 0
    wait_for(lambda: not [p for p in everything if alive(p)], timeout=10)
    assert cgroups.leftovers(StackPaths.at(real).cgroup_name) == []


def test_port_forwards_start_on_the_first_request_and_leave_nothing(
    tmp_path: Path, detached: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/port-forwards with the stand-in kubectl (no cluster here), on free ports."""
    root = tmp_path / "port-forwards"
    shutil.copytree(REPO / "examples" / "port-forwards", root)
    ports = dict(zip(("9090", "3000", "5432"), map(str, free_ports(3)), strict=True))
    text = (root / "services.yaml").read_text()
    for fixed, free in ports.items():
        text = text.replace(f"port: {fixed}", f"port: {free}")
    (root / "services.yaml").write_text(text)
    monkeypatch.setenv("KUBECTL", str(root / "stand-in" / "kubectl"))
    assert detached(root).returncode == 0
    assert states(root) == {"prometheus": "idle", "grafana": "idle", "db": "idle"}
    assert processes(root) == set()
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['9090']}/", timeout=30) as answer:
        assert answer.read() == b"prometheus:9090\n"
    assert states(root) == {"prometheus": "healthy", "grafana": "idle", "db": "idle"}
    running = processes(root)
    assert running
    assert cli("down", cwd=root).returncode == 0
    assert not any(alive(pid) for pid in running)
