"""A service that runs against something that changed is restarted: a `restart: true`
dependency that ran again, or a port its file names that moved.

The decisions are pure (`freshness.outdated`); the stacks below are real processes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from conftest import SLEEP, HolderFactory, free_ports, running_stack, save, until, until_ready, write_stack

from stackvisor.config.schema import Condition, Dependency, RestartPolicy, Service
from stackvisor.runtime.dependencies import DependencyFacts
from stackvisor.runtime.freshness import Basis, basis_of, mentioned, outdated
from stackvisor.runtime.states import State


def service(**fields: Any) -> Service:
    return Service.model_validate({"name": "conf", "command": "true", **fields})


def facts(state: State, runs: int) -> DependencyFacts:
    return DependencyFacts(state, True, RestartPolicy.ON_FAILURE, "", runs)


def test_only_the_port_variables_a_service_names_count() -> None:
    names = {"API_PORT", "DB_PORT", "WEB_PORT", "API_PORTAL_PORT"}
    conf = service(
        command="sh -c 'sed s/@@/${API_PORT}/ in > out'",
        env={"DSN": "db:$DB_PORT"},
        healthcheck={"tcp": "127.0.0.1:${WEB_PORT}"},
    )
    assert mentioned(conf, names) == {"API_PORT", "DB_PORT", "WEB_PORT"}
    assert mentioned(service(command="echo $$API_PORTAL_PORT"), names) == {"API_PORTAL_PORT"}
    assert mentioned(service(command="echo MY_API_PORT"), names) == set()


def test_a_moved_port_makes_a_run_outdated() -> None:
    conf = service(command="echo ${API_PORT}")
    basis = basis_of(conf, lambda _: None, {"PORT": "1", "API_PORT": "8000", "WEB_PORT": "3000"})
    assert basis == Basis({}, {"API_PORT": "8000"})
    assert outdated(basis, conf, lambda _: None, {"API_PORT": "8000", "WEB_PORT": "3001"}) == ""
    moved = outdated(basis, conf, lambda _: None, {"API_PORT": "8100"})
    assert moved == "API_PORT is now 8100 (was 8000)"


def test_a_restart_true_dependency_that_ran_again_counts_once_its_condition_holds() -> None:
    app = service(
        depends_on={
            "db": Dependency(condition=Condition.HEALTHY, restart=True),
            "cache": Dependency(condition=Condition.STARTED),
        }
    )
    now = {"db": facts(State.HEALTHY, 1), "cache": facts(State.RUNNING, 1)}
    basis = basis_of(app, now.get, {})
    assert basis.runs == {"db": 1}  # cache has no restart: true
    assert outdated(basis, app, now.get, {}) == ""
    now["cache"] = facts(State.RUNNING, 5)
    assert outdated(basis, app, now.get, {}) == ""
    now["db"] = facts(State.STARTING, 2)  # back, but not healthy yet
    assert outdated(basis, app, now.get, {}) == ""
    now["db"] = facts(State.HEALTHY, 2)
    assert outdated(basis, app, now.get, {}) == "db ran again (restart: true)"


def pid(sup: Any, name: str) -> int | None:
    return sup.runners[name].status()["pid"]


FOLLOWERS = f"""
services:
  db:
    command: {SLEEP}
    restart: always
    backoff: {{initial: 50ms}}
  app:
    command: {SLEEP}
    depends_on:
      db: {{condition: service_started, restart: true}}
  bystander:
    command: {SLEEP}
    depends_on: [db]
"""


async def test_restart_true_dependents_restart_when_the_dependency_comes_back(tmp_path: Path) -> None:
    async with running_stack(write_stack(tmp_path, FOLLOWERS)) as sup:
        await until_ready(sup)
        app, bystander, db = pid(sup, "app"), pid(sup, "bystander"), pid(sup, "db")
        assert db is not None
        os.kill(db, signal.SIGKILL)  # db crashes and comes back by itself
        await until(sup, lambda: pid(sup, "app") not in (None, app))
        assert sup.runners["app"].status()["restarts"] == 0  # not a failure of app's
        await until_ready(sup)
        assert pid(sup, "bystander") == bystander
        app = pid(sup, "app")

        await sup.stop_service("db")
        await sup.start_service("db")
        await until(sup, lambda: pid(sup, "app") not in (None, app))
        await until_ready(sup)
        assert pid(sup, "bystander") == bystander


def rendering(api_port: int) -> str:
    return f"""
services:
  api:
    command: python3 -m http.server ${{PORT}} --bind 127.0.0.1
    port: {api_port}
    port_range: {api_port + 1}-{api_port + 20}
    healthcheck: {{tcp: "127.0.0.1:${{PORT}}"}}
  conf:
    command: sh -c 'echo ${{API_PORT}} > conf.out'
  web:
    command: {SLEEP}
    depends_on:
      conf: {{condition: service_completed_successfully, restart: true}}
  bystander:
    command: {SLEEP}
"""


async def test_a_one_shot_naming_a_port_runs_again_when_a_reload_moves_it(tmp_path: Path) -> None:
    first, second = free_ports(2)
    path = write_stack(tmp_path, rendering(first))
    async with running_stack(path) as sup:
        await until_ready(sup)
        assert (tmp_path / "conf.out").read_text().strip() == str(first)
        web, bystander = pid(sup, "web"), pid(sup, "bystander")
        save(path, rendering(second))
        result = await sup.reload()
        assert result["restarted"] == ["api"]
        await until(sup, lambda: (tmp_path / "conf.out").read_text().strip() == str(second))
        await until(sup, lambda: pid(sup, "web") not in (None, web))
        await until_ready(sup)
        assert pid(sup, "bystander") == bystander


async def test_a_one_shot_naming_a_port_sees_where_a_migration_moved_it(
    tmp_path: Path, spawn: HolderFactory
) -> None:
    # conf does not wait for api: it may run before api's port is known to have moved.
    holder = spawn("127.0.0.1", 0)
    path = write_stack(tmp_path, rendering(holder.port))
    async with running_stack(path) as sup:
        await until_ready(sup)
        moved = sup.runners["api"].port
        assert moved != holder.port
        await until(sup, lambda: (tmp_path / "conf.out").read_text().strip() == str(moved))
