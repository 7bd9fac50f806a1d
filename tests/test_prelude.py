"""The shell prelude a child runs before its service: real `/bin/sh`, real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stackvisor.system.prelude import lead, prelude

# What the service sees: its fd 3, standard input, and the protocol's variables.
REPORT = textwrap.dedent("""
    import json, os, socket, stat, sys
    s = socket.socket(fileno=3)
    null = os.stat("/dev/null")
    zero = os.fstat(0)
    json.dump({
        "pid": os.getpid(),
        "listen_pid": os.environ.get("LISTEN_PID"),
        "listen_fds": os.environ.get("LISTEN_FDS"),
        "names": os.environ.get("LISTEN_FDNAMES"),
        "port": s.getsockname()[1],
        "listening": s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
        "stdin_is_null": stat.S_ISCHR(zero.st_mode) and zero.st_rdev == null.st_rdev,
        "cgroup": open("/proc/self/cgroup").read(),
    }, sys.stdout)
    s.detach()
""")


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def run(argv: list[str], stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_nothing_to_do_is_no_prefix() -> None:
    assert prelude() == ()


def test_the_socket_on_standard_input_becomes_fd_3_of_the_service(tmp_path: Path) -> None:
    name = 'web $(touch pwned) "x"'  # a name is data, never shell text
    sock = listener()
    try:
        done = run([*prelude(socket_name=name), sys.executable, "-c", REPORT], stdin=sock.fileno())
    finally:
        port = sock.getsockname()[1]
        sock.close()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["listen_pid"] == str(seen["pid"])  # the shell's pid, kept by exec
    assert seen["listen_fds"] == "1"
    assert seen["names"] == name
    assert seen["port"] == port
    assert seen["listening"] == 1
    assert seen["stdin_is_null"] is True
    assert not (Path.cwd() / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_the_service_accepts_on_the_socket_it_was_given() -> None:
    sock = listener()
    serve = "import socket; s = socket.socket(fileno=3); c, _ = s.accept(); c.sendall(b'hello'); c.close()"
    try:
        child = subprocess.Popen(
            [*prelude(socket_name="api"), sys.executable, "-c", serve], stdin=sock.fileno()
        )
        try:
            with socket.create_connection(sock.getsockname(), timeout=30) as conn:
                assert conn.recv(5) == b"hello"
            assert child.wait(timeout=30) == 0
        finally:
            child.kill()
            child.wait()
    finally:
        sock.close()


def test_a_failed_join_names_the_program_and_runs_nothing(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    sock = listener()
    try:
        for name in (None, "api"):
            argv = [*prelude(tmp_path / "missing", socket_name=name), "touch", str(ran)]
            done = run(argv, stdin=sock.fileno() if name else None)
            assert done.returncode == 125
            assert f"cannot join the cgroup {tmp_path / 'missing'}, not starting touch" in done.stderr
            assert not ran.exists()
    finally:
        sock.close()


def test_join_and_hand_over_in_one_shell(tmp_path: Path) -> None:
    """A real cgroup when this machine lets us make one; the join is what the file says."""
    from stackvisor.system import cgroups

    tracking = cgroups.probe(f"prelude-{os.getpid()}", mode="auto")
    if tracking.kind != "cgroup" or tracking.base is None:
        pytest.skip(f"cgroup v2 is not writable here: {tracking.reason}")
    folder = cgroups.service_dir(tracking.base, "web")
    sock = listener()
    try:
        done = run([*prelude(folder, socket_name="web"), sys.executable, "-c", REPORT], stdin=sock.fileno())
    finally:
        sock.close()
        cgroups.remove(folder)
        with contextlib.suppress(FileNotFoundError):  # remove() takes an emptied stack folder too
            tracking.base.rmdir()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["listen_pid"] == str(seen["pid"]) and seen["names"] == "web"
    assert seen["stdin_is_null"] is True
    assert f"{folder.name}\n" in seen["cgroup"] and "/stackvisor/" in seen["cgroup"]


# What a string command's shell sees: its arguments, $0, the socket, its pid.
SCRIPT = (
    'echo "args=$# zero=$0 pid=$$ listen=$LISTEN_PID"; '
    "exec python3 -c 'import socket; print(socket.socket(fileno=3).getsockname()[1])'"
)


def test_a_shell_command_runs_in_the_prelude_s_shell() -> None:
    argv = lead(prelude(socket_name="api"), ["/bin/sh", "-c", SCRIPT])
    assert argv[0] == "/bin/sh" and argv.count("/bin/sh") == 3  # one shell, no second exec
    sock = listener()
    try:
        done = run(argv, stdin=sock.fileno())
    finally:
        port = sock.getsockname()[1]
        sock.close()
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    fields = dict(word.split("=") for word in first.split())
    assert fields["args"] == "0" and fields["zero"] == "/bin/sh"  # as `sh -c` alone
    assert fields["listen"] == fields["pid"]  # the pid the service keeps through exec
    assert second == str(port)


def test_a_shell_command_does_not_run_when_the_join_fails(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    argv = lead(prelude(tmp_path / "missing"), ["/bin/sh", "-c", f"touch {ran}"])
    done = run(argv)
    assert done.returncode == 125
    assert f"cannot join the cgroup {tmp_path / 'missing'}, not starting /bin/sh" in done.stderr
    assert not ran.exists()


def test_other_commands_follow_the_prelude() -> None:
    shell = prelude(socket_name="api")
    assert lead(shell, ["python3", "-c", "pass"]) == [*shell, "python3", "-c", "pass"]
    assert lead(shell, ["/bin/sh", "-c", "true", "extra"]) == [*shell, "/bin/sh", "-c", "true", "extra"]
    assert lead((), ["/bin/sh", "-c", "true"]) == ["/bin/sh", "-c", "true"]
