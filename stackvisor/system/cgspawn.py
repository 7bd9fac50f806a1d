"""Children born in their cgroup: a helper process that starts each service with
`clone3(CLONE_INTO_CGROUP)`, so the service is inside its cgroup from its first
instruction and nothing has to move it there.

Why: moving a process into a cgroup (a write to `cgroup.procs`, what the prelude's
shell does) takes the kernel's lock for moves between cgroups, and the first taking
after a quiet while waits for an RCU grace period: 5 to 15 ms measured here, paid by
the first request to an idle on-demand service. A process created inside its cgroup
takes no such lock. The same child needs no `setpriv` and no shell either: it sets its
own PDEATHSIG, user and socket, and execs the service directly.

Why a helper: glibc has no wrapper for this before 2.41 (`posix_spawnattr_setcgroup_np`)
and Python none at all. After a raw clone3 (without CLONE_VM) the child runs Python code
until it execs, which is safe only in a process with one thread; the supervisor has
several. The helper is that process: started once per stack from the supervisor's main
thread (PDEATHSIG follows the thread that created the parent), it receives each request
over a socket pair (the fds by SCM_RIGHTS) and creates the child with CLONE_PARENT, so
the service is the supervisor's own child (its exit is waited for as any other's), and
answers with its pid. Where the kernel refuses (before 5.7, or a seccomp filter), the
first answer says so and the supervisor goes back to `setpriv` and the prelude.

This file is also the helper's program (`python -I -S cgspawn.py`): it imports only
the standard library.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the helper runs with the standard library only
    from stackvisor.config.users import UserSpec

SYS_CLONE3 = 435  # the same number on every architecture
CLONE_PARENT = 0x00008000
CLONE_INTO_CGROUP = 0x200000000
PR_SET_PDEATHSIG = 1
_ARGS = struct.Struct("=11Q")  # struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2)
_MAX_REQUEST = 1 << 20  # argv and environment of one child
_ANSWER_WAIT = 30.0  # a helper this slow is stuck: the prelude's way from then on
_FDS = 4  # standard input, output, cgroup folder, listening socket
# What a kernel or a seccomp filter answers when it cannot create into a cgroup.
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM, errno.EOPNOTSUPP}
_STARTED = 125  # a failure before the service's program ran (as `env` and the prelude exit)
_BAD = errno.EMSGSIZE  # a request the helper could not read (too large, or malformed)


class Unsupported(Exception):
    """The helper cannot start this child (`lasting`: nor any other, it is gone or the
    kernel refuses): take the prelude's way."""

    def __init__(self, why: str, *, lasting: bool = True) -> None:
        super().__init__(why)
        self.lasting = lasting


# ----- the supervisor's side -----------------------------------------------------------------


class CgroupSpawner:
    """The supervisor's end of the helper."""

    def __init__(self, sock: socket.socket, helper: subprocess.Popen[bytes]) -> None:
        self._sock = sock
        self.helper = helper
        # Requests sent and not answered, oldest first (the helper answers in order), so
        # that many starts at once do not wait for each other's round trip: while any is
        # here, a child may exist whose pid we do not know yet.
        self.pending: collections.deque[asyncio.Future[dict[str, int]]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None
        # SIGKILLs a child whose spawn was cancelled before its pid was known (the spawner
        # sets it: every signal goes through its gate).
        self.abandoned: Callable[[int], object] = lambda pid: None

    @classmethod
    def start(cls) -> CgroupSpawner | None:
        """The helper, started now; None where it cannot be (not the main thread, whose
        end PDEATHSIG would take for ours; no interpreter to run it)."""
        if threading.current_thread() is not threading.main_thread() or not sys.executable:
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            helper = subprocess.Popen(
                [sys.executable, "-I", "-S", __file__, str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a terminal's Ctrl-C is the supervisor's to handle
            )
        except OSError:
            ours.close()
            return None
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(ours, helper)

    async def spawn(
        self,
        path: str,
        argv: list[str],
        env: dict[str, str],
        cgroup: Path,
        cwd: str | None = None,
        listener: tuple[int, str] | None = None,
        user: UserSpec | None = None,
    ) -> tuple[int, int]:
        """Start `path` (found already) in its own session inside `cgroup`, with the
        listening socket as fd 3 (LISTEN_FDS) when given, as `user` when given:
        (its pid, the read end of its output and errors, non-blocking). A failure in
        the child before the program runs exits it with 125 (126/127 from exec) and a
        line of output. Raises `Unsupported` when the helper cannot do it at all (or
        not this request: larger than a socket buffer). The event loop runs on while the
        helper works (a millisecond), and other requests may be sent meanwhile."""
        _check_folder(cwd)
        request = {
            "path": path,
            "argv": argv,
            "env": env,
            "cwd": cwd,
            "listen": listener[1] if listener else None,
            "user": [user.uid, user.gid, list(user.groups)] if user else None,
        }
        data = json.dumps(request).encode("utf-8", "surrogateescape")
        if len(data) > _MAX_REQUEST:
            raise Unsupported("a request this large", lasting=False)
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        asking = asyncio.ensure_future(self._ask(data, write_fd, cgroup, listener))
        try:
            said = await asyncio.shield(asking)
        except asyncio.CancelledError:
            # The child is born all the same: it goes once the helper names it.
            asking.add_done_callback(functools.partial(self._unwanted, read_fd))
            raise
        except BaseException:
            os.close(read_fd)
            raise
        if "pid" in said:
            return int(said["pid"]), read_fd
        os.close(read_fd)
        code = int(said["errno"])
        if code in _UNSUPPORTED:
            self.close()
            raise Unsupported(f"clone3 into a cgroup: {os.strerror(code)}")
        raise OSError(code, os.strerror(code))

    async def _ask(
        self, data: bytes, write_fd: int, cgroup: Path, listener: tuple[int, str] | None
    ) -> dict[str, int]:
        """One request and the helper's answer ({"pid": n} or {"errno": n})."""
        try:
            dirfd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            os.close(write_fd)
            raise
        try:
            fds = array.array("i", [write_fd, dirfd] + ([listener[0]] if listener else []))
            self._sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except BlockingIOError:  # larger than the socket's buffer, or a backlog that large
            raise Unsupported("a request this large", lasting=False) from None
        except OSError as exc:  # gone
            self.close()
            raise Unsupported(f"the helper does not answer ({exc})") from None
        finally:
            os.close(dirfd)
            os.close(write_fd)
        answer = asyncio.get_running_loop().create_future()
        self.pending.append(answer)  # in the order sent: no await since sendmsg
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())
        try:
            return await asyncio.wait_for(asyncio.shield(answer), _ANSWER_WAIT)
        except TimeoutError:
            self.close()
            raise Unsupported("the helper does not answer") from None

    async def _read(self) -> None:
        """Answers to the requests in `pending`, in order, until none is left."""
        loop = asyncio.get_running_loop()
        while self.pending:
            try:
                data = await loop.sock_recv(self._sock, 256)
            except OSError:
                data = b""
            said = json.loads(data) if data else {"errno": errno.ENOSYS}  # nothing: it is gone
            for answer in [self.pending.popleft()] if data else list(self.pending):
                if not answer.done():
                    answer.set_result(said)
            if not data:
                self.pending.clear()
                return

    def _unwanted(self, read_fd: int, asking: asyncio.Future[dict[str, int]]) -> None:
        """A spawn cancelled while the helper worked: its child, if born, is killed, and
        reaped as it ends (it is ours, and nobody else waits for it)."""
        os.close(read_fd)
        if asking.cancelled() or asking.exception() is not None or "pid" not in asking.result():
            return
        pid = asking.result()["pid"]
        self.abandoned(pid)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # reaped already
        loop = asyncio.get_running_loop()

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

        loop.add_reader(pidfd, reap)

    def close(self) -> None:
        """End the helper (it leaves when its socket closes) and wait for it. Requests
        still waiting are told it is gone."""
        # The reader's registration goes first, now: a later removal could hit another
        # socket that gets the same number.
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._sock)
        if self._reader is not None:
            self._reader.cancel()
        for answer in self.pending:
            if not answer.done():
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    answer.set_result({"errno": errno.ENOSYS})
        self.pending.clear()
        self._sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.helper.wait(timeout=5)
        if self.helper.returncode is None:
            self.helper.kill()
            self.helper.wait()


def _check_folder(cwd: str | None) -> None:
    """A missing working folder is the spawn's error, as Popen says it (one stat)."""
    if cwd is not None and not os.path.isdir(cwd):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cwd)


# ----- the helper ----------------------------------------------------------------------------


def _pack(cgroup_fd: int) -> ctypes.Array[ctypes.c_char]:
    """struct clone_args: the child's parent is ours (its exit signal is ours too, so 0)."""
    flags = CLONE_PARENT | CLONE_INTO_CGROUP
    return ctypes.create_string_buffer(_ARGS.pack(flags, 0, 0, 0, 0, 0, 0, 0, 0, 0, cgroup_fd), _ARGS.size)


def _become(request: dict[str, Any], fds: list[int], parent: int, libc: ctypes.CDLL) -> None:
    """In the new child: its session, fds, folder, user and PDEATHSIG, then its program.
    Never returns."""
    step = "set up"
    try:
        os.setsid()
        # Out of the way of 0-3 first: a received fd may have any of those numbers.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(high[0], 1)
        os.dup2(high[0], 2)
        env = request["env"]
        if request["listen"] is not None:  # the systemd protocol, fd 3
            os.dup2(high[2], 3)
            env = {
                **env,
                "LISTEN_PID": str(os.getpid()),
                "LISTEN_FDS": "1",
                "LISTEN_FDNAMES": request["listen"],
            }
        for sig in signal.valid_signals():  # what Python ignores (SIGPIPE), the program must not
            with contextlib.suppress(OSError, ValueError):
                if signal.getsignal(sig) is signal.SIG_IGN:
                    signal.signal(sig, signal.SIG_DFL)
        if request["cwd"] is not None:
            step = f"enter {request['cwd']}"
            os.chdir(request["cwd"])
        if request["user"] is not None:
            step = "change user"
            uid, gid, groups = request["user"]
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        # After the change of user, which clears it; then whether the supervisor is
        # still there to be followed.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(_STARTED)
        step = "run"
        os.execve(request["path"], request["argv"], env)
    except OSError as exc:
        code = 127 if step == "run" and exc.errno == errno.ENOENT else 126 if step == "run" else _STARTED
        with contextlib.suppress(OSError):
            os.write(2, f"stackvisor: {request['path']}: cannot {step}: {exc.strerror}\n".encode())
        os._exit(code)
    finally:
        os._exit(_STARTED)


def _serve(sock: socket.socket) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        return
    # SIGINT keeps Python's handler: a terminal's Ctrl-C does not reach our session, and a
    # child told to stop before it runs its program must not have it ignored (postgres
    # stops on SIGINT): it ends (KeyboardInterrupt, then `_become`'s exit).
    room = socket.CMSG_SPACE(_FDS * array.array("i").itemsize)
    while True:
        data, ancillary, flags, _ = sock.recvmsg(_MAX_REQUEST, room, socket.MSG_CMSG_CLOEXEC)
        if not data:
            return  # the supervisor closed its end, or is gone
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ValueError("truncated")
            request = json.loads(data.decode("utf-8", "surrogateescape"))
            output, cgroup, *listener = fds
            args = _pack(cgroup)
            pid = libc.syscall(SYS_CLONE3, args, ctypes.c_size_t(_ARGS.size))
            if pid == 0:
                _become(request, [output, cgroup, *listener], parent, libc)
            answer = {"pid": pid} if pid > 0 else {"errno": ctypes.get_errno()}
        except (ValueError, KeyError, TypeError):
            answer = {"errno": _BAD}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(answer).encode())


if __name__ == "__main__":
    os.set_inheritable(int(sys.argv[1]), False)  # passed to us, not to the services
    _serve(socket.socket(fileno=int(sys.argv[1])))
