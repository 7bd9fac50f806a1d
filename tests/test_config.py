"""Loading services.yaml: finding it, variables, env files, and errors with file:line:col."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackvisor.config import (
    Condition,
    ConfigError,
    RestartPolicy,
    StackConfig,
    find_config,
    load_config,
)


def write(folder: Path, text: str, name: str = "services.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(
    folder: Path, text: str, environ: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> StackConfig:
    """Write the stack file (and `files`, relative to it), then load it."""
    for name, content in (files or {}).items():
        write(folder, content, name)
    return load_config(write(folder, text), environ or {})


def errors_of(
    folder: Path, text: str, environ: dict[str, str] | None = None, files: dict[str, str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(folder, text, environ, files)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


# --- a good file -----------------------------------------------------------------------


def test_loads_a_full_stack(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    config = load(
        tmp_path,
        """\
        settings:
          strategy: conservative
          stop_timeout: 5s
        services:
          db:
            command: redis-server --port ${PORT}
            port: 6379
            healthcheck: {tcp: "127.0.0.1:${PORT}", interval: 500ms}
          api:
            command: ["python", "-m", "api", "--port", "${PORT}"]
            port: 8000
            depends_on:
              db: {condition: service_healthy, restart: true}
            env: {REDIS_URL: "redis://127.0.0.1:${DB_PORT}"}
            working_dir: ./api
            restart: no
          migrate:
            command: python -m api.migrate
            depends_on: [db]
        """,
    )
    assert config.name == tmp_path.name
    assert config.path == (tmp_path / "services.yaml").resolve()
    assert config.path.is_absolute()
    assert list(config.services) == ["db", "api", "migrate"]
    assert {name: svc.name for name, svc in config.services.items()} == {n: n for n in config.services}
    db, api, migrate = config.services.values()
    assert db.command == "redis-server --port ${PORT}"
    assert db.healthcheck is not None and db.healthcheck.tcp == "127.0.0.1:${PORT}"
    assert db.healthcheck.interval == 0.5
    assert api.command == ["python", "-m", "api", "--port", "${PORT}"]
    assert api.env == {"REDIS_URL": "redis://127.0.0.1:${DB_PORT}"}
    assert api.depends_on["db"].condition is Condition.HEALTHY and api.depends_on["db"].restart
    assert api.restart is RestartPolicy.NO
    assert api.working_dir == "./api"
    assert migrate.depends_on["db"].condition is Condition.STARTED
    assert config.settings.stop_timeout == 5.0


def test_name_from_the_file_wins_over_the_folder(tmp_path: Path) -> None:
    config = load(tmp_path, "name: demo\nservices: {a: {command: run}}\n")
    assert config.name == "demo"


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        services:
          a: &common
            command: run a
            restart: always
            env: {LEVEL: debug}
          b:
            <<: *common
            command: run b
            restart: "no"
        """,
    )
    a, b = config.services["a"], config.services["b"]
    assert (a.restart, b.restart) == (RestartPolicy.ALWAYS, RestartPolicy.NO)
    assert b.command == "run b" and b.env == {"LEVEL": "debug"}


def test_extension_fields_are_ignored(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        x-defaults: &defaults
          restart: always
          env: {LEVEL: "${LEVEL:-info}"}
        services:
          a:
            <<: *defaults
            command: run
            x-owner: team-a
        """,
    )
    assert config.services["a"].restart is RestartPolicy.ALWAYS
    assert config.services["a"].env == {"LEVEL": "info"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("yes", "yes"), ("on", "on"), ("true", "true"), ("2024-01-02", "2024-01-02"), ("5", "5")],
)
def test_yaml_1_1_surprises_stay_strings(tmp_path: Path, value: str, expected: str) -> None:
    config = load(tmp_path, f"services:\n  a:\n    command: run\n    env: {{FLAG: {value}}}\n")
    assert config.services["a"].env == {"FLAG": expected}


# --- variables: .env, the environment, port variables ----------------------------------


def test_dotenv_and_environment(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        services:
          a:
            command: run ${FROM_DOTENV} ${OVERRIDDEN} ${QUOTED} ${SINGLE} ${EXPORTED} ${DERIVED}
            env: {DEFAULTED: "${NOT_SET:-fallback}", ESCAPED: "$$HOME"}
        """,
        environ={"OVERRIDDEN": "from-env"},
        files={
            ".env": """\
        # a comment
        FROM_DOTENV=one   # trailing comment
        OVERRIDDEN=from-dotenv
        QUOTED="two words"
        SINGLE='${NOT_EXPANDED}'
        export EXPORTED=three

        DERIVED=${FROM_DOTENV}-derived
        """
        },
    )
    service = config.services["a"]
    assert service.command == "run one from-env two words $${NOT_EXPANDED} three one-derived"
    assert service.env == {"DEFAULTED": "fallback", "ESCAPED": "$$HOME"}


def test_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKVISOR_TEST_GREETING", "hello")
    config = load_config(write(tmp_path, "services: {a: {command: 'echo ${STACKVISOR_TEST_GREETING}'}}\n"))
    assert config.services["a"].command == "echo hello"


def test_port_variables_survive_loading_even_when_set(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        services:
          my-db: {command: "db --port ${PORT:-5432}", port: 5432}
          api:
            command: api --db ${MY_DB_PORT} --port $PORT
            healthcheck: {http: "http://127.0.0.1:${PORT}/health"}
        """,
        environ={"PORT": "1", "MY_DB_PORT": "2"},
    )
    assert config.services["my-db"].command == "db --port ${PORT:-5432}"
    assert config.services["api"].command == "api --db ${MY_DB_PORT} --port ${PORT}"


def test_stack_name_can_come_from_a_variable(tmp_path: Path) -> None:
    config = load(tmp_path, "name: ${STACK:-dev}\nservices: {a: {command: run}}\n", environ={"STACK": "ci"})
    assert config.name == "ci"


# --- env_file --------------------------------------------------------------------------


def test_env_files_are_merged_under_env(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        services:
          api:
            command: run
            env_file: [config/base.env, config/local.env]
            env: {SHARED: from-env}
          plain:
            command: run
            env_file: config/base.env
        """,
        environ={"USER_NAME": "dev"},
        files={
            "config/base.env": "SHARED=base\nONLY_BASE=1\nBOTH=base\nURL=http://localhost:${API_PORT}\n",
            "config/local.env": "BOTH=local\nWHO=${USER_NAME}\nRAW='a$b'\n",
        },
    )
    assert config.services["api"].env == {
        "SHARED": "from-env",
        "ONLY_BASE": "1",
        "BOTH": "local",
        "URL": "http://localhost:${API_PORT}",
        "WHO": "dev",
        "RAW": "a$$b",
    }
    assert config.services["plain"].env["SHARED"] == "base"
    assert [f.path for f in config.services["api"].env_file] == ["config/base.env", "config/local.env"]


def test_env_file_is_relative_to_the_stack_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = tmp_path / "project"
    write(stack, "A=1\n", "app.env")
    path = write(stack, "services: {a: {command: run, env_file: app.env}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(path, {}).services["a"].env == {"A": "1"}


def test_missing_env_file_is_named(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """\
        services:
          api:
            command: run
            env_file: [ok.env, missing.env]
        """,
        files={"ok.env": "A=1\n"},
    )
    assert errors == ["services.yaml:4:24: services.api.env_file[1]: env file not found: missing.env"]


def test_bad_line_in_env_file(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        "services: {api: {command: run, env_file: api.env}}\n",
        files={"api.env": 'GOOD=1\nnot a variable line\nQ="open\n'},
    )
    assert errors == [
        'api.env:2:1: expected KEY=VALUE (got "not ...", 19 characters)',
        'api.env:3:3: Q: the " quote is never closed',
    ]


def test_dotenv_error_names_the_dotenv(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path, "services: {a: {command: run}}\n", files={".env": "X=${NEEDED:?set NEEDED}\n"}
    )
    assert errors == [".env:1:1: X: required variable NEEDED is missing a value: set NEEDED"]


# --- errors with file:line:col ---------------------------------------------------------

BAD_FILES = [
    pytest.param(
        """\
        services:
          db:
            command: redis-server
            comand: oops
        """,
        'services.yaml:4:5: services.db.comand: unknown field (did you mean "command"?)',
        id="unknown-field-did-you-mean",
    ),
    pytest.param(
        """\
        services:
          db:
            comand: redis-server
        """,
        'services.yaml:3:5: services.db.comand: unknown field (did you mean "command"?)',
        id="misspelt-required-field-reported-once",
    ),
    pytest.param(
        """\
        services:
          db:
            command: redis-server
          api:
            command: run
            depends_on:
              db:
                condition: healthy
        """,
        "services.yaml:8:20: services.api.depends_on.db.condition: expected one of service_started, "
        'service_healthy, service_completed_successfully (got "healthy")',
        id="enum",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    max_restarts: lots\n",
        'services.yaml:4:19: services.api.max_restarts: expected an integer (got "lots")',
        id="integer",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    port: http\n",
        'services.yaml:4:11: services.api.port: expected an integer or "auto" (got "http")',
        id="port-union",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    port: 70000\n",
        "services.yaml:4:11: services.api.port: expected a port between 1 and 65535 (got 70000)",
        id="port-range",
    ),
    pytest.param(
        "services:\n  api:\n    command: [run, 5]\n",
        "services.yaml:3:20: services.api.command[1]: expected a string (got 5)",
        id="list-item",
    ),
    pytest.param(
        "services:\n  api:\n    command: 5\n",
        "services.yaml:3:14: services.api.command: expected a string or a list of strings (got 5)",
        id="command-union",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    restart: never\n",
        "services.yaml:4:14: services.api.restart: expected one of no, on-failure, always, "
        'unless-stopped (got "never")',
        id="restart",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    healthcheck:\n      tcp: x\n      interval: soon\n",
        "services.yaml:6:17: services.api.healthcheck.interval: expected a duration like 500ms, 2s, 1m "
        "or a number of seconds (got 'soon')",
        id="duration",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    healthcheck: {}\n",
        "services.yaml:4:5: services.api.healthcheck: "
        "expected exactly one of http, tcp, exec, log (got none)",
        id="healthcheck-without-probe",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    depends_on:\n      db: {restart: maybe}\n"
        "  db: {command: x}\n",
        'services.yaml:5:21: services.api.depends_on.db.restart: expected true or false (got "maybe")',
        id="boolean",
    ),
    pytest.param(
        "services:\n  api:\n    port: 80\n",
        "services.yaml:2:3: services.api.command: missing required field",
        id="missing-field-at-its-parent",
    ),
    pytest.param(
        "services:\n  api:\n",
        "services.yaml:2:3: services.api: expected a mapping (got null)",
        id="empty-service",
    ),
    pytest.param(
        "settings:\n  strategy: smart\nservices: {a: {command: run}}\n",
        "services.yaml:2:13: settings.strategy: "
        'expected one of conservative, aggressive, intelligent (got "smart")',
        id="settings",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    name: other\n",
        "services.yaml:4:5: services.api.name: unknown field (a service is named by its key)",
        id="service-name-field",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    port: 80\n    port: 81\n",
        "services.yaml:5:5: services.api.port: duplicate key (first written on line 4)",
        id="duplicate-key",
    ),
    pytest.param(
        "services:\n  api: {command: run}\n  api: {command: run}\n",
        "services.yaml:3:3: services.api: duplicate key (first written on line 2)",
        id="duplicate-service",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n   port: 80\n",
        "services.yaml:4:4: invalid YAML:",
        id="yaml-syntax",
    ),
    pytest.param(
        "services:\n  api:\n    command: [run\n",
        "services.yaml:4:1: invalid YAML:",
        id="yaml-unclosed",
    ),
    pytest.param(
        "services:\n  api:\n\tcommand: run\n",
        "services.yaml:3:1: invalid YAML:",
        id="yaml-tab",
    ),
    pytest.param("", "services.yaml:1:1: the file is empty", id="empty"),
    pytest.param("# only a comment\n", "services.yaml:1:1: the file is empty", id="only-comments"),
    pytest.param(
        "- api\n- db\n",
        "services.yaml:1:1: expected a mapping with services at the top level (got a list)",
        id="top-level-list",
    ),
    pytest.param(
        "just text\n",
        "services.yaml:1:1: expected a mapping with services at the top level (got a single value)",
        id="top-level-scalar",
    ),
    pytest.param("name: x\n", "services.yaml:1:1: services: no services defined", id="no-services"),
    pytest.param("services: {}\n", "services.yaml:1:1: services: no services defined", id="empty-services"),
    pytest.param("services:\n", "services.yaml:1:1: services: no services defined", id="null-services"),
    pytest.param(
        "services: [api, db]\n",
        "services.yaml:1:1: services: expected a mapping (got a list)",
        id="services-list",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    depends_on: [dbb]\n  db: {command: x}\n",
        'services.yaml:4:18: services.api.depends_on.dbb: unknown service "dbb" (api depends on it; '
        'did you mean "db"?)',
        id="unknown-dependency-short-form",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    depends_on:\n      queue: {}\n",
        'services.yaml:5:7: services.api.depends_on.queue: unknown service "queue" (api depends on it)',
        id="unknown-dependency",
    ),
    pytest.param(
        "services:\n  api:\n    command: run\n    depends_on: [api]\n",
        "services.yaml:4:18: services.api.depends_on.api: a service cannot depend on itself",
        id="self-dependency",
    ),
    pytest.param(
        """\
        services:
          api:
            command: run
            depends_on: [worker]
          worker:
            command: run
            depends_on: [api]
        """,
        "services.yaml:4:18: services.api.depends_on.worker: dependency cycle: api -> worker -> api",
        id="cycle",
    ),
    pytest.param(
        """\
        services:
          db: {command: x}
          api:
            command: run
            depends_on:
              db: {condition: service_healthy}
        """,
        "services.yaml:6:23: services.api.depends_on.db.condition: service_healthy needs a healthcheck, "
        "and db has none",
        id="healthy-without-healthcheck",
    ),
    pytest.param(
        "services:\n  a: {command: x, port: 8000}\n  b: {command: y, port: 8000}\n",
        "services.yaml:3:25: services.b.port: port 8000 is already the port of a",
        id="duplicate-port",
    ),
    pytest.param(
        "services:\n  a:\n    command: x\n    working_dir: ./nowhere\n",
        "services.yaml:4:18: services.a.working_dir: folder not found: ./nowhere",
        id="working-dir",
    ),
    pytest.param(
        "services:\n  a:\n    command: echo ${TOKEN:?set TOKEN first}\n",
        "services.yaml:3:14: services.a.command: required variable TOKEN is missing a value: set TOKEN first",
        id="required-variable",
    ),
    pytest.param(
        "services:\n  a:\n    command: x\n    working_dir: ${PORT}\n",
        "services.yaml:4:18: services.a.working_dir: ${PORT} is known only when the stack starts",
        id="port-variable-outside-command-env-healthcheck",
    ),
    pytest.param(
        "services:\n  a:\n    command: echo ${oops\n",
        "services.yaml:3:14: services.a.command: unterminated ${",
        id="bad-interpolation",
    ),
    pytest.param(
        "services:\n  a:\n    command: x\n    port_range: [null, 5]\n",
        "services.yaml:4:5: services.a.port_range: expected two port numbers like [6380, 6399]",
        id="port-range-items",
    ),
    pytest.param(
        "services:\n  a:\n    command: x\n  b:\n    command: \0\n",
        "services.yaml:5:14: invalid YAML: special characters are not allowed",
        id="control-character",
    ),
    pytest.param(
        "path: /elsewhere\nservices: {a: {command: x}}\n",
        "services.yaml:1:1: path: unknown field",
        id="path-is-not-a-field",
    ),
]


@pytest.mark.parametrize(("text", "first_error"), BAD_FILES)
def test_bad_file(tmp_path: Path, text: str, first_error: str) -> None:
    errors = errors_of(tmp_path, text)
    assert errors[0].startswith(first_error), errors


def test_every_error_is_reported_in_file_order(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """\
        settings:
          strategy: smart
        services:
          api:
            comand: run
            port: http
          db:
            command: x
            restart: sometimes
        """,
    )
    assert [e.split(": ")[0] for e in errors] == [
        "services.yaml:2:13",
        "services.yaml:5:5",
        "services.yaml:6:11",
        "services.yaml:9:14",
    ]


def test_every_stack_error_is_reported(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """\
        services:
          a: {command: x, depends_on: [b, ghost]}
          b: {command: x, depends_on: [a]}
          c: {command: x, depends_on: [d]}
          d: {command: x, depends_on: [c]}
        """,
    )
    assert [e.split(": ", 1)[1] for e in errors] == [
        "services.a.depends_on.b: dependency cycle: a -> b -> a",
        'services.a.depends_on.ghost: unknown service "ghost" (a depends on it)',
        "services.c.depends_on.d: dependency cycle: c -> d -> c",
    ]


def test_file_outside_the_cwd_is_shown_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "stack", "services: {}\n")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.errors[0].startswith(f"{path}:1:1: ")


def test_file_in_a_subfolder_is_shown_relative(tmp_path: Path) -> None:
    path = write(tmp_path / "stack", "services: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path.resolve(), {})
    assert caught.value.errors[0].startswith("stack/services.yaml:1:1: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"services.yaml: file not found"):
        load_config(tmp_path / "services.yaml", {})


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_bytes(b"services:\n  a: {command: \xff}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "services.yaml", {})


_KEYS = st.sampled_from(
    ["services", "settings", "api", "db", "command", "port", "depends_on", "condition", "restart",
     "healthcheck", "tcp", "env", "env_file", "working_dir", "backoff", "port_range", "strategy", "control",
     "x-a", "comand"]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.sampled_from(
        ["x", "", "${PORT}", "${A:?no}", "service_healthy", "api", "db", "1-5", "auto", "2s", "${"]
    ),
)
_TREES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(st.sampled_from(["api", "db"]), st.dictionaries(_KEYS, _TREES, max_size=5), max_size=2)
)
def test_any_file_loads_or_gives_config_error_lines(tmp_path: Path, services: dict[str, object]) -> None:
    (tmp_path / "services.yaml").write_text(yaml.safe_dump({"services": services}))
    try:
        load_config(tmp_path / "services.yaml", {})
    except ConfigError as exc:
        assert exc.errors and all(line.startswith("services.yaml:") for line in exc.errors)


def test_recursive_alias_is_an_error_not_a_crash(tmp_path: Path) -> None:
    errors = errors_of(tmp_path, "services:\n  a: &loop\n    command: x\n    env: *loop\n")
    assert any("alias refers to itself" in e for e in errors)


# --- find_config -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["services.yaml", "services.yml", "stackvisor.yaml"])
def test_find_config_in_a_parent(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("services: {}\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_config(deep) == (tmp_path / name).resolve()


def test_find_config_prefers_the_nearest_folder(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "stackvisor.yaml").write_text("")
    assert find_config(tmp_path / "sub") == (tmp_path / "sub" / "stackvisor.yaml").resolve()


def test_find_config_defaults_to_the_cwd(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text("")
    assert find_config() == (tmp_path / "services.yaml").resolve()


def test_find_config_not_found(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no services.yaml found in .*empty or its parents") as caught:
        find_config(empty)
    assert len(caught.value.errors) == 1
