"""What a service runs: its argv, working folder and environment, from its configuration.

Pure but for one check (the working folder exists): the runner spawns what this
builds. A string command runs through `/bin/sh -c`; a single simple command is
`exec`'d so the service is the direct child.
With `socket: inherit`, the spawner hands the listening socket over as fd 3 (the
systemd protocol: see `system.prelude`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from stackvisor.config.commands import shell_argv
from stackvisor.config.interpolate import interpolate
from stackvisor.config.schema import Service
from stackvisor.config.users import UserSpec, resolve_user
from stackvisor.errors import StartError


def interpolate_value(value: str | list[str], variables: dict[str, str]) -> str | list[str]:
    if isinstance(value, str):
        return interpolate(value, variables)
    return [interpolate(part, variables) for part in value]


def argv_of(value: str | list[str]) -> list[str]:
    return shell_argv(value) if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class Command:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    listener: tuple[int, str] | None = None  # a socket to hand over as fd 3, and its name
    user: UserSpec | None = None


def build_command(
    service: Service, root: Path, variables: dict[str, str], listener_fd: int | None
) -> Command:
    """The process to start for `service`, with the port variables expanded.

    `listener_fd`: a listening socket to hand over (`socket: inherit`).
    """
    argv = argv_of(interpolate_value(service.command, variables))
    where = service_context(service, root, variables)
    cwd = where.cwd
    if not os.path.isdir(cwd):  # deleted since the file was read: no retry helps
        raise StartError(f"working_dir not found: {cwd}")
    listener = (listener_fd, service.name) if listener_fd is not None else None
    return Command(argv, cwd, where.env, listener, where.user)


def service_context(service: Service, root: Path, variables: dict[str, str]) -> Command:
    """Where and how anything of `service` runs (its process, `stackvisor exec`): folder,
    environment (the process's, the service's `env`, the port variables, the user's login
    variables) and user. `argv` is left empty."""
    cwd = str(root / service.working_dir) if service.working_dir else str(root)
    env = dict(os.environ)
    env.update({k: interpolate(v, variables) for k, v in service.env.items()})
    env.update(variables)
    try:
        user = resolve_user(service.user) if service.user else None
    except ValueError as exc:  # the user database changed since the file was checked
        raise StartError(f"cannot start as {service.user!r}: {exc}") from None
    if user is not None:
        env.update({k: v for k, v in user_environment(user).items() if k not in service.env})
    return Command([], cwd, env, None, user)


def user_environment(user: UserSpec) -> dict[str, str]:
    """What a login would set for the user: HOME, USER, LOGNAME."""
    name = user.name or str(user.uid)
    return {"HOME": user.home or "/", "USER": name, "LOGNAME": name}


class HeldSocket:
    """The listening socket of a `socket: inherit` service: bound once and kept across
    restarts (connections queue meanwhile), closed when the service ends for good or
    its port moves."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    @property
    def held(self) -> bool:
        return self._sock is not None

    def port(self) -> int | None:
        return None if self._sock is None else int(self._sock.getsockname()[1])

    def fileno(self, port: int) -> int:
        """The socket listening on `port`, bound now if it is not yet."""
        if self._sock is None:
            self._sock = listening_socket(port)
        return self._sock.fileno()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def listening_socket(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:`port`: the one a `socket: inherit` service
    receives, or a proxy's public one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartError(f"cannot listen on port {port}: {exc.strerror}") from None
    return sock
