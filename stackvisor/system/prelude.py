"""The way from the spawner to a service's program, where the child is not born in its
cgroup (`cgspawn`): `setpriv` for PDEATHSIG, and the few shell lines a child runs
before it execs its service (join the service's cgroup, take over a listening socket),
and the program found as exec would. The shell lines are pure: this builds argv, the
spawner runs it.

One `/bin/sh` does both, about 1.3 ms; the socket hand-over used to be a Python
interpreter (10 ms, paid by every first connection of an on-demand service).

- Joining a cgroup: the shell writes its own pid (`$$`, not "0": the kernel reads "0" as
  "the writing process", which is the shell only while `echo` is a builtin) into
  `cgroup.procs`, so the command and its first fork start inside. A failed join ends
  the child with 125 (a launcher's own failure, as for `env`) and a message rather than
  letting it run untracked.
- Taking over a socket (the systemd protocol, `socket: inherit`): the spawner gives the
  listening socket as standard input; the shell moves it to fd 3 (dash knows fds 0-9
  only, so it could not have taken it from wherever the supervisor keeps it), puts
  /dev/null back on standard input and sets `LISTEN_PID` to its own pid, which `exec`
  hands on to the service with the socket.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
from pathlib import Path

SHELL = "/bin/sh"
NAME = "stackvisor"  # the shell's $0: what `ps` shows for the moment it runs


def _join(program_arg: int) -> str:
    return (
        'echo $$ >"$1" || { echo "stackvisor: cannot join the cgroup ${1%/cgroup.procs},'
        f' not starting ${program_arg}" >&2; exit 125; }}; shift; '
    )


_HAND_OVER = (
    "exec 3<&0 </dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=$1; "
    "export LISTEN_PID LISTEN_FDS LISTEN_FDNAMES; shift; "
)


_EXEC = 'exec "$@"'


def prelude(cgroup: Path | None = None, socket_name: str | None = None) -> tuple[str, ...]:
    """The argv prefix that joins `cgroup` (its folder) and takes over the socket on
    standard input, named `socket_name` (`LISTEN_FDNAMES`), then execs what follows.
    Empty when there is nothing to do."""
    if cgroup is None and socket_name is None:
        return ()
    script, args = "", []
    if cgroup is not None:
        # The program follows the procs file, and the socket's name when there is one.
        script += _join(3 if socket_name is not None else 2)
        args.append(str(cgroup / "cgroup.procs"))
    if socket_name is not None:
        script += _HAND_OVER
        args.append(socket_name)
    return (SHELL, "-c", script + _EXEC, NAME, *args)


def lead(prefix: tuple[str, ...], argv: list[str]) -> list[str]:
    """`argv` led by `prefix` (a `prelude`). When `argv` is itself a shell script
    (`/bin/sh -c SCRIPT`, what a string command is), one shell runs both: the prelude's
    lines, then the script with no arguments left and the shell's path as `$0`, as
    `sh -c` would have run it alone. One exec fewer: 1.3 ms of a first connection."""
    if not prefix or len(argv) != 3 or argv[:2] != [SHELL, "-c"]:
        return [*prefix, *argv]
    lines = prefix[2].removesuffix(_EXEC)
    # The shell's path stands where the program would: a failed join names it.
    return [SHELL, "-c", f"{lines}shift; {argv[2]}", SHELL, *prefix[4:], SHELL]


def resolve_program(name: str, cwd: str | None, path: str) -> str:
    """The file `execvp(name)` would run from `cwd`, or FileNotFoundError / PermissionError."""
    base = cwd or os.getcwd()
    if "/" in name:
        candidates = [os.path.join(base, name)]
    else:
        candidates = [os.path.join(base, entry or ".", name) for entry in path.split(os.pathsep)]
    denied = None
    for candidate in candidates:
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return os.path.normpath(candidate)
            denied = candidate
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


@functools.cache
def pdeathsig_launcher() -> tuple[str, ...]:
    """setpriv's argv prefix that sets PDEATHSIG, when this setpriv knows the option
    (util-linux 2.33 and later). Its own help text, compiled into the program, says so:
    reading the file costs a fraction of a millisecond, running `setpriv --help` ten,
    paid by the first service to start (maybe on its first connection)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:
        with open(setpriv, "rb") as fh:
            knows = b"--pdeathsig" in fh.read(16 << 20)
    except OSError:
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if knows else ()
