"""Folders and files stackvisor writes, made so that another local user cannot steer them.

A folder of ours (the state folder, the logs folder) must be a real folder, owned by
the user stackvisor runs as; one of ours is given its mode, and one that is not ours
is refused with a message saying why — never chowned or chmodded into shape. Inside
a folder of ours nobody else can plant a link, and every file is opened with
`O_NOFOLLOW` besides, so a link planted before we checked is refused, not followed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path

from stackvisor.errors import UnsafePath

NOFOLLOW_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def secure_dir(path: Path, mode: int, *, adopt: bool = True) -> None:
    """Make sure `path` is a folder of ours, creating it (and its parents) with `mode`.

    An existing folder is given `mode` only when it is one of ours by name (`adopt`: the
    state folder). Any other (a logs folder or registry folder the file or the
    environment names, which may be /tmp or a home) keeps its mode, and is refused when
    others may write into it without the sticky bit (they could swap our files)."""
    if not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
            os.mkdir(path, mode)
    info = own_dir(path)
    assert info is not None
    current = stat.S_IMODE(info.st_mode)
    if adopt:
        if current != mode:
            os.chmod(path, mode, follow_symlinks=False)
    elif current & 0o022 and not current & stat.S_ISVTX:
        raise UnsafePath(
            f"{path} may be written by others (mode {current:o}) and is not sticky: another user "
            "could replace stackvisor's files in it (chmod go-w it, or choose a folder of your own)"
        )


def own_dir(path: Path) -> os.stat_result | None:
    """`path` as a folder of ours (None when there is none): a link in its place, or
    another user's folder, is refused with a message (never chowned into shape)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    me = os.geteuid()
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(f"{path} is a symbolic link; stackvisor writes only into a real folder of its own")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is not a folder")
    if info.st_uid != me:
        raise UnsafePath(
            f"{path} belongs to {_user(info.st_uid)}, not to {_user(me)}: stackvisor will not write into "
            "another user's folder (remove it, or run as its owner)"
        )
    return info


class Folder:
    """A folder of ours held open: its files are opened and renamed through the
    descriptor, so a folder moved away while we run (and a link put in its place, in a
    parent folder somebody else owns) is still the one written, never the link's target."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def open(self) -> None:
        """Hold it (after `secure_dir` made sure it is ours). Idempotent."""
        if self.fd is not None:
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if os.fstat(fd).st_uid != os.geteuid():
            os.close(fd)
            raise UnsafePath(f"{self.path} changed owner; stackvisor writes only into a folder of its own")
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def moved(self) -> bool:
        """The folder held is no longer at its path (deleted, or moved away)."""
        if self.fd is None:
            return False
        held = os.fstat(self.fd)
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            return True
        return (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino)

    def read(self, name: str) -> bytes:
        """The whole of file `name` in the folder, never through a link."""
        where = self.fd
        fd = os.open(
            name if where is not None else self.path / name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=where,
        )
        with os.fdopen(fd, "rb") as fh:
            return fh.read()

    def replace(self, name: str, new_name: str) -> None:
        """Rename `name` to `new_name` inside the folder (FileNotFoundError: none)."""
        if self.fd is None:
            os.replace(self.path / name, self.path / new_name)
        else:
            os.replace(name, new_name, src_dir_fd=self.fd, dst_dir_fd=self.fd)


def open_append(path: Path, mode: int, folder: Folder | None = None) -> int:
    """A file descriptor appending to `path` (created with `mode`), never through a link;
    with `folder` (held open), `path`'s name in that folder."""
    where = folder.fd if folder is not None else None
    try:
        fd = os.open(path.name if where is not None else path, NOFOLLOW_APPEND, mode, dir_fd=where)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafePath(f"{path} is a symbolic link; stackvisor does not write through one") from None
        raise exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file of {_user(os.geteuid())}'s; refusing to write to it")
    if stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)
    return fd


def dir_mode(file_mode: int) -> int:
    """The folder mode that goes with a file mode: whoever may read may also enter."""
    return file_mode | 0o700 | ((file_mode & 0o044) >> 2)
