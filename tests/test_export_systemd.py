"""`stackvisor export systemd`: what each field of the stack file becomes in the units,
checked on the text; then by systemd itself: `systemd --test` parses the units back (the
exact arguments and variables a process would get), `systemd-analyze verify` must have
nothing to say about them, and where systemd runs the machine the demo stack's units
are started for real.
"""

from __future__ import annotations

import glob
import grp
import http.server
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, free_ports

from stackvisor.config.loader import load_config
from stackvisor.config.schema import StackConfig
from stackvisor.export import base, systemd
from stackvisor.export.systemd_text import environment_file

UNIT = re.compile(r"[A-Za-z0-9:_.\\-]+\.(service|socket|target)")
SYSTEMD = next(
    (p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(p, os.X_OK)), None
)


def stack(folder: Path, text: str, environ: dict[str, str] | None = None) -> StackConfig:
    path = folder / "services.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, {} if environ is None else environ)


def export(
    config: StackConfig, *names: str, user: bool = False, systemd_version: int = systemd.DEFAULT_VERSION
) -> base.Exported:
    """The units of `names` (or all), with the env files read as the command line reads them."""
    target = base.plan(config, names, user_units=user)
    return systemd.export(target, env_files=systemd.read_env_files(target), systemd_version=systemd_version)


def entries(text: str, section: str, key: str) -> list[str]:
    """The values of `key` in `section` of a unit file's text."""
    found, current = [], None
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key}="):
            found.append(line.split("=", 1)[1])
    return found


def one(text: str, section: str, key: str) -> str:
    (value,) = entries(text, section, key)
    return value


def words(line: str) -> list[str]:
    """An Exec*= line as the arguments the process gets (the quoting we write: bare words
    and double quotes with C escapes), with specifiers and `$$` undone."""
    out, i = [], 0
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"'}
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        word = ""
        if line[i] == '"':
            i += 1
            while line[i] != '"':
                if line[i] == "\\" and line[i + 1] == "x":
                    word, i = word + chr(int(line[i + 2 : i + 4], 16)), i + 4
                elif line[i] == "\\":
                    word, i = word + escapes[line[i + 1]], i + 2
                else:
                    word, i = word + line[i], i + 1
            i += 1
        else:
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            word, i = line[i:end], end
        out.append(word.replace("%%", "%").replace("$$", "$"))
    return out


# ----- names, the target, commands --------------------------------------------------------


def test_unit_names_are_escaped_so_systemd_takes_them_and_two_names_never_meet(tmp_path: Path) -> None:
    config = stack(tmp_path, 'name: "my stack@home/ü"\nservices:\n  web.v2: {command: "true"}\n')
    files = export(config).files
    assert list(files) == [
        "my\\x20stack\\x40home\\x2f\\xc3\\xbc.target",
        "my\\x20stack\\x40home\\x2f\\xc3\\xbc-web.v2.service",
    ]
    assert all(UNIT.fullmatch(name) for name in files)
    dotted = stack(tmp_path, "name: .hidden\nservices:\n  a: {command: 'true'}\n")
    assert next(iter(export(dotted).files)) == "\\x2ehidden.target"
    long = stack(tmp_path, f"name: {'x' * 250}\nservices:\n  a: {{command: 'true'}}\n")
    with pytest.raises(base.ExportError, match="longer than systemd's 255"):
        export(long)


def test_the_target_wants_every_service_each_part_of_it(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        name: shop
        services:
          db: {command: "sleep 1000"}
          api: {command: "sleep 1000", depends_on: [db]}
        """,
    )
    files = export(config).files
    target = files["shop.target"]
    assert entries(target, "Unit", "Wants") == ["shop-db.service", "shop-api.service"]
    assert entries(target, "Unit", "After") == ["shop-db.service", "shop-api.service"]
    assert one(target, "Install", "WantedBy") == "multi-user.target"
    for name in ("shop-db.service", "shop-api.service"):
        assert one(files[name], "Unit", "PartOf") == "shop.target"
        assert one(files[name], "Install", "WantedBy") == "shop.target"
    assert "api" not in export(config, "db").files["shop.target"]  # the named ones and what they need


def test_a_string_command_runs_through_sh_as_stackvisor_runs_it(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          simple: {command: 'echo "100%" $$HOME ${PORT}', port: 8000}
          compound: {command: "cd /tmp && echo '%n' ${SIMPLE_PORT}"}
        """,
    )
    files = export(config).files
    simple = one(files[f"{tmp_path.name}-simple.service"], "Service", "ExecStart")
    assert simple == '/bin/sh -c "exec echo \\"100%%\\" $$HOME 8000"'
    assert words(simple) == ["/bin/sh", "-c", 'exec echo "100%" $HOME 8000']
    compound = one(files[f"{tmp_path.name}-compound.service"], "Service", "ExecStart")
    assert words(compound) == ["/bin/sh", "-c", "cd /tmp && echo '%n' 8000"]


TRICKY = ["print('a b')", "", "x;y", ";", "%n", "$$X $${Y}", "back\\slash", "new\nline\ttab", 'say "hi"', "é"]


def test_a_list_command_is_execd_each_argument_quoted(tmp_path: Path) -> None:
    config = stack(tmp_path, f"services:\n  a: {{command: {json.dumps(['python3', '-c', *TRICKY])}}}\n")
    line = one(export(config).files[f"{tmp_path.name}-a.service"], "Service", "ExecStart")
    assert line.startswith(
        'python3 -c "print(\'a b\')" "" "x;y" ";" %%n "$$X $${Y}" "back\\\\slash" "new\\nline\\ttab"'
    )
    assert words(line) == ["python3", "-c", *[part.replace("$$", "$") for part in TRICKY]]


def test_a_relative_program_is_found_from_the_working_folder(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    config = stack(
        tmp_path,
        """
        services:
          a: {command: [bin/run, x], working_dir: app}
          b: {command: [run], env: {PATH: /opt/bin}}
        """,
    )
    exported = export(config)
    a = exported.files[f"{tmp_path.name}-a.service"]
    assert words(one(a, "Service", "ExecStart")) == [str(tmp_path / "app" / "bin" / "run"), "x"]
    assert one(a, "Service", "WorkingDirectory") == str(tmp_path / "app")
    lookup = "b: command: systemd looks run up in its own search path, not in the PATH env sets"
    assert f"{lookup}: write its full path" in exported.warnings


# ----- environment ------------------------------------------------------------------------


def test_environment_values_are_quoted_and_kept_exactly(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          a:
            command: "true"
            port: 8000
            env:
              SPACES: "a  b"
              QUOTES: "it's \\"quoted\\""
              PERCENT: "100%d"
              DOLLAR: "$$HOME and $$$$"
              LINES: "one\\ntwo"
              SLASH: "back\\\\slash"
              URL: "http://127.0.0.1:${PORT}/"
              dotted.name: "x"
        """,
    )
    exported = export(config)
    unit = exported.files[f"{tmp_path.name}-a.service"]
    assert entries(unit, "Service", "Environment") == [
        '"SPACES=a  b"',
        '"QUOTES=it\'s \\"quoted\\""',
        '"PERCENT=100%%d"',
        '"DOLLAR=$HOME and $$"',
        '"LINES=one\\ntwo"',
        '"SLASH=back\\\\slash"',
        '"URL=http://127.0.0.1:8000/"',
        '"A_PORT=8000"',
        '"PORT=8000"',
    ]
    assert "a: env: dotted.name: not a name systemd gives a process" in exported.warnings


def test_env_files_are_named_and_their_values_left_out_of_the_unit(tmp_path: Path) -> None:
    (tmp_path / "secrets.env").write_text(
        "TOKEN=s3cret\nSHARED=from-file\nexport EXPORTED=1\nLATER=${TOKEN}\n"
    )
    config = stack(
        tmp_path,
        """
        services:
          a:
            command: "true"
            env_file: [secrets.env, {path: missing.env, required: false}]
            env: {SHARED: from-env, OWN: mine}
        """,
    )
    exported = export(config)
    unit = exported.files[f"{tmp_path.name}-a.service"]
    assert entries(unit, "Service", "EnvironmentFile") == [
        str(tmp_path / "secrets.env"),
        f"-{tmp_path / 'missing.env'}",
    ]
    assert "s3cret" not in unit
    written = [value.split("=")[0].strip('"') for value in entries(unit, "Service", "Environment")]
    # systemd drops `export NAME`: it goes into Environment=. A file's value that
    # stackvisor does not use (env overrides it; systemd does not expand ${TOKEN})
    # cannot be overridden from the unit: said.
    assert written == ["EXPORTED", "OWN"]
    warned = [w for w in exported.warnings if w.startswith("a: env:")]
    assert [w.split(":")[2].strip() for w in warned] == ["SHARED", "LATER"]
    assert all(f"# not carried over: {w.removeprefix('a: ')}" in unit for w in warned)

    unread = systemd.export(base.plan(config), env_files=None).files[f"{tmp_path.name}-a.service"]
    assert "EnvironmentFile" not in unread and '"TOKEN=s3cret"' in unread
    assert "the files were not read" in unread


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("A=1\nB = two words  \n", {"A": "1", "B": "two words"}),
        ("# comment\n; also\n  C=3\nnot an assignment\n", {"C": "3"}),
        (
            'D=\'single $x \\n\'\nE="double \\"q\\" \\$x \\n"\n',
            {"D": "single $x \\n", "E": 'double "q" $x \\n'},
        ),
        ('F="two\nlines"\nG=\'a\'"b"c\n', {"F": "two\nlines", "G": "abc"}),
        (
            "H=back\\\\slash\\ kept\\\nnext\nI=a#b # not a comment\n",
            {"H": "back\\slash keptnext", "I": "a#b # not a comment"},
        ),
        ("export J=1\nK.L=2\n1M=3\nN=\r\nO=${N}", {"N": "", "O": "${N}"}),
        ("# comment \\\nP=swallowed in systemd 252\nQ=1", {"Q": "1"}),
    ],
)
def test_an_env_file_is_read_as_systemd_reads_it(text: str, values: dict[str, str]) -> None:
    assert environment_file(text) == values


# ----- how it runs, stops and restarts ----------------------------------------------------


def test_folder_user_stop_and_kill(tmp_path: Path) -> None:
    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    config = stack(
        tmp_path,
        f"""
        settings: {{stop_timeout: 7s}}
        services:
          a: {{command: "true", user: "{me}:{group}", stop_signal: INT, stop_timeout: 1m30s}}
          b: {{command: "true", user: "{me}"}}
        """,
    )
    files = export(config).files
    a, b = files[f"{tmp_path.name}-a.service"], files[f"{tmp_path.name}-b.service"]
    assert (one(a, "Service", "User"), one(a, "Service", "Group")) == (me, group)
    assert one(b, "Service", "User") == me and not entries(b, "Service", "Group")
    assert one(a, "Service", "WorkingDirectory") == str(tmp_path)
    assert [one(a, "Service", key) for key in ("KillMode", "KillSignal", "TimeoutStopSec")] == [
        "control-group",
        "SIGINT",
        "90s",
    ]
    assert one(b, "Service", "TimeoutStopSec") == "7s"
    user = export(config, user=True)
    assert "User=" not in user.files[f"{tmp_path.name}-a.service"]
    assert f"a: user: {me}:{group}: a user unit runs as the user of its service manager" in user.warnings
    assert one(user.files[f"{tmp_path.name}.target"], "Install", "WantedBy") == "default.target"


@pytest.mark.parametrize(
    ("fields", "service", "unit"),
    [
        ("restart: 'no'", ["Restart=no"], []),
        (
            "restart: on-failure",
            ["Restart=on-failure", "RestartSec=500ms", "RestartPreventExitStatus=126 127"],
            ["StartLimitIntervalSec=63s", "StartLimitBurst=6"],
        ),
        ("restart: on-failure, max_restarts: 0", ["Restart=on-failure"], ["StartLimitIntervalSec=0"]),
        ("restart: always", ["Restart=always", "RestartSec=500ms"], ["StartLimitIntervalSec=0"]),
        ("restart: unless-stopped", ["Restart=always"], ["StartLimitIntervalSec=0"]),
        (
            "max_restarts: 2, backoff: {initial: 2s, reset_after: 1m}",
            ["Restart=on-failure", "RestartSec=2s"],
            ["StartLimitIntervalSec=184s", "StartLimitBurst=3"],
        ),
    ],
)
def test_restart_policies(tmp_path: Path, fields: str, service: list[str], unit: list[str]) -> None:
    config = stack(tmp_path, f"services:\n  a: {{command: 'true', {fields}}}\n")
    text = export(config).files[f"{tmp_path.name}-a.service"]
    assert all(line in text.splitlines() for line in service + unit), text
    assert "RestartSteps" not in text  # systemd 252 does not know it


def test_the_backoff_grows_with_systemd_254(tmp_path: Path) -> None:
    config = stack(tmp_path, "services:\n  a: {command: 'true'}\n")
    exported = export(config, systemd_version=254)
    text = exported.files[f"{tmp_path.name}-a.service"]
    grows = [line for line in text.splitlines() if "Steps" in line or "MaxDelay" in line]
    assert grows == ["RestartSteps=6", "RestartMaxDelaySec=30s"]
    assert not [w for w in exported.warnings if w.startswith("backoff")]
    assert [w for w in export(config).warnings if w.startswith("backoff: the units are for systemd 252")]


def test_a_one_shot_that_others_wait_for_remains_active_after_its_exit(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          migrate: {command: "true", restart: always}
          api: {command: "sleep 100", depends_on: {migrate: {condition: service_completed_successfully}}}
          cache: {command: "sleep 100", restart: "no"}
          web: {command: "sleep 100", depends_on: {api: {required: false, restart: true}, cache: {}}}
        """,
    )
    exported = export(config)
    files = {name.split("-")[-1].split(".")[0]: text for name, text in exported.files.items()}
    assert entries(files["migrate"], "Service", "Type") == ["oneshot"]
    assert one(files["migrate"], "Service", "RemainAfterExit") == "yes"
    assert one(files["migrate"], "Service", "Restart") == "on-failure"
    assert (
        "migrate: restart: always: others wait for it to complete, so it restarts on failure only"
        in exported.warnings
    )
    assert one(files["cache"], "Service", "Type") == "exec"  # `no` alone: a long-running service
    assert one(files["api"], "Unit", "Requires") == f"{tmp_path.name}-migrate.service"
    web = files["web"]
    assert entries(web, "Unit", "After") == [f"{tmp_path.name}-api.service", f"{tmp_path.name}-cache.service"]
    assert entries(web, "Unit", "Wants") == [f"{tmp_path.name}-api.service"]
    assert entries(web, "Unit", "Requires") == [f"{tmp_path.name}-cache.service"]
    assert any(
        w.startswith("web: depends_on.api.restart: true holds when api is restarted")
        for w in exported.warnings
    )


# ----- health checks ----------------------------------------------------------------------

HEALTH = """
services:
  api:
    command: "sleep 100"
    port: {port}
    healthcheck: {check}
  web:
    command: "sleep 100"
    depends_on: {{api: {{condition: service_healthy}}}}
"""


def wait_line(folder: Path, port: int, check: str) -> tuple[list[str], str]:
    exported = export(stack(folder, HEALTH.format(port=port, check=check)))
    unit = exported.files[f"{folder.name}-api.service"]
    posts = entries(unit, "Service", "ExecStartPost")
    return (words(posts[0]) if posts else []), unit


def run_probe(argv: list[str], limit: str = "0.3") -> int:
    """Run a wait (not for a minute: its limit is lowered) and give its exit status."""
    at = 5 if argv[0] == "python3" else 6
    argv = [sys.executable if argv[0] == "python3" else argv[0], *argv[1:at], limit, *argv[at + 1 :]]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


@pytest.fixture
def http_server() -> Iterator[tuple[int, dict[str, int]]]:
    answer = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer["status"] if self.path == "/health?full=1" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], answer
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_check_others_wait_for_is_waited_for_by_python3(
    tmp_path: Path, http_server: tuple[int, dict[str, int]]
) -> None:
    port, answer = http_server
    argv, unit = wait_line(
        tmp_path,
        port,
        "{http: 'http://127.0.0.1:${PORT}/health?full=1', interval: 30s, retries: 4, start_period: 10s}",
    )
    assert argv[0:2] == ["python3", "-c"] and argv[3:] == [
        "2",
        "0.1",
        "130",
        "http",
        f"http://127.0.0.1:{port}/health?full=1",
    ]
    assert one(unit, "Service", "TimeoutStartSec") == "167s"
    assert "ExecStartPost= waits up to 130s for the http health check (for web)" in unit
    assert run_probe(argv) == 0
    answer["status"] = 302
    assert run_probe(argv) == 0
    answer["status"] = 500
    assert run_probe(argv) == 1


def test_a_tcp_check_and_the_least_wait(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        argv, _ = wait_line(tmp_path, port, "{tcp: '${PORT}', interval: 1s}")
        assert argv[3:] == ["2", "0.1", "60", "tcp", "127.0.0.1", str(port)]
        assert run_probe(argv) == 0
    finally:
        listener.close()
    assert run_probe(argv) == 1


def test_an_exec_check_runs_in_a_shell_loop(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    argv, _ = wait_line(
        tmp_path, 8000, f"{{exec: 'test -e {flag} && test ${{PORT}} = 8000', start_interval: 1s}}"
    )
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:8] == ["health-check", "2", "1", "60", "/bin/sh"]
    assert argv[8:] == ["-c", f"test -e {flag} && test 8000 = 8000"]
    assert run_probe(argv, "1") == 1
    flag.touch()
    assert run_probe(argv, "1") == 0
    listed, _ = wait_line(tmp_path, 8000, "{exec: [test, '${PORT}', '=', '8000']}")
    assert listed[7:] == ["test", "8000", "=", "8000"] and run_probe(listed, "1") == 0


def test_checks_systemd_cannot_wait_for_are_said(tmp_path: Path) -> None:
    argv, unit = wait_line(tmp_path, 8000, "{log: 'ready'}")
    assert (
        argv == []
        and "# not carried over: healthcheck log: systemd cannot wait for a line of output; web start" in unit
    )
    config = stack(tmp_path, "services:\n  a: {command: 'true', healthcheck: {tcp: '1'}}\n")
    unchecked = "a: healthcheck: not checked by systemd (nothing here waits for it to be healthy)"
    assert f"{unchecked}; failing does not restart it" in export(config).warnings


# ----- sockets ----------------------------------------------------------------------------


def test_socket_inherit_and_on_demand_become_socket_units(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        name: s
        services:
          docs:
            command: "sleep 100"
            port: 8001
            socket: inherit
            start: on_demand
            idle_stop: 5m
            healthcheck: {tcp: "${PORT}"}
          api: {command: "sleep 100", port: 8002, socket: inherit}
          fwd: {command: "sleep 100", port: 8003, socket: proxy, start: on_demand}
          web: {command: "sleep 100", depends_on: {docs: {condition: service_healthy}}}
        """,
    )
    exported = export(config)
    files = exported.files
    assert entries(files["s.target"], "Unit", "Wants") == [
        "s-api.service",
        "s-docs.socket",
        "s-fwd.service",
        "s-web.service",
    ]
    socket_unit = files["s-docs.socket"]
    assert entries(socket_unit, "Socket", "ListenStream") == ["127.0.0.1:8001"]
    assert one(socket_unit, "Socket", "FileDescriptorName") == "docs"
    assert one(socket_unit, "Socket", "Service") == "s-docs.service"
    assert one(socket_unit, "Unit", "PartOf") == "s.target"
    docs = files["s-docs.service"]
    assert (
        one(docs, "Service", "Sockets") == "s-docs.socket"
        and one(docs, "Unit", "Requires") == "s-docs.socket"
    )
    assert "[Install]" not in docs  # started by its first connection
    assert one(files["s-api.service"], "Install", "WantedBy") == "s.target" and "s-api.socket" in files
    assert entries(files["s-web.service"], "Unit", "After") == ["s-docs.socket"]
    assert "docs: idle_stop: it is not stopped when idle" in exported.warnings
    assert "docs: healthcheck: not checked by systemd (its dependents wait for its socket)" in "\n".join(
        exported.warnings
    )
    assert "# not carried over: idle_stop: it is not stopped when idle" in docs
    assert "fwd: start: on_demand: with socket: proxy it starts with the stack" in exported.warnings
    assert (
        base.STACK_WIDE in exported.warnings and f"# not carried over: {base.STACK_WIDE}" in files["s.target"]
    )


# ----- systemd's own reading --------------------------------------------------------------

KITCHEN = """
name: "kitchen sink"
services:
  setup:
    command: ["/bin/sh", "-c", "echo '%n' \\"$$HOME\\"; exit 0"]
    env_file: [app.env, {path: missing.env, required: false}]
    env: {EDGE: "a \\"b\\" 'c' %d $$x\\\\y\\nz"}
  api:
    command: python3 -m http.server ${PORT} --bind 127.0.0.1
    port: 8000
    working_dir: "sub dir"
    user: "{user}"
    depends_on: {setup: {condition: service_completed_successfully}}
    healthcheck: {http: "http://127.0.0.1:${PORT}/", interval: 1s}
  worker:
    command: {tricky}
    depends_on: {api: {condition: service_healthy}, docs: {condition: service_started}}
    healthcheck: {exec: ["test", "-d", "/"]}
    stop_signal: SIGQUIT
    restart: always
  docs:
    command: python3 -m http.server --bind 127.0.0.1 ${PORT}
    port: 8001
    socket: inherit
    start: on_demand
  probe:
    command: "sleep 100"
    port: 8002
    healthcheck: {tcp: "127.0.0.1:${PORT}"}
    depends_on: [worker]
  late:
    command: "sleep 100"
    depends_on: {probe: {condition: service_healthy}}
"""


def kitchen_text() -> str:
    user = pwd.getpwuid(os.getuid()).pw_name
    return KITCHEN.replace("{user}", user).replace("{tricky}", json.dumps(["python3", "-c", *TRICKY]))


@pytest.fixture
def kitchen(tmp_path: Path) -> Path:
    (tmp_path / "sub dir").mkdir()
    (tmp_path / "app.env").write_text("SECRET='from file'\n")
    return tmp_path


def readable_folder() -> Path:
    """A folder another user can read (systemd --test runs as one)."""
    folder = Path(tempfile.mkdtemp(prefix="stackvisor-units-"))
    folder.chmod(0o755)
    return folder


def parsed_by_systemd(files: dict[str, str], unit: str) -> tuple[str, str]:
    """systemd's own dump of `unit` (and its warnings), from `systemd --test`, which loads
    the units as the manager would; it refuses root, so it runs as nobody then."""
    if SYSTEMD is None:
        pytest.skip("systemd is not installed here")
    folder = readable_folder()
    try:
        for name, text in files.items():
            (folder / name).write_text(text)
            (folder / name).chmod(0o644)
        argv = [SYSTEMD, "--test", "--system", f"--unit={unit}", "--no-pager", "--log-target=console"]
        if os.geteuid() == 0:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        env = {"SYSTEMD_UNIT_PATH": f"{folder}:", "PATH": os.environ.get("PATH", "")}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    finally:
        shutil.rmtree(folder)
    block = done.stdout.partition(f"-> Unit {unit}:\n")[2].partition("\t-> Unit ")[0]
    if done.returncode != 0 or not block:
        pytest.skip(f"systemd --test cannot load units here: {(done.stderr or done.stdout)[-300:]}")
    return block, done.stderr + done.stdout.partition("-> By units:")[0]


def dumped_argv(line: str) -> list[str]:
    """A `Command Line:` of systemd's dump (shell-style double quotes, C escapes)."""
    out, i = [], 0
    escapes = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v"}
    while i < len(line):
        if line[i] == " ":
            i += 1
        elif line[i] != '"':
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            out.append(line[i:end])
            i = end
        else:
            word, i = b"", i + 1
            while line[i] != '"':
                if line[i] != "\\":
                    word, i = word + line[i].encode(), i + 1
                elif line[i + 1] in escapes:
                    word, i = word + escapes[line[i + 1]], i + 2
                elif line[i + 1].isdigit():
                    word, i = word + bytes([int(line[i + 1 : i + 4], 8)]), i + 4
                elif line[i + 1] == "x":
                    word, i = word + bytes([int(line[i + 2 : i + 4], 16)]), i + 4
                else:
                    word, i = word + line[i + 1].encode(), i + 2
            out.append(word.decode())
            i += 1
    return out


def test_systemd_reads_every_argument_and_variable_exactly_as_written(kitchen: Path) -> None:
    config = stack(kitchen, kitchen_text())
    target = base.plan(config)
    files = systemd.export(target, env_files=systemd.read_env_files(target)).files
    for name in target.services:
        unit = f"kitchen\\x20sink-{name}.service"
        block, complaints = parsed_by_systemd(files, unit)
        assert unit not in complaints and "kitchen" not in complaints, complaints
        commands = re.findall(r"\t-> (ExecStart\w*):\n\t\t\tCommand Line: (.*)\n", block)
        expected = {"ExecStart": words(one(files[unit], "Service", "ExecStart"))}
        if posts := entries(files[unit], "Service", "ExecStartPost"):
            expected["ExecStartPost"] = words(posts[0])
        # `$` is expanded when the process starts: the dump still shows `$$` for each.
        assert {key: dumped_argv(line) for key, line in commands} == {
            key: [w.replace("$", "$$") for w in argv] for key, argv in expected.items()
        }
        for key, value in base.environment(target, name).items():
            if key != "SECRET":
                assert f"\t\tEnvironment: {key}={value}\n" in block
        assert f"\t\tWorkingDirectory: {kitchen / 'sub dir' if name == 'api' else kitchen}\n" in block
    block, _ = parsed_by_systemd(files, "kitchen\\x20sink-setup.service")
    assert "\t\tEnvironment: EDGE=a \"b\" 'c' %d $x\\y\nz\n" in block
    assert (
        f"\t\tEnvironmentFile: {kitchen / 'app.env'}\n\t\tEnvironmentFile: -{kitchen / 'missing.env'}\n"
        in block
    )
    assert "SECRET" not in block  # read from its file when the service starts


def installed_version() -> int:
    done = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True)
    match = re.match(r"systemd (\d+)", done.stdout)
    return int(match.group(1)) if match else systemd.DEFAULT_VERSION


def verify(exported: base.Exported, *, user: bool = False) -> None:
    """`systemd-analyze verify` of the units: any complaint about them fails the test."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    folder = readable_folder()
    runtime = Path(tempfile.mkdtemp(prefix="stackvisor-runtime-"))
    try:
        for name, text in exported.files.items():
            (folder / name).write_text(text)
        argv = ["systemd-analyze", "verify", "--man=no", "--generators=no", *(["--user"] if user else [])]
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
        done = subprocess.run(
            [*argv, *(str(folder / name) for name in exported.files)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        shutil.rmtree(folder)
        shutil.rmtree(runtime)
    said = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not said, said


def test_systemd_analyze_verify_takes_every_kind_of_unit(kitchen: Path) -> None:
    config = stack(kitchen, kitchen_text())
    verify(export(config, systemd_version=installed_version()))
    verify(export(config, user=True, systemd_version=installed_version()), user=True)


def example_environ(folder: Path) -> dict[str, str]:
    """What the examples' comments say to set: their own users (yourself unless root,
    or where the package's user is missing) and a cluster folder."""
    environ = {**os.environ, "PGDATA": str(folder / "pgdata")}
    for variable, user in (("PG_USER", "postgres"), ("REDIS_USER", "redis")):
        try:
            pwd.getpwnam(user)
        except KeyError:
            environ[variable] = str(os.getuid())
        if os.geteuid() != 0:
            environ[variable] = str(os.getuid())
    return environ


STACKS = [
    REPO / "services.yaml",
    *sorted(Path(p) for p in glob.glob(str(REPO / "examples" / "*" / "services.yaml"))),
]


@pytest.mark.parametrize("path", STACKS, ids=[str(p.relative_to(REPO)) for p in STACKS])
def test_the_demo_and_every_example_pass_systemd_analyze_verify(path: Path, tmp_path: Path) -> None:
    config = load_config(path, example_environ(tmp_path))
    exported = export(config, systemd_version=installed_version())
    assert exported.files and all(UNIT.fullmatch(name) for name in exported.files)
    verify(exported)


# ----- a real systemd ---------------------------------------------------------------------


def systemctl(*args: str, user: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemctl", *(["--user"] if user else []), *args], capture_output=True, text=True, timeout=120
    )


def test_the_demo_stack_runs_under_systemd(tmp_path: Path) -> None:
    if not Path("/run/systemd/system").exists():
        pytest.skip("systemd does not run this machine (no /run/systemd/system): a container, probably")
    user = os.geteuid() != 0
    units = (
        Path(os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")) / "systemd" / "user"
        if user
        else Path("/run/systemd/system")
    )
    if user and systemctl("show-environment", user=True).returncode != 0:
        pytest.skip("no systemd user manager for this user")
    root = tmp_path / "demo"
    shutil.copytree(REPO / "scripts" / "demo", root / "scripts" / "demo")
    shutil.copytree(REPO / "examples" / "web", root / "examples" / "web")
    (root / ".stackvisor").mkdir()
    api, web = free_ports(2)
    text = (REPO / "services.yaml").read_text().replace("name: demo", f"name: demo-{uuid.uuid4().hex[:8]}")
    text = text.replace("port: 8600", f"port: {api}").replace("port: 8680", f"port: {web}")
    (root / "services.yaml").write_text(text.replace("command: python ", f"command: {sys.executable} "))
    exported = export(load_config(root / "services.yaml", {}), user=user, systemd_version=installed_version())
    units.mkdir(parents=True, exist_ok=True)
    target = next(name for name in exported.files if name.endswith(".target"))
    try:
        for name, content in exported.files.items():
            (units / name).write_text(content)
        assert systemctl("daemon-reload", user=user).returncode == 0
        started = systemctl("start", target, user=user)
        assert started.returncode == 0, started.stderr
        for name in exported.files:
            state = systemctl("is-active", name, user=user).stdout.strip()
            assert state == "active", (name, state, systemctl("status", name, user=user).stdout)
        with socket.create_connection(("127.0.0.1", api), timeout=5):
            pass
    finally:
        systemctl("stop", target, user=user)
        for name in exported.files:
            (units / name).unlink(missing_ok=True)
        systemctl("daemon-reload", user=user)
    assert all(systemctl("is-active", name, user=user).stdout.strip() != "active" for name in exported.files)


# ----- schedules as timers ---------------------------------------------------------------

CALENDARS = [
    ("0 2 * * *", None, "*-*-* 2:0:00"),
    ("*/15 9-17 * * mon-fri", "Europe/Berlin", "Mon..Fri *-*-* 9..17:0/15:00 Europe/Berlin"),
    ("30 4 1,15 jan,jul *", None, "*-1,7-1,15 4:30:00"),
    ("0 0 * * 0", None, "Sun *-*-* 0:0:00"),
    ("@daily", "UTC", "daily UTC"),
    ("0 0 1 * 1", None, None),  # cron: the 1st or a Monday; a calendar: both
    ("1-30/5 * * * *", None, None),  # a step over a range
]


@pytest.mark.parametrize(("cron", "zone", "expected"), CALENDARS)
def test_cron_in_systemds_calendar(cron: str, zone: str | None, expected: str | None) -> None:
    from stackvisor.export.systemd_timer import calendar

    assert calendar(cron, zone) == expected
    if expected is not None and shutil.which("systemd-analyze"):  # and systemd reads it
        done = subprocess.run(["systemd-analyze", "calendar", expected], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_a_scheduled_service_is_a_oneshot_started_by_its_timer(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          backup: {command: /bin/true, schedule: {cron: "0 2 * * *", timezone: UTC}}
          sweep: {command: /bin/true, schedule: {interval: 30m, run_on_start: true}}
          odd: {command: /bin/true, schedule: {cron: "0 0 1 * 1"}}
        """,
    )
    exported = export(config)
    stack_name = base.plan(config).name
    target = exported.files[f"{stack_name}.target"]
    assert f"Wants={stack_name}-backup.timer" in target and f"Wants={stack_name}-backup.service" not in target
    backup = exported.files[f"{stack_name}-backup.service"]
    assert "Type=oneshot" in backup and "RemainAfterExit" not in backup and "[Install]" not in backup
    timer = exported.files[f"{stack_name}-backup.timer"]
    assert "OnCalendar=*-*-* 2:0:00 UTC" in timer and f"Unit={stack_name}-backup.service" in timer
    sweep = exported.files[f"{stack_name}-sweep.timer"]
    assert "OnActiveSec=0" in sweep and "OnUnitActiveSec=1800s" in sweep
    assert any("odd: schedule: cron '0 0 1 * 1' has no systemd calendar form" in w for w in exported.warnings)
    verify(exported)


def test_a_group_of_copies_named_exports_its_copies_and_what_they_need(tmp_path: Path) -> None:
    config = stack(
        tmp_path,
        """
        services:
          db: {command: sleep 60}
          web: {command: sleep 60, replicas: 2, depends_on: [db]}
          other: {command: sleep 60}
        """,
    )
    assert base.plan(config, ["web"]).services == ("db", "web.0", "web.1")
    with pytest.raises(
        base.ExportError, match=r"unknown service webs \(the stack has: db, other, web.0, web.1\)"
    ):
        base.plan(config, ["webs"])
