"""Starting one process of a service: its command, its marker, what it starts against,
and its record in the ledger.

The runner decides when (see `service`); this module does the start itself, so that
what a start involves reads in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from stackvisor.config.schema import Service
from stackvisor.config.users import UserSpec
from stackvisor.errors import StartError
from stackvisor.runtime.command import build_command
from stackvisor.runtime.context import RunnerContext
from stackvisor.runtime.freshness import Basis, basis_of
from stackvisor.runtime.process import Child


@dataclass(frozen=True)
class Launched:
    child: Child
    user: UserSpec | None  # who it runs as
    basis: Basis
    row: int  # its row in the ledger, to record its exit


async def launch(
    ctx: RunnerContext, service: Service, port: int | None, listener_fd: int | None, run: int
) -> Launched:
    """Start run number `run` of `service` on `port` (`listener_fd`: the socket handed
    over with `socket: inherit`); StartError when it cannot be started."""
    variables = ctx.port_env(service.name)
    command = build_command(service, ctx.root, variables, listener_fd)
    marker = f"{ctx.instance}/{service.name}/{run}"
    try:
        child = await ctx.spawner.spawn(
            command.argv,
            env=command.env,
            cwd=command.cwd,
            marker=marker,
            listener=command.listener,
            user=command.user,
            service=service.name,
        )
    except OSError as exc:
        raise StartError(f"cannot start {command.argv[0]!r}: {exc.strerror or exc}") from None
    row = ctx.ledger.child_started(service.name, child.pid, child.pgid, child.started, port, marker)
    return Launched(child, command.user, basis_of(service, ctx.dependency, variables), row)
