"""Commands that bring a stack up or down, or look at it without running it: validate,
up, the detached supervisor, run, down, ports, history."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackvisor import graph
from stackvisor.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    check_names,
    load,
    locate,
    named,
    profiles,
)
from stackvisor.cli.render import format_history
from stackvisor.config.kinds import Strategy
from stackvisor.paths import stack_paths
from stackvisor.runtime.status import StackStatus

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig
    from stackvisor.control.ops import Stack
    from stackvisor.runtime.state import StateDB


def cmd_validate(args: argparse.Namespace) -> int:
    config = load(args)
    errors, warnings = _check_programs(config)
    for line in warnings:
        print(f"{line} (warning)", file=sys.stderr)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return EXIT_USAGE
    order = graph.start_order(config.graph())
    depth = graph.levels(config.graph())
    print(f"{config.path}: stack {config.name!r}, {len(order)} services, in start order:")
    for name in order:
        svc = config.services[name]
        deps = ", ".join(f"{d} ({c.condition.value})" for d, c in svc.depends_on.items())
        port = f" port {svc.port}" if svc.port is not None else ""
        print(f"  {'  ' * depth[name]}{name}{port}{'  <- ' + deps if deps else ''}")
    return EXIT_OK


def _check_programs(config: StackConfig) -> tuple[list[str], list[str]]:
    """Programs that are not there: errors for a list or a simple command (exec would
    fail), warnings for the first word of a compound shell command (it may be a builtin)."""
    from stackvisor.config.commands import program
    from stackvisor.config.report import display
    from stackvisor.config.yamlpos import parse_yaml
    from stackvisor.system.prelude import resolve_program

    document, _ = parse_yaml(config.path.read_text(encoding="utf-8"))
    errors: list[str] = []
    warnings: list[str] = []
    for name, svc in config.services.items():
        found, certain = program(svc.command)
        if found is None or "$" in found:
            continue  # nothing to look for before the stack's ports are known
        cwd = str(config.root / svc.working_dir) if svc.working_dir else str(config.root)
        try:
            resolve_program(found, cwd, os.environ.get("PATH", os.defpath))
            continue
        except FileNotFoundError:
            folder = "/" in found and os.path.isdir(os.path.join(cwd, found))
            why = f"program {found!r} " + ("is a folder, not a program" if folder else "not found")
            why += "" if "/" in found else " on the PATH"
        except PermissionError:
            why = f"program {found!r} is not executable"
        line, column = document.locate(("services", name, "command")) if document else (1, 1)
        text = f"{display(config.path)}:{line}:{column}: services.{name}.command: {why}"
        (errors if certain else warnings).append(text)
    return errors, warnings


def _supervisor_argv(args: argparse.Namespace) -> list[str]:
    argv = list(args.services)
    for name in profiles(args):
        argv += ["--profile", name]
    if args.strategy:
        argv += ["--strategy", args.strategy]
    if getattr(args, "exit_when_done", False):
        argv.append("--exit-when-done")
    if getattr(args, "exit_with", None):
        argv += ["--exit-with", str(args.exit_with)]
    if getattr(args, "lease", None):
        argv += ["--lease", str(args.lease)]
    return argv


def _open_state(path: Path) -> StateDB:
    from stackvisor.runtime.state import StateDB

    db = StateDB.open(path, os.getpid())
    note = db.recovery_note()
    if note is not None:
        print(f"stackvisor: warning: {note}", file=sys.stderr)
    return db


def _children(config: StackConfig) -> tuple[set[tuple[int, float]], list[tuple[int, float, str]]]:
    """Every child the stack ever recorded (pid, start time), and while no supervisor
    runs what a killed one left (which the next ends first); the live children of its
    running supervisor (pid, start time, service)."""
    from stackvisor.control import ops
    from stackvisor.runtime.orphans import left_behind

    paths = stack_paths(config)
    if not paths.state_db.exists():
        return set(), []
    supervisor = ops.supervisor_pid(config)
    db = _open_state(paths.state_db)
    try:
        if supervisor is None:
            return db.known_children() | left_behind(db, paths.cgroup_name), []
        live = [r for r in db.live_children() if r.supervisor_pid == supervisor and not r.is_instance]
        return db.known_children(), [(r.pid, r.started, r.service) for r in live if r.started is not None]
    finally:
        db.close()


def _port_plan(
    config: StackConfig, strategy: str | None, names: Sequence[str], active: Sequence[str] = ()
) -> list[Any]:
    from stackvisor.cli import registry
    from stackvisor.ports.resolve import plan_stack
    from stackvisor.runtime import plans

    selection = plans.selection(config, names, active)
    override = Strategy(strategy) if strategy else None
    known, running = _children(config)
    allocated = registry.allocated_to_others(config)
    return [a for a in plan_stack(config, override, known, running, allocated) if a.service in selection]


def cmd_ports(args: argparse.Namespace) -> int:
    """The port plan (holder, level, action) for every service, doing nothing."""
    from stackvisor.ports.conflicts import Action, format_plan

    config = load(args)
    check_names(config, args.services)
    plan = _port_plan(config, args.strategy, args.services, profiles(args))
    if args.json:
        print(json.dumps([a.as_dict() for a in plan], indent=2, default=str))
    else:
        print(format_plan(plan))
    return EXIT_FAILURE if any(a.action is Action.FAIL for a in plan) else EXIT_OK


def _preflight(config: StackConfig, args: argparse.Namespace) -> int | None:
    """Conflicts that no strategy step can resolve stop `up` before anything starts."""
    from stackvisor.control import ops
    from stackvisor.ports.conflicts import Action, format_plan

    if ops.supervisor_pid(config) is not None:
        return None  # the running supervisor's own ports would all look taken
    plan = _port_plan(config, args.strategy, args.services, profiles(args))
    if args.dry_run:
        print(format_plan(plan))
        return EXIT_FAILURE if any(a.action is Action.FAIL for a in plan) else EXIT_OK
    failing = [a for a in plan if a.action is Action.FAIL]
    for action in failing:
        print(f"stackvisor: {action.service}: {action.message}", file=sys.stderr)
    if failing:
        _record_refusal(config, failing)
    return EXIT_FAILURE if failing else None


def _record_refusal(config: StackConfig, failing: list[Any]) -> None:
    """A refused `up` is part of the history, like a conflict met by a running stack."""
    import time

    from stackvisor.errors import UnsafePath
    from stackvisor.ports.conflicts import ConflictRecord
    from stackvisor.runtime.events import Event, PortConflict
    from stackvisor.system.files import secure_dir

    paths = stack_paths(config)
    try:
        secure_dir(paths.state_dir, 0o700)
    except UnsafePath:
        return  # the refusal to write there is said when the stack starts
    db = _open_state(paths.state_db)
    try:
        for seq, action in enumerate(failing, 1):
            data = ConflictRecord.of(action, "failed: up refused, nothing was started").as_dict()
            service = data.pop("service")
            payload = PortConflict(**data)
            db.record_event(Event(seq, time.time(), payload.kind, service, payload.data()))
    finally:
        db.close()


def cmd_history(args: argparse.Namespace) -> int:
    config = load(args)
    path = stack_paths(config).state_db
    rows: list[dict[str, Any]] = []
    if path.exists():
        db = _open_state(path)
        try:
            kinds = () if args.all else ("port_conflict",)
            rows = db.events(kinds=kinds, limit=args.limit)
        finally:
            db.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    if not rows:
        print("no port conflicts recorded" if not args.all else "no history recorded")
        return EXIT_OK
    print(format_history(rows, conflicts_only=not args.all))
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from stackvisor.cli.converge import attach, converge
    from stackvisor.control import ops

    config = load(args)
    args.services = named(config, args)  # and those of each --namespace
    stop = _preflight(config, args)
    if stop is not None:
        return stop
    running = ops.supervisor_pid(config)
    if running is not None:
        done = converge(config, args.services, running, profiles(args))
        if done.code != EXIT_OK:
            return done.code
        if args.wait:
            return wait_until_ready(config, args.services, args.timeout, since=done.since)
        return EXIT_OK if args.detach else attach(config, args.services)
    if args.detach or args.wait:
        return _up_detached(config, args)
    return _supervise(config, args, console=True)


def cmd_supervise(args: argparse.Namespace) -> int:
    """The detached supervisor itself (started by `up -d`)."""
    return _supervise(load(args), args, console=False)


def _supervise(config: StackConfig, args: argparse.Namespace, *, console: bool) -> int:
    from stackvisor.app import run_supervisor
    from stackvisor.runtime.supervisor import Lease

    return run_supervisor(
        config,
        args.services,
        strategy=args.strategy,
        until_done=args.exit_when_done,
        lease=Lease(exit_with=args.exit_with, seconds=args.lease),
        console=console,
        profiles=profiles(args),
    )


def _up_detached(config: StackConfig, args: argparse.Namespace) -> int:
    from stackvisor.control import ops

    started = ops.detach(config, _supervisor_argv(args))
    if not started.ok:
        print(f"stackvisor: {started.message}", file=sys.stderr)
        return started.code if started.code in (EXIT_FAILURE, EXIT_USAGE) else EXIT_FAILURE
    print(f"stack {config.name!r} running in the background (pid {started.pid})", file=sys.stderr)
    if not args.wait:
        return EXIT_OK
    return wait_until_ready(config, args.services, args.timeout)


def wait_until_ready(config: Stack, names: Sequence[str], timeout: float, since: float | None = None) -> int:
    """Until the stack is ready (`up --wait`, `restart --wait`); what went wrong otherwise.
    Port conflicts met since `since` (default: the supervisor's start) are printed."""
    from stackvisor.control import ops

    api = ops.client_for(config)
    tty = sys.stderr.isatty()

    def progress(status: StackStatus) -> None:
        if tty:
            states = " ".join(f"{s['name']}:{s['state']}" for s in status["services"] if s.get("selected"))
            print(f"\r\x1b[Kwaiting: {states}"[:200], end="", file=sys.stderr, flush=True)

    result = ops.wait_ready(api, names, timeout, progress)
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr)
    if result.status is not None:
        for line in _conflicts_since(config, result.status["started_at"] if since is None else since):
            print(line, file=sys.stderr)
    if result.ok and result.status is not None:
        ready = [s["name"] for s in result.status["services"] if s.get("selected")]
        print(f"ready: {', '.join(ready)}", file=sys.stderr)
        return EXIT_OK
    if result.stopped is not None:
        reason = result.stopped or _last_stop_reason(config)
        why = f" ({reason})" if reason else ""
        print(f"stackvisor: the stack was stopped before it was ready{why}", file=sys.stderr)
        return EXIT_FAILURE
    why = f"not ready after {timeout:g}s" if result.timed_out else "a service failed"
    print(f"stackvisor: {why}", file=sys.stderr)
    print(ops.failure_report(api, result.broken), file=sys.stderr)
    return EXIT_FAILURE


def _conflicts_since(config: Stack, since: float) -> list[str]:
    """One line per port conflict the running supervisor met since `since`: what was
    moved, what was ended; people must not find out from `curl` hitting another process."""
    from stackvisor.cli.render import conflict_line
    from stackvisor.control.ops import paths_of

    path = paths_of(config).state_db
    if not path.exists():
        return []
    db = _open_state(path)
    try:
        return [conflict_line(r) for r in db.events(since=since, kinds=("port_conflict",))]
    finally:
        db.close()


def _last_stop_reason(config: Stack) -> str:
    """Why the stack last went down, as its supervisor recorded it."""
    from stackvisor.control.ops import paths_of

    path = paths_of(config).state_db
    if not path.exists():
        return ""
    db = _open_state(path)
    try:
        rows = [r for r in db.events(kinds=("stack",), limit=5) if r["data"].get("event") == "down"]
    finally:
        db.close()
    return str(rows[-1]["data"].get("reason") or "") if rows else ""


def cmd_down(args: argparse.Namespace) -> int:
    from stackvisor.control import ops

    config = locate(args)
    result = ops.down(config, args.timeout)
    for line in result.ended:
        print(line, file=sys.stderr)
    if not result.was_running:
        said = f"stack {config.name!r} was not running"
    elif result.killed:
        said = f"the supervisor (pid {result.pid}) did not stop within {args.timeout:g}s: killed"
    else:
        said = f"stack {config.name!r} stopped"
    print(said, file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """up --wait, the command with the stack's ports in its environment, then down; against
    a running stack, the same without the down."""
    from stackvisor.cli.converge import converge
    from stackvisor.control import ops

    if not args.cmd:
        raise UsageError("run needs a command after --, e.g. stackvisor run -- pytest")
    config = load(args)
    args.services = named(config, args)  # and those of each --namespace
    stop = _preflight(config, args)
    if stop is not None:
        return stop
    since: float | None = None
    running = ops.supervisor_pid(config)
    if running is not None:  # used as it is, and left running: this `run` did not start it
        done = converge(config, args.services, running, profiles(args))
        if done.code != EXIT_OK:
            return done.code
        since = done.since
    else:
        # --exit-with: even a SIGKILLed `stackvisor run` leaves nothing running.
        started = ops.detach(config, [*_supervisor_argv(args), "--exit-with", str(os.getpid())])
        if not started.ok:
            print(f"stackvisor: {started.message}", file=sys.stderr)
            return EXIT_FAILURE
    # From here on, whatever happens (Ctrl-C, SIGTERM, a failure), a stack we started goes down.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = wait_until_ready(config, args.services, args.timeout, since=since)
        if code != EXIT_OK:
            return code
        status = ops.client_for(config).get("/v1/status")
        env = dict(os.environ)
        env.update(ops.port_environment(status))
        return ops.run_command(args.cmd, env)
    except (FileNotFoundError, PermissionError) as exc:
        # As a shell says it: 127 not found, 126 found but not runnable.
        print(f"stackvisor: cannot run {args.cmd[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    except ops.Terminated as exc:
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if running is None:
            ops.down(config, timeout=60)


def _raise_interrupt(signum: int, frame: object) -> None:
    from stackvisor.control.ops import Terminated

    raise Terminated(128 + signum)
