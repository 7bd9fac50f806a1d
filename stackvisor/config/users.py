"""`user: NAME[:GROUP]` of a service: who that is, and whether this supervisor may be them.

Names or numeric ids, as Compose and `setpriv` take them. Reading the user database is
the only thing done here; changing to the user happens when the child is spawned.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UserSpec:
    uid: int
    gid: int
    name: str | None  # None: an id with no entry in the user database
    home: str | None
    groups: tuple[int, ...]  # supplementary groups (the user's, as initgroups sets them)


def resolve_user(spec: str) -> UserSpec:
    """`postgres`, `postgres:postgres`, `999`, `999:999` -> the ids to run as; ValueError
    when the user or the group does not exist."""
    user_part, _, group_part = spec.strip().partition(":")
    if not user_part:
        raise ValueError(f"expected NAME or NAME:GROUP (names or ids) (got {spec!r})")
    entry: pwd.struct_passwd | None
    try:
        entry = pwd.getpwuid(int(user_part)) if user_part.isdigit() else pwd.getpwnam(user_part)
    except KeyError:
        if not user_part.isdigit():
            raise ValueError(f"no such user: {user_part}") from None
        entry = None
    uid = entry.pw_uid if entry else int(user_part)
    gid = entry.pw_gid if entry else uid
    if group_part:
        try:
            gid = int(group_part) if group_part.isdigit() else grp.getgrnam(group_part).gr_gid
        except KeyError:
            raise ValueError(f"no such group: {group_part}") from None
    name = entry.pw_name if entry else None
    groups = tuple(os.getgrouplist(name, gid)) if name else (gid,)
    return UserSpec(uid, gid, name, entry.pw_dir if entry else None, groups)


def may_become(user: UserSpec, euid: int) -> bool:
    """Only root changes user; anybody may 'become' themselves."""
    return euid in (0, user.uid)


def may_search(mode: int, owner: int, group: int, user: UserSpec) -> bool:
    """Whether `user` may pass through a folder with this mode and ownership (its x bit
    for the user, a group of theirs, or others; root always may)."""
    if user.uid == 0:
        return True
    if owner == user.uid:
        return bool(mode & stat.S_IXUSR)
    if group == user.gid or group in user.groups:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def blocked_at(folder: Path, user: UserSpec) -> Path | None:
    """The first folder on the way to `folder` (itself included) that `user` may not
    enter, None when they reach it. Mode bits only: ACLs and capabilities are not read."""
    folder = folder.resolve()
    for step in (*reversed(folder.parents), folder):
        info = step.stat()
        if not may_search(info.st_mode, info.st_uid, info.st_gid, user):
            return step
    return None
