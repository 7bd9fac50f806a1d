"""The watcher follows the stack file wherever it changes from: an env file created after
the edit that names it, and a reload asked for over the API."""

from __future__ import annotations

from pathlib import Path

from conftest import SLEEP, running_stack, until, until_ready, watching, write_stack


def pid(sup, name: str) -> int | None:
    return sup.runners[name].status()["pid"]


async def test_an_env_file_created_after_the_edit_that_names_it_applies(tmp_path: Path) -> None:
    path = write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path)
        before = pid(sup, "a")
        path.write_text(f'services:\n  a: {{command: "{SLEEP}", env_file: later.env}}\n')
        await until(sup, lambda: sup.last_reload is not None and not sup.last_reload["ok"])
        assert "later.env" in sup.last_reload["error"]
        (tmp_path / "later.env").write_text("GREETING=hello\n")
        await until(sup, lambda: sup.last_reload is not None and sup.last_reload["ok"])
        await until(sup, lambda: pid(sup, "a") not in (None, before))
        assert sup.config.services["a"].env["GREETING"] == "hello"


async def test_a_reload_over_the_api_refreshes_what_is_watched(tmp_path: Path) -> None:
    path = write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n', programs=False)
    (tmp_path / "conf").mkdir()
    async with running_stack(path) as sup:
        await until_ready(sup)
        before = pid(sup, "a")
        path.write_text(
            f'settings: {{reload: true}}\nservices:\n  a: {{command: "{SLEEP}", watch: ["conf/*.txt"]}}\n'
        )
        result = await sup.reload(source="request")  # before the watcher saw the edit, maybe
        assert result["ok"]
        await watching(tmp_path / "conf")
        after_reload = pid(sup, "a")
        assert after_reload != before  # its configuration changed: restarted once
        (tmp_path / "conf" / "site.txt").write_text("changed\n")
        await until(sup, lambda: pid(sup, "a") not in (None, after_reload))


async def test_a_watch_match_reruns_a_completed_one_shot_and_its_followers(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    runs = tmp_path / "runs"
    text = f"""
    services:
      migrate:
        command: sh -c 'echo run >> {runs}'
        watch: ["migrations/*.sql"]
      api:
        command: "{SLEEP}"
        depends_on: {{migrate: {{condition: service_completed_successfully, restart: true}}}}
    """
    path = write_stack(tmp_path, text, programs=False)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path / "migrations")
        assert runs.read_text() == "run\n"
        api_before = pid(sup, "api")
        (tmp_path / "migrations" / "002_add_users.sql").write_text("create table users ();\n")
        await until(sup, lambda: runs.read_text() == "run\nrun\n")
        await until(sup, lambda: pid(sup, "api") not in (None, api_before))
        await until_ready(sup)
