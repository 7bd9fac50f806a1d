"""Hot reload with a real detached supervisor and real file edits."""

from __future__ import annotations

import contextlib
import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import cli, kill_marked, kill_tree, wait_for, write_stack

from stackvisor.config import load_config
from stackvisor.control import sockets
from stackvisor.paths import StackPaths
from stackvisor.runtime.watch import classify_changes, glob_regex, watch_targets

pytestmark = pytest.mark.timeout(120)

SLEEP = "python3 -c 'import time; time.sleep(300)'"


def status(root: Path) -> dict:
    result = cli("status", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pids(root: Path) -> dict[str, int | None]:
    return {s["name"]: s["pid"] for s in status(root)["services"]}


def states(root: Path) -> dict[str, str]:
    return {s["name"]: s["state"] for s in status(root)["services"]}


def save(path: Path, text: str) -> None:
    """Save like an editor: a temporary file renamed over the original."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(textwrap.dedent(text))
    os.replace(tmp, path)


@contextlib.contextmanager
def stack(root: Path, text: str, *up_args: str) -> Iterator[None]:
    write_stack(root, text)
    result = cli("up", "-d", "--wait", *up_args, cwd=root)
    pid = sockets.StackLock(StackPaths.at(root).lock).holder()
    try:
        assert result.returncode == 0, result.stderr
        yield
    finally:
        cli("down", cwd=root)
        if pid:
            kill_tree(pid)
        kill_marked(root)


BASE = f"""
services:
  db: {{command: "{SLEEP}"}}
  api:
    command: "{SLEEP}"
    env: {{MODE: one}}
    depends_on: [db]
  web: {{command: "{SLEEP}", depends_on: [api]}}
"""


def test_changing_one_env_restarts_only_that_service(tmp_path: Path) -> None:
    with stack(tmp_path, BASE):
        before = pids(tmp_path)
        save(tmp_path / "services.yaml", BASE.replace("MODE: one", "MODE: two"))
        wait_for(lambda: pids(tmp_path)["api"] not in (None, before["api"]), timeout=2)
        wait_for(lambda: states(tmp_path)["api"] == "running")
        after = pids(tmp_path)
        assert after["db"] == before["db"] and after["web"] == before["web"]
        reload = status(tmp_path)["reload"]
        assert reload["ok"] and reload["changed"] == ["api"]


def test_restart_true_dependents_follow_and_others_do_not(tmp_path: Path) -> None:
    text = BASE.replace("depends_on: [api]", "depends_on: {api: {restart: true}}")
    with stack(tmp_path, text):
        before = pids(tmp_path)
        save(tmp_path / "services.yaml", text.replace("MODE: one", "MODE: two"))
        wait_for(lambda: pids(tmp_path)["web"] not in (None, before["web"]))
        wait_for(lambda: set(states(tmp_path).values()) == {"running"})
        after = pids(tmp_path)
        assert after["api"] != before["api"] and after["db"] == before["db"]


def test_env_file_edit_is_a_change(tmp_path: Path) -> None:
    (tmp_path / "api.env").write_text("MODE=one\n")
    text = BASE.replace("env: {MODE: one}", "env_file: api.env")
    with stack(tmp_path, text):
        before = pids(tmp_path)
        save(tmp_path / "api.env", "MODE=two\n")
        wait_for(lambda: pids(tmp_path)["api"] not in (None, before["api"]), timeout=2)
        assert pids(tmp_path)["db"] == before["db"]


def test_add_and_remove_services(tmp_path: Path) -> None:
    with stack(tmp_path, BASE):
        before = pids(tmp_path)
        added = BASE + f"  extra: {{command: \"{SLEEP}\"}}\n"
        save(tmp_path / "services.yaml", added)
        wait_for(lambda: states(tmp_path).get("extra") == "running")
        assert {k: v for k, v in pids(tmp_path).items() if k != "extra"} == before
        removed = added.replace(f"  web: {{command: \"{SLEEP}\", depends_on: [api]}}\n", "")
        save(tmp_path / "services.yaml", removed)
        wait_for(lambda: "web" not in states(tmp_path))
        wait_for(lambda: not _alive(before["web"]))
        assert pids(tmp_path)["api"] == before["api"]


def test_invalid_file_changes_nothing_and_fixing_it_applies(tmp_path: Path) -> None:
    with stack(tmp_path, BASE):
        before = pids(tmp_path)
        save(tmp_path / "services.yaml", BASE.replace("env: {MODE: one}", "env: {MODE: one\n"))
        wait_for(lambda: (status(tmp_path)["reload"] or {}).get("ok") is False)
        report = status(tmp_path)["reload"]
        assert "services.yaml:" in report["error"]
        assert pids(tmp_path) == before
        manual = cli("reload", cwd=tmp_path)
        assert manual.returncode == 2 and "nothing changed" in manual.stderr
        save(tmp_path / "services.yaml", BASE.replace("MODE: one", "MODE: fixed"))
        wait_for(lambda: (status(tmp_path)["reload"] or {}).get("ok") is True)
        wait_for(lambda: pids(tmp_path)["api"] not in (None, before["api"]))


def test_reload_command_and_dry_run(tmp_path: Path) -> None:
    text = BASE.replace("services:", "settings: {reload: false}\nservices:")
    with stack(tmp_path, text):
        before = pids(tmp_path)
        (tmp_path / "services.yaml").write_text(textwrap.dedent(text.replace("MODE: one", "MODE: two")))
        dry = cli("reload", "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert "would apply: changed: api" in dry.stdout
        assert pids(tmp_path) == before
        done = cli("reload", cwd=tmp_path)
        assert done.returncode == 0 and "applied: changed: api" in done.stdout
        wait_for(lambda: pids(tmp_path)["api"] not in (None, before["api"]))


def test_a_service_in_backoff_takes_the_new_config(tmp_path: Path) -> None:
    text = f"""
    services:
      ok: {{command: "{SLEEP}"}}
      flaky:
        command: python3 -c "raise SystemExit(1)"
        backoff: {{initial: 5s}}
    """
    write_stack(tmp_path, text)
    up = cli("up", "-d", cwd=tmp_path)
    pid = sockets.StackLock(StackPaths.at(tmp_path).lock).holder()
    try:
        assert up.returncode == 0, up.stderr
        wait_for(lambda: states(tmp_path)["flaky"] == "backoff")
        ok_pid = pids(tmp_path)["ok"]
        save(tmp_path / "services.yaml", text.replace('raise SystemExit(1)', "import time; time.sleep(300)"))
        wait_for(lambda: states(tmp_path)["flaky"] == "running", timeout=3)
        assert pids(tmp_path)["ok"] == ok_pid
    finally:
        cli("down", cwd=tmp_path)
        if pid:
            kill_tree(pid)
        kill_marked(tmp_path)


def test_the_selection_survives_a_reload(tmp_path: Path) -> None:
    text = f"""
    services:
      db: {{command: "{SLEEP}"}}
      api: {{command: "{SLEEP}", depends_on: [db], env: {{MODE: one}}}}
      other: {{command: "{SLEEP}"}}
    """
    with stack(tmp_path, text, "api"):
        assert states(tmp_path)["other"] == "stopped"
        changed = text.replace("MODE: one", "MODE: two") + f"  new: {{command: \"{SLEEP}\"}}\n"
        save(tmp_path / "services.yaml", changed)
        wait_for(lambda: (status(tmp_path)["reload"] or {}).get("ok") is True)
        wait_for(lambda: states(tmp_path)["api"] == "running")
        assert states(tmp_path)["other"] == "stopped"
        assert states(tmp_path)["new"] == "stopped"


def test_a_watch_glob_burst_restarts_the_service_once(tmp_path: Path) -> None:
    src = tmp_path / "src" / "pkg"
    src.mkdir(parents=True)
    (src / "app.py").write_text("x = 0\n")
    text = f"""
    settings: {{reload_debounce: 300ms}}
    services:
      app: {{command: "{SLEEP}", watch: ["src/**/*.py"]}}
      other: {{command: "{SLEEP}"}}
    """
    with stack(tmp_path, text):
        before = pids(tmp_path)
        (src / "notes.txt").write_text("not watched\n")
        for i in range(10):
            (src / "app.py").write_text(f"x = {i}\n")
        wait_for(lambda: pids(tmp_path)["app"] not in (None, before["app"]))
        wait_for(lambda: states(tmp_path)["app"] == "running")
        history = cli("history", "--all", "--json", cwd=tmp_path)
        starts = [
            e for e in json.loads(history.stdout)
            if e["service"] == "app" and e["kind"] == "state" and e["data"]["new"] == "starting"
        ]
        assert len(starts) == 2  # the first start, and one restart for the burst
        assert pids(tmp_path)["other"] == before["other"]


def _alive(pid: int | None) -> bool:
    from support import alive

    return pid is not None and alive(pid)


# ----- the pure half -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("src/**/*.py", "src/a.py", True),
        ("src/**/*.py", "src/x/y/a.py", True),
        ("src/**/*.py", "src/a.pyc", False),
        ("src/**/*.py", "other/a.py", False),
        ("*.py", "a.py", True),
        ("*.py", "sub/a.py", False),
        ("api/?.txt", "api/a.txt", True),
        ("api/?.txt", "api/ab.txt", False),
        ("**", "anything/at/all", True),
    ],
)
def test_glob(pattern: str, path: str, matches: bool) -> None:
    assert bool(glob_regex(pattern).match(path)) is matches


def test_classify_changes_and_targets(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "a.env").write_text("A=1\n")
    path = write_stack(
        tmp_path,
        """
        services:
          api: {command: x, watch: ["api/**/*.py"], env_file: a.env}
          web: {command: x, watch: ["web/*.html"]}
        """,
        server=False,
    )
    config = load_config(path)
    root = config.root

    def classify(*names: str):  # noqa: ANN202
        return classify_changes(config, [root / n for n in names], "logs")

    assert classify("services.yaml").reload
    assert classify("a.env").reload and not classify("a.env").services
    assert classify("api/x/m.py").services == {"api"}
    assert classify("web/index.html").services == {"web"}
    assert not classify("api/__pycache__/m.py").services
    assert not classify("api/m.py~").services
    assert not classify("logs/api.log").services and not classify("logs/api.log").reload
    targets = watch_targets(config)
    assert targets.recursive == {root / "api", root / "web"}
    assert targets.flat == {root}
