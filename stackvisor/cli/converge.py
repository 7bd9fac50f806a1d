"""`up` and `run` against a stack that already runs: it converges instead of refusing.

As `docker compose up -d` does: the file is applied (a reload: only what changed
restarts), the named services, or with none named every service that is not running,
are started, and `--wait` waits for them. Plain `up` then attaches to the output
(Ctrl-C detaches; the stack keeps running), and `run` runs its command against the
stack and leaves it running: this `run` did not start it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stackvisor.cli.common import EXIT_FAILURE, EXIT_OK, follow_logs
from stackvisor.errors import ApiError

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig


@dataclass(frozen=True)
class Converged:
    code: int
    since: float  # what `--wait` reports on (port conflicts) starts here


def converge(config: StackConfig, named: Sequence[str], pid: int, profiles: Sequence[str] = ()) -> Converged:
    """Apply the file to the running stack and start what is missing; say what was done."""
    from stackvisor.control import ops

    since = time.time()
    try:
        body = {"services": list(named), "profiles": list(profiles)}
        result = ops.client_for(config).post("/v1/up", body)
    except ApiError as exc:
        print(f"stackvisor: the running stack (pid {pid}) refused: {exc}", file=sys.stderr)
        return Converged(EXIT_FAILURE, since)
    changes = "; ".join(result["reload"].get("summary", [])) or "no changes"
    started = result["started"]
    what = f"started {', '.join(started)}" if started else "nothing to start"
    head = f"stack {config.name!r} already running (pid {pid})"
    print(f"{head}: file applied ({changes}), {what}", file=sys.stderr)
    return Converged(EXIT_OK, since)


def attach(config: StackConfig, named: Sequence[str]) -> int:
    """Follow the running stack's output until Ctrl-C, which only detaches."""
    from stackvisor.control import ops

    names = list(named) or list(config.services)
    try:  # from the line that says Ctrl-C detaches on, it does
        print("attached to its output: Ctrl-C detaches, `stackvisor down` stops the stack", file=sys.stderr)
        return follow_logs(ops.client_for(config), names, 10)
    except KeyboardInterrupt:
        return EXIT_OK
