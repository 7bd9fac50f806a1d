"""Another local user cannot steer where stackvisor writes, or what its CLI believes.

User `nobody` prepares traps in a shared folder (mode 1777, as /tmp is); root's
stackvisor must refuse them with a message, and leave the files they point at alone.
The tests run as root (as CI does) and use `runuser -u nobody`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SLEEP, Start, cli, end_stack, wait_for

from stackvisor.config import load_config
from stackvisor.control import ops, sockets
from stackvisor.control.client import Client
from stackvisor.control.sockets import StackLock
from stackvisor.errors import UnsafePath
from stackvisor.paths import StackPaths

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser"
)
NOBODY_PYTHON = "/usr/bin/python3"  # one that user nobody can run
STACK = f'services:\n  web: {{command: "{SLEEP}"}}\n'


def as_nobody(*argv: str, cwd: Path) -> None:
    subprocess.run(["runuser", "-u", "nobody", "--", *argv], cwd=cwd, check=True, timeout=30)


@pytest.fixture
def shared() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="stackvisor-shared-", dir="/tmp"))
    os.chmod(folder, 0o1777)
    (folder / "services.yaml").write_text(STACK)
    try:
        yield folder
    finally:
        end_stack(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("root's data\n")
    os.chmod(path, 0o600)
    return path


def untouched(path: Path) -> bool:
    return path.read_text() == "root's data\n"


def test_a_state_folder_of_another_user_is_refused(shared: Path, secret: Path) -> None:
    as_nobody("mkdir", ".stackvisor", cwd=shared)
    as_nobody("ln", "-s", str(secret), ".stackvisor/lock", cwd=shared)
    started = ops.detach(load_config(shared / "services.yaml"), [])
    assert not started.ok and started.code == 1
    assert ".stackvisor belongs to nobody, not to root" in started.message
    assert untouched(secret)
    assert os.stat(shared / ".stackvisor").st_uid != 0  # never chowned into shape


def test_a_logs_folder_of_another_user_is_refused(shared: Path, secret: Path) -> None:
    as_nobody("mkdir", "logs", cwd=shared)
    as_nobody("ln", "-s", str(secret), "logs/web.log", cwd=shared)
    started = ops.detach(load_config(shared / "services.yaml"), [])
    assert not started.ok and "logs belongs to nobody, not to root" in started.message
    assert untouched(secret)


def test_a_link_in_a_folder_of_ours_is_never_written_through(tmp_path: Path, secret: Path) -> None:
    (tmp_path / "services.yaml").write_text(STACK)
    paths = StackPaths.at(tmp_path)
    paths.state_dir.mkdir(mode=0o700)
    paths.lock.symlink_to(secret)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        StackLock(paths.lock).acquire()
    paths.lock.unlink()
    paths.logs.mkdir(mode=0o700)
    paths.service_log("web").symlink_to(secret)
    config = load_config(tmp_path / "services.yaml")
    try:
        started = ops.detach(config, [])
    finally:
        end_stack(tmp_path)
    assert not started.ok and started.message.endswith(
        "web.log is a symbolic link; stackvisor does not write through one"
    )
    assert untouched(secret)


def test_logs_are_private_by_default(tmp_path: Path) -> None:
    (tmp_path / "services.yaml").write_text(STACK)
    config = load_config(tmp_path / "services.yaml")
    paths = StackPaths.at(tmp_path)
    try:
        assert ops.detach(config, []).ok
        wait_for(paths.service_log("web").exists)
    finally:
        end_stack(tmp_path)
    assert paths.logs.stat().st_mode & 0o777 == 0o700
    for log in paths.logs.iterdir():
        assert log.stat().st_mode & 0o777 == 0o600, log


def test_a_socket_served_by_another_user_is_not_believed(shared: Path, start: Start) -> None:
    socket_path = shared / "control.sock"
    server = start(
        [
            "runuser", "-u", "nobody", "--", NOBODY_PYTHON, "-c",
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8);"
            " print('ready', flush=True); c, _ = s.accept();"
            " c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Type: application/json\\r\\n\\r\\n{\"pid\": 1}')",
            str(socket_path),
        ],
        stdout=subprocess.PIPE,
        own_group=True,  # runuser and the server it runs
    )  # fmt: skip
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    with pytest.raises(UnsafePath, match="is served by nobody"):
        Client(socket_path, timeout=5).get("/v1/status")


# Run as nobody in the stack's folder: a state folder with a lock file, flocked for as
# long as it runs, naming the pid of argv[1] as if it were the supervisor.
PLANT = """
import fcntl, os, sys, time
os.mkdir(".stackvisor", 0o755)
fd = os.open(".stackvisor/lock", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, sys.argv[1].encode() + b"\\n")
print("ready", flush=True)
time.sleep(300)
"""


def test_a_lock_planted_by_another_user_never_names_a_process_to_stop(shared: Path, start: Start) -> None:
    """`down` believes only a lock of its own user: a planted one that names a process of
    root's (with "stackvisor" in its command line, as a supervisor has) gets it no signal."""
    victim = start([sys.executable, "-c", "import time; time.sleep(300)", "my-stackvisor-notes"])
    planter = start(
        ["runuser", "-u", "nobody", "--", NOBODY_PYTHON, "-c", PLANT, str(victim.pid)],
        cwd=shared,
        stdout=subprocess.PIPE,
        own_group=True,
    )
    assert planter.stdout is not None and planter.stdout.readline().strip() == "ready"
    config = load_config(shared / "services.yaml")
    assert ops.supervisor_pid(config) is None
    down = cli("down", "--timeout", "2s", cwd=shared)
    assert victim.poll() is None, "root's process was signalled"
    assert down.returncode == 1 and ".stackvisor belongs to nobody, not to root" in down.stderr
    assert "Traceback" not in down.stderr


def test_a_logs_folder_outside_the_stack_keeps_its_mode(tmp_path: Path) -> None:
    """`logs_dir: /tmp` must not make /tmp private: a folder the stack does not own by
    place keeps its mode (its files are still 0600); its own `logs/` is made private."""
    shared, stack = tmp_path / "shared", tmp_path / "stack"
    shared.mkdir()
    shared.chmod(0o1777)
    stack.mkdir()
    (stack / "services.yaml").write_text(f"settings: {{logs_dir: {shared}}}\n{STACK}")
    try:
        assert ops.detach(load_config(stack / "services.yaml"), []).ok
        wait_for((shared / "web.log").exists)
    finally:
        end_stack(stack)
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert (shared / "web.log").stat().st_mode & 0o777 == 0o600


CHATTY = """
settings: {log_max_bytes: 1024, log_backups: 2}
services:
  chatty:
    command: [python3, -c, "import time\\nwhile True: print('x' * 99, flush=True); time.sleep(0.01)"]
"""


def test_a_logs_folder_swapped_for_a_link_while_running_is_not_written_through(shared: Path) -> None:
    """Root runs a stack in a folder that `nobody` owns. While it runs, nobody moves the
    logs folder away and puts a link to a folder of root's in its place: the logs (and
    their rotations) go on into the folder that was moved, never through the link."""
    as_nobody("mkdir", "mine", cwd=shared)
    stack = shared / "mine"
    as_nobody("sh", "-c", f"cat > services.yaml <<'EOF'\n{CHATTY}\nEOF", cwd=stack)
    victim = shared / "victim"
    victim.mkdir(mode=0o700)
    try:
        assert ops.detach(load_config(stack / "services.yaml"), []).ok
        wait_for((stack / "logs" / "chatty.log.2").exists)
        as_nobody("sh", "-c", f"mv logs logs.old && ln -s {victim} logs", cwd=stack)
        moved = stack / "logs.old" / "chatty.log.2"
        moved.unlink()  # made again by the next rotations: into the folder that was moved
        wait_for(moved.exists, timeout=15)
        assert list(victim.iterdir()) == []
    finally:
        end_stack(stack)


# Run as nobody: bind the abstract name of a stack's lock (anyone can: such names have
# no permissions) and hold it.
SQUAT = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(b"\\0" + sys.argv[1].encode())
s.listen(8)
print("ready", flush=True)
time.sleep(300)
"""


def test_a_lock_name_taken_by_another_user_does_not_keep_the_stack_down(shared: Path, start: Start) -> None:
    """Another user who binds the lock's (predictable) abstract name first gets no hold on
    the stack: its supervisor takes a name of its own user's secret instead, and is as
    much one-per-stack with it."""
    config = load_config(shared / "services.yaml")
    name = StackLock(StackPaths.at(shared).lock).name
    squatter = start(
        ["runuser", "-u", "nobody", "--", NOBODY_PYTHON, "-c", SQUAT, name.lstrip("\0")],
        stdout=subprocess.PIPE,
        own_group=True,
    )
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "ready"
    first = ops.detach(config, [])
    assert first.ok, first.message
    assert ops.supervisor_pid(config) == first.pid
    assert cli("status", cwd=shared).returncode == 0
    second = ops.detach(config, [])
    assert not second.ok and second.pid == first.pid
    # The squatter leaves: the name it held is free, and still nobody gets in beside us.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(squatter.pid, signal.SIGKILL)  # runuser and the python it runs
    squatter.wait()
    wait_for(lambda: sockets._ask(name)[0] == "free")
    third = ops.detach(config, [])
    assert not third.ok and third.pid == first.pid
    down = cli("down", cwd=shared)
    assert down.returncode == 0 and "stopped" in down.stderr
