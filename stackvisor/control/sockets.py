"""The one-supervisor-per-stack lock, and binding and reaching unix sockets safely.

Unix socket paths are limited to 107 bytes; a stack deep in a temporary folder can
exceed that, so binding and connecting go through `/proc/self/fd/N/<name>` of an
open directory when the path is too long.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import pwd
import secrets
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

from stackvisor.errors import AlreadyRunning, UnsafePath
from stackvisor.ports.fdwalk import SocketSightings, socket_holders
from stackvisor.system.files import secure_dir

_MAX_PATH = 100
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """A path to `path` short enough for AF_UNIX, valid inside the `with`."""
    text = str(path)
    if len(text.encode()) <= _MAX_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind_unix(path: Path) -> socket.socket:
    """A listening unix socket that is mode 0600 from the moment it exists.

    A folder we create for it is 0700; an existing one is left as its owner made it.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        with reachable(path) as where:
            sock.bind(where)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def connect_unix(path: Path, timeout: float = 5.0) -> socket.socket:
    """A connection to the socket at `path`, only if a process of our own user serves it:
    another user who replaced the socket gets no question and gives no answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with reachable(path) as where:
            sock.connect(where)
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid != os.geteuid():
            raise UnsafePath(
                f"{path} is served by {_user(uid)} (pid {pid}), not by {_user(os.geteuid())}: "
                "not a supervisor of yours; refusing to talk to it"
            )
    except BaseException:
        sock.close()
        raise
    return sock


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def lock_key(*, create: bool) -> str:
    """This user's secret for lock names (`$XDG_STATE_HOME/stackvisor/lock-key`, 0600 in
    a 0700 folder); "" when there is none and `create` is False, or it cannot be made."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    path = Path(state) / "stackvisor" / "lock-key"
    try:
        if create and not os.path.lexists(path):
            secure_dir(path.parent, 0o700)
            made = path.with_name(f"lock-key.{os.getpid()}")
            fd = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(16))
            with contextlib.suppress(FileExistsError):  # another process made it first: theirs stands
                os.link(made, path)
            os.unlink(made)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, UnsafePath):
        return ""
    with os.fdopen(fd) as fh:
        if os.fstat(fh.fileno()).st_uid != os.geteuid():
            return ""
        return fh.read().strip()


_ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's flags: a listening socket


def _bound(name: str) -> socket.socket | None:
    """A listening socket bound to the abstract `name`; None when it is taken."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    sock.listen(16)  # at once: whoever asks from now on finds it held
    return sock


def _ask(name: str) -> tuple[str, str | int]:
    """Who holds the abstract `name`: ("free", ""), ("ours", pid), ("theirs", "nobody's
    pid N"), or ("busy", -1) when it is held but its backlog is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    try:
        sock.connect(name)
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (ConnectionRefusedError, FileNotFoundError):
        return "free", ""
    except OSError:
        return "busy", -1
    finally:
        sock.close()
    if uid != os.geteuid():
        return "theirs", f"{_user(uid)}'s pid {pid}"
    return "ours", int(pid)


def _bound_by(name: str, hint: int | None) -> int | None:
    """The process of our user that listens on the abstract `name`, as the kernel shows
    it (/proc/net/unix, then whose fd it is); `hint`, a pid to look at first."""
    path = "@" + name[1:]
    try:
        with open("/proc/net/unix", "rb") as table:
            lines = table.read().decode("utf-8", "surrogateescape").splitlines()[1:]
    except OSError:
        return None
    inodes = [
        int(fields[6])
        for fields in (line.split(None, 7) for line in lines)
        if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & _ACCEPTING
    ]
    me = os.geteuid()
    found = socket_holders(dict.fromkeys(inodes, me), [hint] if hint and hint > 0 else [], SocketSightings())
    for pid in found.values():
        try:
            if os.stat(f"/proc/{pid}").st_uid == me:
                return pid
        except OSError:
            continue
    return None


class StackLock:
    """One supervisor per stack, held for as long as its process lives.

    The authority is an abstract unix socket named after the stack's folder: the kernel
    frees the name when the process dies, and no file operation can remove it, so
    deleting `.stackvisor/` (`git clean -fdx`) cannot let a second supervisor in. Who
    holds it is asked by connecting (`SO_PEERCRED` gives the pid). Abstract names have
    no permissions: when another user has bound ours first, the supervisor binds a
    second name, keyed by its user's secret (`lock_key`); each holder of one name
    checks the other after binding, so two of ours never both hold the stack.
    `.stackvisor/lock` is also flocked and holds the pid, for people and older tools.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.socket: socket.socket | None = None
        self.root = os.path.realpath(path.parent.parent)
        self.name = self._name("")

    def _name(self, key: str) -> str:
        digest = hashlib.sha256((key + self.root).encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"\0stackvisor-lock/{os.geteuid()}/{digest}"

    def _secret_name(self, *, create: bool) -> str | None:
        """The name to use when another user has bound ours first (abstract names have
        no permissions, and ours is predictable): keyed by a secret of our user's, which
        nobody else can read. None: there is no key (and `create` is False)."""
        key = lock_key(create=create)
        return self._name(key) if key else None

    def acquire(self) -> None:
        secure_dir(self.path.parent, 0o700)
        sock = _bound(self.name)
        if sock is None:
            if _ask(self.name)[0] != "theirs":
                raise AlreadyRunning(self.holder())
            secret = self._secret_name(create=True)
            if secret is None:
                raise UnsafePath(f"the lock of {self.root} is taken by {_ask(self.name)[1]}")
            sock = _bound(secret)
            if sock is None:
                raise AlreadyRunning(self.holder())
            if _ask(self.name)[0] in ("ours", "busy"):  # the squatter left, and one of ours came
                sock.close()
                raise AlreadyRunning(self.holder())
        else:
            secret = self._secret_name(create=False)
            if secret is not None and _ask(secret)[0] in ("ours", "busy"):  # one of ours, on the secret name
                sock.close()
                raise AlreadyRunning(self.holder())
        sock.setblocking(False)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            sock.close()
            if os.path.islink(self.path):
                raise UnsafePath(
                    f"{self.path} is a symbolic link; stackvisor does not write through one"
                ) from None
            raise exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            sock.close()
            raise AlreadyRunning(self.holder()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        self.socket = sock

    def rewrite_file(self) -> None:
        """The lock file was deleted: a new one, flocked, with our pid (the lock itself,
        the abstract socket, was never lost)."""
        secure_dir(self.path.parent, 0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd

    def drain(self) -> None:
        """Accept and close the questions of `holder()` (so they never fill the backlog)."""
        if self.socket is None:
            return
        while True:
            try:
                conn, _ = self.socket.accept()
            except (BlockingIOError, OSError):
                return
            conn.close()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def holder(self) -> int | None:
        """The pid of the supervisor holding the lock, or None when nobody does (-1: held,
        but not telling by whom: its backlog is full, and no process of ours is seen
        bound to it)."""
        busy = False
        for name in (self.name, self._secret_name(create=False)):
            if name is None:
                continue
            kind, who = _ask(name)
            if kind == "ours":
                return int(who)
            if kind == "busy":  # a stuck or exiting holder drains its questions no more
                pid = _bound_by(name, self._file_holder())
                if pid is not None:
                    return pid
                busy = True  # or somebody else's holds it: ours may be on the other name
        return -1 if busy else self._file_holder()

    def _file_holder(self) -> int | None:
        """The pid in a flocked lock file, believed only from a file of our own user in a
        folder of ours: anyone else's (planted in a stack folder they own) names nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None  # no lock file, or a link in its place: no supervisor of ours
        try:
            me, info = os.geteuid(), os.fstat(fd)
            try:
                folder = os.lstat(self.path.parent)
            except OSError:
                return None
            if info.st_uid != me or folder.st_uid != me or not stat.S_ISREG(info.st_mode):
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 32, 0).decode().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
