"""`stackvisor up` as a real process (signals, stop timeouts, orphans, output, exit
statuses), and what the CLI says about bad files and names."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    SLEEP,
    alive,
    child_env,
    cli,
    cli_process,
    end_stack,
    reached,
    read_pids,
    service_pid,
    supervisor_pid,
    wait_for,
    write_program,
    write_stack,
)

from stackvisor.system import procfs

pytestmark = pytest.mark.timeout(90)

PY = "python3"


def test_child_ignoring_sigterm_is_killed_after_stop_timeout(tmp_path: Path, up_process) -> None:
    write_stack(
        tmp_path,
        f"""
        services:
          stubborn:
            command: {PY} stubborn.py SIGTERM
            stop_timeout: 1s
            healthcheck: {{log: "ignoring SIGTERM"}}
        """,
    )
    sup = up_process(tmp_path)
    pid = service_pid(tmp_path, "stubborn")
    wait_for(lambda: reached(tmp_path, "stubborn", "healthy"))
    sent = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    wait_for(lambda: not alive(pid), timeout=5)
    assert time.monotonic() - sent <= 1.0 + 1.0
    assert sup.wait(10) == 0


def test_grandchildren_are_gone_after_stop_even_after_setsid(tmp_path: Path, up_process) -> None:
    pidfile = tmp_path / "pids"
    write_stack(tmp_path, f"services:\n  parent:\n    command: {PY} family.py {pidfile}\n")
    sup = up_process(tmp_path)
    kid, escaped = read_pids(pidfile)
    assert alive(kid) and alive(escaped)
    assert os.getpgid(escaped) != os.getpgid(kid)
    sup.send_signal(signal.SIGINT)
    assert sup.wait(15) == 0
    wait_for(lambda: not alive(kid) and not alive(escaped), timeout=3)


def test_what_an_exited_service_left_behind_is_ended(tmp_path: Path, up_process) -> None:
    pidfile = tmp_path / "pids"
    write_stack(
        tmp_path,
        f"services:\n  daemon:\n    command: {PY} family.py {pidfile}\n    restart: 'no'\n",
    )
    sup = up_process(tmp_path)
    _, orphan = read_pids(pidfile)  # the one that escaped into a session of its own
    parent = service_pid(tmp_path, "daemon")
    assert alive(orphan)
    os.kill(parent, signal.SIGKILL)  # the orphan is reparented to the supervisor
    wait_for(lambda: reached(tmp_path, "daemon", "exited"))
    # Not at stop only: a service's leftovers go when the service ends (ports, files).
    wait_for(lambda: not alive(orphan), timeout=3)
    assert sup.poll() is None
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(15) == 0


def test_children_die_with_a_sigkilled_supervisor(tmp_path: Path, up_process) -> None:
    write_stack(
        tmp_path,
        f"""
        services:
          a: {{command: "{SLEEP}"}}
          b: {{command: "{SLEEP}", depends_on: [a]}}
        """,
    )
    sup = up_process(tmp_path)
    pids = [service_pid(tmp_path, "a"), service_pid(tmp_path, "b")]
    sup.kill()
    sup.wait(5)
    killed = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in pids), timeout=2)
    assert time.monotonic() - killed <= 2


def test_fifty_megabytes_of_output_every_line_logged_and_supervisor_responsive(
    tmp_path: Path, up_process
) -> None:
    lines = 500_000  # 100 bytes each: 50 MB
    write_program(
        tmp_path,
        "spew.py",
        f"""
        import sys
        out = sys.stdout
        pad = "x" * 86
        for i in range({lines}):
            out.write(f"{{i:012d}} {{pad}}\\n")
        out.flush()
        """,
    )
    write_program(
        tmp_path,
        "ticker.py",
        """
        import time
        i = 0
        while True:
            print(f"tick {i}", flush=True); i += 1; time.sleep(0.05)
        """,
    )
    write_stack(
        tmp_path,
        f"""
        settings: {{log_max_bytes: 200000000}}
        services:
          spew: {{command: "{PY} spew.py", restart: "no"}}
          ticker: {{command: "{PY} ticker.py"}}
        """,
    )
    sup = up_process(tmp_path, stdout=subprocess.DEVNULL)
    wait_for(lambda: reached(tmp_path, "spew", "completed"), timeout=60)
    # Responsive while and after draining: the other service's output kept flowing.
    before = (tmp_path / "logs" / "ticker.log").read_text().count("tick")
    wait_for(lambda: (tmp_path / "logs" / "ticker.log").read_text().count("tick") > before + 3, timeout=3)
    sent = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(15) == 0
    assert time.monotonic() - sent < 5
    with open(tmp_path / "logs" / "spew.log") as fh:
        numbers = [int(line[:12]) for line in fh]
    assert numbers == list(range(lines))


def test_exit_status_is_1_when_a_service_failed(tmp_path: Path) -> None:
    write_stack(
        tmp_path,
        f"""
        services:
          broken: {{command: "{PY} -c 'raise SystemExit(1)'", max_restarts: 1, backoff: {{initial: 50ms}}}}
          fine: {{command: "{PY} -c 'print(1)'"}}
        """,
    )
    result = cli_process("up", "--exit-when-done", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "broken | " not in result.stdout  # it printed nothing
    assert "fine   | 1" in result.stdout
    assert "gave up after 1 restarts" in result.stderr


def test_exit_status_is_1_when_a_job_that_is_not_restarted_fails(tmp_path: Path) -> None:
    """`restart: "no"`: the job that exits 3 is `exited`, not `failed`; a CI stack of
    one-shot jobs must still not pass."""
    write_stack(
        tmp_path,
        f"""
        services:
          bad: {{command: "{PY} -c 'raise SystemExit(3)'", restart: "no"}}
          ok: {{command: "{PY} -c 'print(1)'", restart: "no"}}
        """,
    )
    result = cli_process("up", "--exit-when-done", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "exited with code 3" in result.stderr


def test_console_lines_are_prefixed_and_uncoloured_without_a_terminal(tmp_path: Path) -> None:
    write_stack(
        tmp_path,
        f"""
        services:
          one: {{command: "{PY} -c 'print(\\"hello from one\\")'"}}
          second: {{command: "{PY} -c 'print(\\"hello from two\\")'"}}
        """,
    )
    result = cli_process("up", "--exit-when-done", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "one    | hello from one" in result.stdout
    assert "second | hello from two" in result.stdout
    assert "\x1b[" not in result.stdout
    assert "hello from one" in (tmp_path / "logs" / "one.log").read_text()
    assert '"event": "one: completed"' in (tmp_path / "logs" / "stackvisor.log").read_text()


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("services:\n  api:\n    comand: x\n", ":3:5:", 'did you mean "command"'),
        ("services:\n  api:\n    command: x\n    restart: sometimes\n", ":4:14:", "expected one of"),
        ("services:\n  api:\n    command: [x\n", ":", "services.yaml"),
        (
            "services:\n  a:\n    command: x\n    depends_on: [b]\n"
            "  b:\n    command: x\n    depends_on: [a]\n",
            "",
            "a -> b -> a",
        ),
        ("services:\n  a:\n    command: x\n    depends_on: [nope]\n", ":4:", "nope"),
    ],
)
def test_bad_files_exit_2_with_file_line_and_column(tmp_path: Path, text: str, where: str, what: str) -> None:
    (tmp_path / "services.yaml").write_text(text)
    for command in ("validate", "up"):
        result = cli(command, cwd=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "services.yaml" + where in result.stderr
        assert what in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / ".stackvisor" / "state.db").exists()


def test_validate_prints_start_order(tmp_path: Path) -> None:
    write_stack(
        tmp_path,
        """
        services:
          web: {command: "true", depends_on: [api]}
          api: {command: "true", depends_on: [db]}
          db: {command: "true"}
        """,
    )
    result = cli("validate", cwd=tmp_path / ".")
    assert result.returncode == 0, result.stderr
    order = [line.strip().split()[0] for line in result.stdout.splitlines()[1:]]
    assert order == ["db", "api", "web"]


def test_unknown_service_on_the_command_line(tmp_path: Path) -> None:
    write_stack(tmp_path, "services:\n  api: {command: x}\n")
    result = cli("up", "apii", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown service apii" in result.stderr


def test_a_second_interrupt_kills_at_once(tmp_path: Path, up_process) -> None:
    write_stack(
        tmp_path,
        f"services:\n  stubborn:\n    command: {PY} stubborn.py SIGTERM SIGINT\n    stop_timeout: 60s\n"
        "    healthcheck: {log: ignoring}\n",
    )
    sup = up_process(tmp_path)
    pid = service_pid(tmp_path, "stubborn")
    wait_for(lambda: reached(tmp_path, "stubborn", "healthy"))
    sup.send_signal(signal.SIGINT)
    wait_for(lambda: reached(tmp_path, "stubborn", "stopping"))
    assert alive(pid)  # the first interrupt waits for the 60 s grace period
    sent = time.monotonic()
    sup.send_signal(signal.SIGINT)
    sup.wait(10)
    assert time.monotonic() - sent < 5
    wait_for(lambda: not alive(pid), timeout=2)


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
def test_ctrl_c_at_any_moment_of_the_start_stops_the_stack(tmp_path: Path, delay: float) -> None:
    """Ctrl-C while `up` is still loading, opening its state or starting its services:
    it stops, and leaves nothing (a Ctrl-C taken before the stack's own handler was in
    place was lost, and the stack ran on)."""
    write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n  b: {{command: "{SLEEP}"}}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "up"],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(delay)  # the moment is the point here, not a wait for something
        proc.send_signal(signal.SIGINT)
        # 130 once the command runs; killed by the signal itself (-2) while Python still
        # imports it, before anything started: either way no traceback and nothing left.
        assert proc.wait(30) in (0, 130, -signal.SIGINT)
        assert supervisor_pid(tmp_path) is None
        assert procfs.marked(f"{proc.pid}-", prefix=True) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        end_stack(tmp_path)


def test_exit_with_a_process_that_is_not_there_is_a_usage_error(tmp_path: Path) -> None:
    write_stack(tmp_path, f'services:\n  a: {{command: "{SLEEP}"}}\n')
    free = next(pid for pid in range(4_000_000, 3_000_000, -1) if not os.path.exists(f"/proc/{pid}"))
    result = cli_process("up", "-d", "--exit-with", str(free), cwd=tmp_path)
    assert result.returncode == 2 and f"no process {free} runs now" in result.stderr
    assert supervisor_pid(tmp_path) is None
