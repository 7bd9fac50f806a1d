"""Stacks of several files, as Compose makes them: `include` and `extends`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import async_wait_for, running_stack, until_ready

from stackvisor.config import ConfigError, load_config


def test_included_services_join_with_their_own_folder_env_files_and_dotenv(tmp_path: Path) -> None:
    backend = tmp_path / "backend"
    (backend / "data").mkdir(parents=True)
    (tmp_path / "services.yaml").write_text(
        "include: [backend/services.yaml]\nservices:\n  web: {command: x, depends_on: [api]}\n"
    )
    (backend / "services.yaml").write_text(
        "services:\n"
        "  api:\n    command: run ${WHERE}\n    env_file: api.env\n    watch: [src/*.py]\n"
        "  db: {command: y, working_dir: data}\n"
    )
    (backend / "api.env").write_text("MODE=backend\n")
    (backend / ".env").write_text("WHERE=backend-dotenv\n")
    config = load_config(tmp_path / "services.yaml", environ={})
    assert set(config.services) == {"web", "api", "db"}
    api = config.services["api"]
    assert api.command == "run backend-dotenv"  # its own .env
    assert api.env == {"MODE": "backend"}  # its env file, beside it
    assert api.working_dir == str(backend)
    assert [w.path for w in api.watch] == ["backend/src/*.py"]
    assert config.services["db"].working_dir == str(backend / "data")


def test_a_name_defined_twice_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("services:\n  extra: {command: y}\n  web: {command: z}\n")
    (tmp_path / "services.yaml").write_text("include:\n  - other.yaml\nservices:\n  web: {command: x}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "services.yaml", environ={})
    said = str(caught.value)
    assert "services.yaml:4:3: services.web: defined twice: here and in " in said
    assert said.endswith("other.yaml:3")


def test_an_include_path_is_interpolated_and_a_circle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include: [services.yaml]\nservices:\n  a: {command: y}\n")
    (tmp_path / "services.yaml").write_text(
        "include: [{path: '${PART}.yaml'}]\nservices:\n  web: {command: x}\n"
    )
    with pytest.raises(ConfigError, match="include goes round in a circle"):
        load_config(tmp_path / "services.yaml", environ={"PART": "a"})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "services.yaml", environ={"PART": "missing"})


def test_an_error_in_an_included_file_is_placed_in_that_file(tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("services:\n  db:\n    command: y\n    port: high\n")
    (tmp_path / "services.yaml").write_text("include: [other.yaml]\nservices:\n  web: {command: x}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "services.yaml", environ={})
    assert "other.yaml:4:11: services.db.port" in str(caught.value)


def test_extends_merges_mappings_and_replaces_the_rest(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "base.env").write_text("FROM_BASE_FILE=1\n")
    (tmp_path / "common" / "base.yaml").write_text(
        "services:\n"
        "  python:\n"
        "    command: python3 app.py\n"
        "    env_file: base.env\n"
        "    env: {LANG: C.UTF-8, MODE: base}\n"
        "    healthcheck: {tcp: '127.0.0.1:1', interval: 7s}\n"
    )
    (tmp_path / "services.yaml").write_text(
        "services:\n"
        "  api:\n"
        "    extends: {file: common/base.yaml, service: python}\n"
        "    env: {MODE: api}\n"
        "    healthcheck: {interval: 3s}\n"
        "  worker:\n"
        "    extends: api\n"
        "    command: python3 worker.py\n"
    )
    config = load_config(tmp_path / "services.yaml", environ={})
    api, worker = config.services["api"], config.services["worker"]
    assert api.command == "python3 app.py" and worker.command == "python3 worker.py"
    assert api.env == {"FROM_BASE_FILE": "1", "LANG": "C.UTF-8", "MODE": "api"}
    assert api.healthcheck is not None and (api.healthcheck.tcp, api.healthcheck.interval) == (
        "127.0.0.1:1",
        3.0,
    )
    assert api.working_dir == str(tmp_path / "common")  # the base's paths stay where they were
    assert worker.env == api.env


@pytest.mark.parametrize(
    ("services", "said"),
    [
        ("  a: {extends: nobody, command: x}\n", "services.a.extends: no service nobody to extend"),
        ("  a: {extends: b}\n  b: {extends: a}\n", "extends goes round in a circle"),
        ("  a: {extends: {file: gone.yaml, service: b}}\n", "gone.yaml: no services to extend there"),
    ],
)
def test_extends_that_cannot_be_resolved_says_why(tmp_path: Path, services: str, said: str) -> None:
    (tmp_path / "services.yaml").write_text("services:\n" + services)
    with pytest.raises(ConfigError, match=said):
        load_config(tmp_path / "services.yaml", environ={})


async def test_an_included_service_runs_in_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "services.yaml").write_text(
        "services:\n  api:\n    command: sh -c 'pwd > where; exec sleep 300'\n"
    )
    (tmp_path / "services.yaml").write_text("include: [backend/services.yaml]\nservices: {}\n")
    where = tmp_path / "backend" / "where"
    async with running_stack(tmp_path / "services.yaml") as sup:
        await until_ready(sup)
        await async_wait_for(
            lambda: where.exists() and where.read_text().strip() == str(tmp_path / "backend")
        )
