"""What a reload changes, and which services restart because of it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from stackvisor.config import ReloadDiff, StackConfig, diff_configs, load_config, restart_set

BASE = """\
settings:
  strategy: intelligent
services:
  db:
    command: redis-server
    port: 6379
    healthcheck: {tcp: "127.0.0.1:${PORT}"}
  api:
    command: python -m api
    env_file: api.env
    env: {MODE: dev}
    depends_on:
      db: {condition: service_healthy, restart: true}
  web:
    command: python -m web
    depends_on:
      api: {restart: true}
  worker:
    command: python -m worker
    depends_on:
      api: {restart: false}
  docs:
    command: python -m http.server
"""


def stack(folder: Path, text: str = BASE, env_file: str = "TOKEN=1\n") -> StackConfig:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "api.env").write_text(env_file)
    (folder / "services.yaml").write_text(textwrap.dedent(text))
    return load_config(folder / "services.yaml", {})


@pytest.fixture
def old(tmp_path: Path) -> StackConfig:
    return stack(tmp_path / "old")


@pytest.mark.parametrize(
    ("edit", "changed"),
    [
        (("MODE: dev", "MODE: prod"), ("api",)),
        (("command: redis-server", "command: redis-server --save ''"), ("db",)),
        (("port: 6379", "port: 6380"), ("db",)),
        (('tcp: "127.0.0.1:${PORT}"', 'tcp: "localhost:${PORT}"'), ("db",)),
        # only the restart flag of a dependency: still a change of the dependent itself
        (("api: {restart: false}", "api: {restart: true}"), ("worker",)),
        # and so is `required` (whether the dependency may be missing)
        (("api: {restart: false}", "api: {restart: false, required: false}"), ("worker",)),
        (("command: python -m http.server", "command: python -m http.server\n    watch: [docs/]"), ("docs",)),
    ],
)
def test_changed_services(
    tmp_path: Path, old: StackConfig, edit: tuple[str, str], changed: tuple[str, ...]
) -> None:
    new = stack(tmp_path / "new", BASE.replace(*edit))
    diff = diff_configs(old, new)
    assert diff.changed == changed
    assert diff.added == diff.removed == diff.settings_changed == ()


def test_identical_stacks(tmp_path: Path, old: StackConfig) -> None:
    diff = diff_configs(old, stack(tmp_path / "new"))
    assert diff.is_empty()
    assert diff.changed == ()
    assert diff.describe() == ["no changes"]
    assert restart_set(diff, old) == set()


def test_env_file_content_change(tmp_path: Path, old: StackConfig) -> None:
    diff = diff_configs(old, stack(tmp_path / "new", env_file="TOKEN=2\n"))
    assert diff.changed == ("api",)


def test_env_wins_so_an_overridden_env_file_value_is_no_change(tmp_path: Path, old: StackConfig) -> None:
    diff = diff_configs(old, stack(tmp_path / "new", env_file="TOKEN=1\nMODE=ignored\n"))
    assert diff.is_empty()


def test_added_and_removed(tmp_path: Path, old: StackConfig) -> None:
    text = BASE.replace("  docs:\n    command: python -m http.server\n", "  cache:\n    command: memcached\n")
    diff = diff_configs(old, stack(tmp_path / "new", text))
    assert (diff.added, diff.removed, diff.changed) == (("cache",), ("docs",), ())
    assert not diff.is_empty()
    assert diff.describe() == ["added: cache", "removed: docs"]


def test_settings_change(tmp_path: Path, old: StackConfig) -> None:
    new = stack(
        tmp_path / "new", BASE.replace("strategy: intelligent", "strategy: aggressive\n  stop_timeout: 3s")
    )
    diff = diff_configs(old, new)
    assert diff.settings_changed == ("strategy", "stop_timeout")
    assert diff.changed == ()
    assert not diff.is_empty()
    assert diff.describe() == ["settings changed: strategy, stop_timeout"]


@pytest.mark.parametrize(
    ("edit", "restarted"),
    [
        # db changes: api follows it (restart: true), web follows api, worker does not
        (("port: 6379", "port: 6380"), {"db", "api", "web"}),
        # api changes: web follows, worker (restart: false) and db (a dependency) do not
        (("MODE: dev", "MODE: prod"), {"api", "web"}),
        # a leaf: nobody follows
        (("command: python -m web", "command: python -m web2"), {"web"}),
        (("command: python -m worker", "command: python -m worker2"), {"worker"}),
    ],
)
def test_restart_cascades_only_through_restart_true(
    tmp_path: Path, old: StackConfig, edit: tuple[str, str], restarted: set[str]
) -> None:
    new = stack(tmp_path / "new", BASE.replace(*edit))
    diff = diff_configs(old, new)
    assert restart_set(diff, new) == restarted
    # the followers are services whose own configuration did not change
    assert (restarted - set(diff.changed)).isdisjoint((*diff.added, *diff.removed))


def test_restart_set_leaves_out_added_services(tmp_path: Path, old: StackConfig) -> None:
    text = (
        BASE.replace("port: 6379", "port: 6380")
        + "  cache:\n    command: x\n    depends_on:\n      db: {restart: true}\n"
    )
    new = stack(tmp_path / "new", text)
    diff = diff_configs(old, new)
    assert diff.added == ("cache",)
    assert restart_set(diff, new) == {"db", "api", "web"}


def test_describe_lists_each_kind() -> None:
    diff = ReloadDiff(added=("a",), removed=("b",), changed=("c", "d"), settings_changed=("reload",))
    assert diff.describe() == ["added: a", "removed: b", "changed: c, d", "settings changed: reload"]
