"""Hot reload with a real supervisor, its file watcher and control socket, and real file edits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import (
    SLEEP,
    alive,
    cli,
    running_stack,
    save,
    transitions,
    until,
    until_ready,
    watching,
    write_stack,
)

from stackvisor.config import load_config
from stackvisor.runtime.watch import classify_changes, glob_regex, watch_targets

pytestmark = pytest.mark.timeout(120)


def pids(sup) -> dict[str, int | None]:
    return {s["name"]: s["pid"] for s in sup.status()["services"]}


def states(sup) -> dict[str, str]:
    return {s["name"]: s["state"] for s in sup.status()["services"]}


def last_reload(sup) -> dict:
    return sup.status()["reload"] or {}


BASE = f"""
services:
  db: {{command: "{SLEEP}"}}
  api:
    command: "{SLEEP}"
    env: {{MODE: one}}
    depends_on: [db]
  web: {{command: "{SLEEP}", depends_on: [api]}}
"""


async def test_changing_one_env_restarts_only_that_service(tmp_path: Path) -> None:
    path = write_stack(tmp_path, BASE)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path)
        before = pids(sup)
        save(path, BASE.replace("MODE: one", "MODE: two"))
        await until(sup, lambda: pids(sup)["api"] not in (None, before["api"]), timeout=2)
        await until(sup, lambda: states(sup)["api"] == "running")
        after = pids(sup)
        assert after["db"] == before["db"] and after["web"] == before["web"]
        reload = last_reload(sup)
        assert reload["ok"] and reload["changed"] == ["api"]


async def test_restart_true_dependents_follow_and_others_do_not(tmp_path: Path) -> None:
    text = BASE.replace("depends_on: [api]", "depends_on: {api: {restart: true}}")
    path = write_stack(tmp_path, text)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path)
        before = pids(sup)
        save(path, text.replace("MODE: one", "MODE: two"))
        await until(sup, lambda: pids(sup)["web"] not in (None, before["web"]))
        await until(sup, lambda: set(states(sup).values()) == {"running"})
        after = pids(sup)
        assert after["api"] != before["api"] and after["db"] == before["db"]


async def test_env_file_edit_is_a_change(tmp_path: Path) -> None:
    (tmp_path / "api.env").write_text("MODE=one\n")
    path = write_stack(tmp_path, BASE.replace("env: {MODE: one}", "env_file: api.env"))
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path)
        before = pids(sup)
        save(tmp_path / "api.env", "MODE=two\n")
        await until(sup, lambda: pids(sup)["api"] not in (None, before["api"]), timeout=2)
        assert pids(sup)["db"] == before["db"]


async def test_add_and_remove_services(tmp_path: Path) -> None:
    path = write_stack(tmp_path, BASE)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path)
        before = pids(sup)
        added = BASE + f'  extra: {{command: "{SLEEP}"}}\n'
        save(path, added)
        await until(sup, lambda: states(sup).get("extra") == "running")
        assert {k: v for k, v in pids(sup).items() if k != "extra"} == before
        removed = added.replace(f'  web: {{command: "{SLEEP}", depends_on: [api]}}\n', "")
        save(path, removed)
        await until(sup, lambda: "web" not in states(sup))
        await until(sup, lambda: not alive(before["web"]))
        assert pids(sup)["api"] == before["api"]


async def test_invalid_file_changes_nothing_and_fixing_it_applies(tmp_path: Path) -> None:
    path = write_stack(tmp_path, BASE)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path)
        before = pids(sup)
        save(path, BASE.replace("env: {MODE: one}", "env: {MODE: one\n"))
        await until(sup, lambda: last_reload(sup).get("ok") is False)
        assert "services.yaml:" in last_reload(sup)["error"]
        assert pids(sup) == before
        manual = await asyncio.to_thread(cli, "reload", "-f", str(path))
        assert manual.returncode == 2 and "nothing changed" in manual.stderr
        save(path, BASE.replace("MODE: one", "MODE: fixed"))
        await until(sup, lambda: last_reload(sup).get("ok") is True)
        await until(sup, lambda: pids(sup)["api"] not in (None, before["api"]))


async def test_edits_that_break_the_loader_are_refused_and_watching_goes_on(tmp_path: Path) -> None:
    """Interpolation nested a thousand deep, then the file replaced by a named pipe: each
    is a refused edit with its reason, the stack runs on, and the next good edit is
    applied by itself."""
    import os

    path = write_stack(tmp_path, BASE)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path)
        before = pids(sup)
        deep = "${X:-" * 1000 + "one" + "}" * 1000
        save(path, BASE.replace("MODE: one", f'MODE: "{deep}"'))
        await until(sup, lambda: "nested too deeply" in last_reload(sup).get("error", ""))
        path.unlink()
        os.mkfifo(path)
        await until(sup, lambda: "not a regular file" in last_reload(sup).get("error", ""))
        assert pids(sup) == before
        path.unlink()
        save(path, BASE.replace("MODE: one", "MODE: fixed"))
        await until(sup, lambda: last_reload(sup).get("ok") is True)
        await until(sup, lambda: pids(sup)["api"] not in (None, before["api"]))


async def test_reload_command_and_dry_run(tmp_path: Path) -> None:
    text = BASE.replace("services:", "settings: {reload: false}\nservices:")
    path = write_stack(tmp_path, text)
    async with running_stack(path) as sup:
        await until_ready(sup)
        before = pids(sup)
        path.write_text(text.replace("MODE: one", "MODE: two"))
        dry = await asyncio.to_thread(cli, "reload", "--dry-run", "-f", str(path))
        assert dry.returncode == 0, dry.stderr
        assert "would apply: changed: api" in dry.stdout
        assert pids(sup) == before
        done = await asyncio.to_thread(cli, "reload", "-f", str(path))
        assert done.returncode == 0 and "applied: changed: api" in done.stdout
        await until(sup, lambda: pids(sup)["api"] not in (None, before["api"]))


async def test_a_service_in_backoff_takes_the_new_config(tmp_path: Path) -> None:
    text = f"""
    services:
      ok: {{command: "{SLEEP}"}}
      flaky:
        command: python3 -c "raise SystemExit(1)"
        backoff: {{initial: 5s}}
    """
    path = write_stack(tmp_path, text)
    async with running_stack(path) as sup:
        await until(sup, lambda: states(sup)["flaky"] == "backoff")
        await watching(tmp_path)
        ok_pid = pids(sup)["ok"]
        save(path, text.replace("raise SystemExit(1)", "import time; time.sleep(300)"))
        await until(sup, lambda: states(sup)["flaky"] == "running", timeout=3)
        assert pids(sup)["ok"] == ok_pid


async def test_the_selection_survives_a_reload(tmp_path: Path) -> None:
    text = f"""
    services:
      db: {{command: "{SLEEP}"}}
      api: {{command: "{SLEEP}", depends_on: [db], env: {{MODE: one}}}}
      other: {{command: "{SLEEP}"}}
    """
    path = write_stack(tmp_path, text)
    async with running_stack(path, "api") as sup:
        await until_ready(sup)
        await watching(tmp_path)
        assert states(sup)["other"] == "stopped"
        changed = text.replace("MODE: one", "MODE: two") + f'  new: {{command: "{SLEEP}"}}\n'
        save(path, changed)
        await until(sup, lambda: last_reload(sup).get("ok") is True)
        await until(sup, lambda: states(sup)["api"] == "running")
        assert states(sup)["other"] == "stopped"
        assert states(sup)["new"] == "stopped"


async def test_a_watch_glob_burst_restarts_the_service_once(tmp_path: Path) -> None:
    src = tmp_path / "src" / "pkg"
    src.mkdir(parents=True)
    (src / "app.py").write_text("x = 0\n")
    text = f"""
    settings: {{reload_debounce: 300ms}}
    services:
      app: {{command: "{SLEEP}", watch: ["src/**/*.py"]}}
      other: {{command: "{SLEEP}"}}
    """
    path = write_stack(tmp_path, text)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(src)
        before = pids(sup)
        (src / "notes.txt").write_text("not watched\n")
        for i in range(10):
            (src / "app.py").write_text(f"x = {i}\n")
        await until(sup, lambda: pids(sup)["app"] not in (None, before["app"]))
        await until(sup, lambda: states(sup)["app"] == "running")
        assert (
            transitions(sup, "app").count("starting") == 2
        )  # the first start, and one restart for the burst
        assert pids(sup)["other"] == before["other"]


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
        programs=False,
    )
    config = load_config(path)
    root = config.root

    def classify(*names: str):
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
