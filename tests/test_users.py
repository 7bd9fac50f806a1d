"""`user:` runs a service as another user, and it still dies with the supervisor.

Real processes, as root (as CI runs), with the `nobody` user; the login environment
and the exec health check are the user's too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import async_wait_for, child_env, running_stack, until_state, wait_for, write_stack

from stackvisor.config import ConfigError, load_config
from stackvisor.config.checks import check_users
from stackvisor.config.report import Report
from stackvisor.config.users import UserSpec, may_search

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs services as another user")

# `$$` is a literal `$` in a stack file: the shell expands these, as the user.
AS_NOBODY = """
services:
  app:
    command: sh -c 'echo "uid=$$(id -u) user=$$USER home=$$HOME"; exec sleep 300'
    user: nobody
    healthcheck:
      exec: test "$$(id -u)" = 65534
      interval: 100ms
"""


async def test_a_service_runs_as_its_user_with_that_users_environment(tmp_path: Path) -> None:
    path = write_stack(tmp_path, AS_NOBODY, programs=False)
    async with running_stack(path) as sup:
        await until_state(sup, "app", "healthy")  # the exec check ran as nobody too
        pid = sup.runners["app"].status()["pid"]
        # The pid is the launcher's until it execs the command (as the user, once setpriv ran).
        await async_wait_for(lambda: psutil.Process(pid).uids().real == 65534)
        home = __import__("pwd").getpwnam("nobody").pw_dir
        expected = f"uid=65534 user=nobody home={home}"
        await async_wait_for(lambda: expected in sup.runners["app"].log.last(5))


def test_a_service_of_another_user_dies_with_a_killed_supervisor(tmp_path: Path) -> None:
    path = write_stack(tmp_path, AS_NOBODY, programs=False)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "_supervise", "-f", str(path)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def app() -> psutil.Process | None:
            found = [p for p in psutil.Process(supervisor.pid).children() if p.uids().real == 65534]
            return found[0] if found else None

        child = wait_for(app, timeout=30)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait(10)
        # PDEATHSIG was set after the change of user, so it is still in force.
        wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        subprocess.run(
            [sys.executable, "-m", "stackvisor", "down", "-f", str(path)], env=child_env(), check=False
        )


def test_an_unknown_user_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "services.yaml").write_text(
        "services:\n  app:\n    command: sleep 1\n    user: no-such-user\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "services.yaml")
    assert str(caught.value) == "services.yaml:4:11: services.app.user: no such user: no-such-user"


def test_only_root_may_run_a_service_as_another_user(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text("services:\n  app: {command: sleep 1, user: 'nobody:nogroup'}\n")
    config = load_config(tmp_path / "services.yaml")
    report = Report(tmp_path / "services.yaml")
    check_users(config, report, euid=1000)
    assert any("only root can run a service as another user" in line for _, line in report.problems)
    itself = Report(tmp_path / "services.yaml")
    check_users(config, itself, euid=65534)  # a supervisor that is nobody may be nobody
    assert itself.problems == []


def test_a_working_dir_the_user_cannot_enter_is_a_config_error(tmp_path: Path) -> None:
    # pytest's tmp_path is private to root (0700): the way to it is blocked for nobody.
    (tmp_path / "www").mkdir(mode=0o755)
    (tmp_path / "services.yaml").write_text(
        "services:\n  app:\n    command: sleep 1\n    user: nobody\n    working_dir: www\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "services.yaml")
    blocked = next(p for p in (*reversed(tmp_path.parents), tmp_path) if not p.stat().st_mode & 0o001)
    assert f"services.app.working_dir: user nobody cannot enter {blocked} (drwx" in str(caught.value)
    # root may go anywhere
    as_root = "services:\n  app: {command: sleep 1, user: root, working_dir: www}\n"
    (tmp_path / "services.yaml").write_text(as_root)
    load_config(tmp_path / "services.yaml")


def test_may_search_reads_the_bits_of_the_owner_the_group_or_others() -> None:
    nobody = UserSpec(uid=65534, gid=65534, name="nobody", home="/", groups=(65534, 20))
    assert may_search(0o700, 65534, 0, nobody)
    assert not may_search(0o070, 65534, 20, nobody)  # the owner's bits decide for the owner
    assert may_search(0o710, 0, 20, nobody)  # a supplementary group
    assert not may_search(0o750, 0, 0, nobody)
    assert may_search(0o701, 0, 0, nobody)
    root = UserSpec(uid=0, gid=0, name="root", home="/root", groups=(0,))
    assert may_search(0o000, 1000, 1000, root)
