"""The shipped examples work with the real servers they name, as their comments say.

They need the distribution's packages (postgresql, redis-server): `.ci/run` installs
them where apt can; elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import REPO, cli, service_pid, supervisor_pid, wait_for

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
    shutil.copytree(REPO / "examples", tmp_path / "examples")
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
