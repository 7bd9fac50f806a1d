"""The watcher follows the stack file wherever it changes from (an env file created after
the edit that names it, a reload asked for over the API), and `watch` entries say what a
change does: restart, run again, or a signal to the process."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SLEEP, async_wait_for, running_stack, until, until_ready, watching, write_stack

from stackvisor.config import ConfigError, load_config
from stackvisor.config.schema import Service, Watch
from stackvisor.runtime.watch import classify_changes


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


# A server that reloads its configuration on SIGHUP, as nginx and postgres do.
RELOADER = """
import signal, sys, time
def hangup(*_):
    print("reloaded " + open("conf/site.conf").read().strip(), flush=True)
signal.signal(signal.SIGHUP, hangup)
print("serving", flush=True)
while True:
    time.sleep(1)
"""


async def test_a_watch_entry_with_action_signal_sends_it_and_keeps_the_process(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "site.conf").write_text("v1\n")
    (tmp_path / "reloader.py").write_text(RELOADER)
    text = f"""
    services:
      server:
        command: python3 reloader.py
        watch:
          - {{path: "conf/*.conf", action: signal, signal: SIGHUP}}
          - {{path: "code/*.py", action: restart}}
        healthcheck: {{log: serving}}
      other: {{command: "{SLEEP}", watch: "conf/*.conf"}}
    """
    path = write_stack(tmp_path, text)
    async with running_stack(path) as sup:
        await until_ready(sup)
        await watching(tmp_path / "conf")
        server, other = pid(sup, "server"), pid(sup, "other")
        (tmp_path / "conf" / "site.conf").write_text("v2\n")
        await async_wait_for(lambda: "reloaded v2" in "\n".join(sup.runners["server"].log.last(5)))
        await until(sup, lambda: pid(sup, "other") not in (None, other))  # a plain glob restarts
        assert pid(sup, "server") == server
        assert sup.runners["server"].status()["restarts"] == 0


def test_watch_entries_read_their_short_and_long_forms(tmp_path: Path) -> None:
    def service(watch: str) -> Service:
        (tmp_path / "services.yaml").write_text(f"services:\n  app:\n    command: x\n    watch: {watch}\n")
        return load_config(tmp_path / "services.yaml").services["app"]

    assert service('"src/*.py"').watch == [Watch(path="src/*.py")]
    assert service('[{path: "a/*", action: signal}]').watch[0].signal == "SIGHUP"
    assert service('[{path: "a/*", action: signal, signal: usr1}]').watch[0].signal == "SIGUSR1"
    assert service('[{path: "a/*", action: rerun}]').watch[0].action == "rerun"
    for bad, message in [
        ('[{path: "a/*", action: restart, signal: SIGHUP}]', "signal: is for action: signal"),
        ('[{path: "a/*", action: signal, signal: SIGNOPE}]', "expected a signal name"),
        ('[{path: "a/*", action: reboot}]', "services.app.watch[0].action"),
        ("[{action: restart}]", "services.app.watch[0].path"),
    ]:
        with pytest.raises(ConfigError) as caught:
            service(bad)
        assert message in str(caught.value)


def test_a_restart_and_a_signal_for_one_change_is_one_restart(tmp_path: Path) -> None:
    text = """
    services:
      web: {command: x, watch: [{path: "conf/*", action: signal}, "conf/*.py"]}
      proxy: {command: x, watch: [{path: "conf/*", action: signal, signal: SIGUSR2}]}
    """
    config = load_config(write_stack(tmp_path, text, programs=False))
    changes = classify_changes(config, [tmp_path / "conf" / "a.py"], "logs")
    assert changes.services == {"web"}
    assert changes.signals == {"proxy": "SIGUSR2"}
    assert classify_changes(config, [tmp_path / "conf" / "a.txt"], "logs").signals == {
        "web": "SIGHUP",
        "proxy": "SIGUSR2",
    }
