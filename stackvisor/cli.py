"""The `stackvisor` command: parse arguments, then call the supervisor or the control client.

Exit statuses: 0 ok, 1 failure (a service failed, a port could not be secured,
--wait gave up), 2 usage or configuration error, 3 not running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stackvisor import graph
from stackvisor.config import ConfigError, find_config, load_config
from stackvisor.config.schema import StackConfig, Strategy, parse_duration

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments: printed without a traceback, exit 2."""


class NotRunningError(Exception):
    """The stack is not running: printed, exit 3."""


def _load(args: argparse.Namespace) -> StackConfig:
    path = Path(args.file) if args.file else find_config()
    return load_config(path)


def _locate(args: argparse.Namespace) -> Any:
    """The running stack's address; works while its file is broken mid-edit."""
    from stackvisor.control.ops import StackRef

    return StackRef.locate(Path(args.file) if args.file else find_config())


def _check_names(config: Any, names: Sequence[str]) -> None:
    services = config.services
    if not services:
        return  # the file does not parse now: the supervisor will say what it knows
    unknown = [n for n in names if n not in services]
    if unknown:
        known = ", ".join(sorted(services))
        raise UsageError(f"unknown service {', '.join(unknown)} (the stack has: {known})")


def _client(config: Any) -> Any:
    from stackvisor.control import ops

    client = ops.client_for(config)
    if ops.supervisor_pid(config) is None:
        raise NotRunningError(f"stack {config.name!r} is not running")
    return client


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"expected a process id (got {text!r})")
    return int(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ----- commands ------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    order = graph.start_order(config.graph())
    depth = graph.levels(config.graph())
    print(f"{config.path}: stack {config.name!r}, {len(order)} services, in start order:")
    for name in order:
        svc = config.services[name]
        deps = ", ".join(f"{d} ({c.condition.value})" for d, c in svc.depends_on.items())
        port = f" port {svc.port}" if svc.port is not None else ""
        print(f"  {'  ' * depth[name]}{name}{port}{'  <- ' + deps if deps else ''}")
    return EXIT_OK


def _supervisor_argv(args: argparse.Namespace) -> list[str]:
    argv = list(args.services)
    if args.strategy:
        argv += ["--strategy", args.strategy]
    if getattr(args, "exit_when_done", False):
        argv.append("--exit-when-done")
    if getattr(args, "exit_with", None):
        argv += ["--exit-with", str(args.exit_with)]
    if getattr(args, "lease", None):
        argv += ["--lease", str(args.lease)]
    return argv


def _port_plan(config: StackConfig, strategy: str | None, names: Sequence[str]) -> list[Any]:
    from stackvisor.ports.resolve import plan_stack

    selection = graph.closure(config.graph(), names) if names else set(config.services)
    known = _known_children(config)
    override = Strategy(strategy) if strategy else None
    return [a for a in plan_stack(config, override, known) if a.service in selection]


def _known_children(config: StackConfig) -> set[tuple[int, float]]:
    from stackvisor.runtime.state import StateDB

    path = config.root / ".stackvisor" / "state.db"
    if not path.exists():
        return set()
    db = StateDB(path, os.getpid())
    try:
        return db.known_children()
    finally:
        db.close()


def cmd_ports(args: argparse.Namespace) -> int:
    """The port plan (holder, level, action) for every service, doing nothing."""
    from stackvisor.ports.conflicts import format_plan

    config = _load(args)
    _check_names(config, args.services)
    plan = _port_plan(config, args.strategy, args.services)
    if args.json:
        print(json.dumps([a.as_dict() for a in plan], indent=2, default=str))
    else:
        print(format_plan(plan))
    return EXIT_FAILURE if any(str(a.action) == "fail" for a in plan) else EXIT_OK


def _preflight(config: StackConfig, args: argparse.Namespace) -> int | None:
    """Conflicts that no strategy step can resolve stop `up` before anything starts."""
    from stackvisor.control import ops
    from stackvisor.ports.conflicts import format_plan

    if ops.supervisor_pid(config) is not None:
        return None  # the running supervisor's own ports would all look taken
    plan = _port_plan(config, args.strategy, args.services)
    if args.dry_run:
        print(format_plan(plan))
        return EXIT_FAILURE if any(str(a.action) == "fail" for a in plan) else EXIT_OK
    failing = [a for a in plan if str(a.action) == "fail"]
    for action in failing:
        print(f"stackvisor: {action.service}: {action.message}", file=sys.stderr)
    return EXIT_FAILURE if failing else None


def cmd_history(args: argparse.Namespace) -> int:
    from stackvisor.runtime.state import StateDB

    config = _load(args)
    path = config.root / ".stackvisor" / "state.db"
    rows: list[dict[str, Any]] = []
    if path.exists():
        db = StateDB(path, os.getpid())
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


def format_history(rows: list[dict[str, Any]], *, conflicts_only: bool) -> str:
    if conflicts_only:
        table = [("TIME", "SERVICE", "PORT", "HOLDER", "LEVEL", "ACTION", "OUTCOME")]
        for r in rows:
            d = r["data"]
            holder = "/".join(str(d.get(k) or "?") for k in ("holder_pid", "holder_name", "holder_user"))
            port = str(d.get("port") or "-")
            if d.get("new_port"):
                port += f" -> {d['new_port']}"
            table.append(
                (_clock(r["ts"]), r["service"] or "-", port, holder, d.get("level", "?"),
                 d.get("action", "?"), d.get("outcome", "?"))
            )
    else:
        table = [("TIME", "SERVICE", "KIND", "DETAIL")]
        for r in rows:
            d = r["data"]
            detail = f"{d.get('old')} -> {d.get('new')} {d.get('reason', '')}" if r["kind"] == "state" else (
                ", ".join(f"{k}={v}" for k, v in d.items() if k != "logs")
            )
            table.append((_clock(r["ts"]), r["service"] or "-", r["kind"], detail[:100]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return "\n".join(
        ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]).rstrip()
        for row in table
    )


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_up(args: argparse.Namespace) -> int:
    config = _load(args)
    _check_names(config, args.services)
    stop = _preflight(config, args)
    if stop is not None:
        return stop
    if args.detach or args.wait:
        return _up_detached(config, args)
    return _supervise(config, args, console=True)


def cmd_supervise(args: argparse.Namespace) -> int:
    """The detached supervisor itself (started by `up -d`)."""
    config = _load(args)
    return _supervise(config, args, console=False)


def _supervise(config: StackConfig, args: argparse.Namespace, *, console: bool) -> int:
    from stackvisor import logsetup
    from stackvisor.control.sockets import AlreadyRunning
    from stackvisor.runtime.logs import stdout_console
    from stackvisor.runtime.supervisor import Lease, Supervisor

    logsetup.configure(config.root / config.settings.logs_dir / "stackvisor.log")
    width = max(len(n) for n in config.services)
    lease = Lease(exit_with=args.exit_with, seconds=args.lease)

    out = stdout_console(width, enabled=console)

    async def main() -> int:
        supervisor = Supervisor(
            config,
            console=out,
            strategy=Strategy(args.strategy) if args.strategy else None,
            owns_process_tree=True,
        )
        return await supervisor.run(args.services, until_done=args.exit_when_done, lease=lease)

    try:
        return asyncio.run(main())
    except AlreadyRunning as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        out.close()
        logsetup.flush()


def _up_detached(config: StackConfig, args: argparse.Namespace) -> int:
    from stackvisor.control import ops

    started = ops.detach(config, _supervisor_argv(args))
    if not started.ok:
        print(f"stackvisor: {started.message}", file=sys.stderr)
        return started.code if started.code in (EXIT_FAILURE, EXIT_USAGE) else EXIT_FAILURE
    print(f"stack {config.name!r} running in the background (pid {started.pid})", file=sys.stderr)
    if not args.wait:
        return EXIT_OK
    return _wait(config, args.services, args.timeout)


def _wait(config: StackConfig, names: Sequence[str], timeout: float) -> int:
    from stackvisor.control import ops

    client = ops.client_for(config)
    tty = sys.stderr.isatty()

    def progress(status: dict[str, Any]) -> None:
        if tty:
            states = " ".join(f"{s['name']}:{s['state']}" for s in status["services"] if s.get("selected"))
            print(f"\r\x1b[Kwaiting: {states}"[:200], end="", file=sys.stderr, flush=True)

    result = ops.wait_ready(client, names, timeout, progress)
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr)
    if result.ok:
        ready = [s["name"] for s in result.status["services"] if s.get("selected")]
        print(f"ready: {', '.join(ready)}", file=sys.stderr)
        return EXIT_OK
    why = f"not ready after {timeout:g}s" if result.timed_out else "a service failed"
    print(f"stackvisor: {why}", file=sys.stderr)
    print(ops.failure_report(client, result.broken), file=sys.stderr)
    return EXIT_FAILURE


def cmd_down(args: argparse.Namespace) -> int:
    from stackvisor.control import ops

    config = _locate(args)
    result = ops.down(config, args.timeout)
    for line in result.ended:
        print(line, file=sys.stderr)
    if not result.was_running:
        print(f"stack {config.name!r} was not running", file=sys.stderr)
    elif result.killed:
        print(f"the supervisor (pid {result.pid}) did not stop within {args.timeout:g}s: killed", file=sys.stderr)
    else:
        print(f"stack {config.name!r} stopped", file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    config = _locate(args)
    try:
        status = _client(config).get("/v1/status")
    except NotRunningError:
        if args.json:
            print(json.dumps({"name": config.name, "running": False}))
        raise
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(format_status(status))
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    now = time.time()
    rows = [("SERVICE", "STATE", "PID", "PORT", "RESTARTS", "UPTIME", "DETAIL")]
    for s in status["services"]:
        uptime = _age(now - s["started_at"]) if s.get("started_at") else "-"
        detail = s.get("reason") or ""
        if s["state"] == "exited" and s.get("exit_code") is not None:
            detail = detail or f"exit code {s['exit_code']}"
        rows.append(
            (
                s["name"],
                s["state"],
                str(s["pid"] or "-"),
                str(s["port"] or "-"),
                str(s["restarts"]),
                uptime,
                detail[:60],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"stack {status['name']} (supervisor pid {status['pid']})"]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cmd_logs(args: argparse.Namespace) -> int:
    from stackvisor.control import ops

    config = _locate(args)
    _check_names(config, args.services)
    names = args.services or list(config.services)
    try:
        client = _client(config)
    except NotRunningError:
        if args.follow:
            raise
        for line in ops.read_log_files(config, names, args.lines):
            print(line)
        return EXIT_OK
    names = names or [s["name"] for s in client.get("/v1/status")["services"]]
    width = max(len(n) for n in names)
    if args.follow and len(names) == 1:
        for line in client.stream(f"/v1/services/{names[0]}/logs?tail={args.lines}&follow=true"):
            print(f"{names[0].ljust(width)} | {line}", flush=True)
        return EXIT_OK
    if args.follow:
        return _follow_many(client, names, args.lines, width)
    for name in names:
        text = client.get(f"/v1/services/{name}/logs?tail={args.lines}")
        for line in str(text).splitlines():
            print(f"{name.ljust(width)} | {line}")
    return EXIT_OK


def _follow_many(client: Any, names: Sequence[str], lines: int, width: int) -> int:
    import threading

    def follow(name: str) -> None:
        for line in client.stream(f"/v1/services/{name}/logs?tail={lines}&follow=true"):
            print(f"{name.ljust(width)} | {line}", flush=True)

    threads = [threading.Thread(target=follow, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return EXIT_OK


def cmd_restart(args: argparse.Namespace) -> int:
    config = _locate(args)
    _check_names(config, args.services)
    status = _client(config).post("/v1/restart", {"services": args.services})
    names = args.services or [s["name"] for s in status["services"] if s.get("selected")]
    print(f"restarted {', '.join(names)}", file=sys.stderr)
    return EXIT_OK


def _service_action(action: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        config = _locate(args)
        _check_names(config, [args.service])
        result = _client(config).post(f"/v1/services/{args.service}/{action}")
        print(f"{args.service}: {result['state']}", file=sys.stderr)
        return EXIT_OK

    return run


def cmd_reload(args: argparse.Namespace) -> int:
    from stackvisor.control.client import ApiError

    client = _client(_locate(args))
    try:
        result = client.post("/v1/reload", {"dry_run": args.dry_run})
    except ApiError as exc:
        if exc.status == 409:
            print(f"stackvisor: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"stackvisor: reload failed, nothing changed:\n{exc.body.get('detail', '')}", file=sys.stderr)
        return EXIT_USAGE
    prefix = "would apply" if args.dry_run else "applied"
    for line in result["summary"]:
        print(f"{prefix}: {line}" if line != "no changes" else line)
    if result.get("restarted"):
        print(f"{'would restart' if args.dry_run else 'restarted'}: {', '.join(result['restarted'])}")
    if result.get("needs_supervisor_restart"):
        fields = ", ".join(result["needs_supervisor_restart"])
        print(f"settings that take effect only after `stackvisor down` and `up`: {fields}")
    return EXIT_OK


def cmd_heartbeat(args: argparse.Namespace) -> int:
    config = _locate(args)
    result = _client(config).post("/v1/heartbeat")
    if result.get("lease_seconds_left") is None:
        print("stackvisor: the stack has no --lease; the heartbeat changes nothing", file=sys.stderr)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """up --wait, the command with the stack's ports in its environment, then down."""
    from stackvisor.control import ops

    if not args.cmd:
        raise UsageError("run needs a command after --, e.g. stackvisor run -- pytest")
    config = _load(args)
    _check_names(config, args.services)
    stop = _preflight(config, args)
    if stop is not None:
        return stop
    # --exit-with: even a SIGKILLed `stackvisor run` leaves nothing running.
    started = ops.detach(config, _supervisor_argv(args) + ["--exit-with", str(os.getpid())])
    if not started.ok:
        print(f"stackvisor: {started.message}", file=sys.stderr)
        return EXIT_FAILURE
    # From here on, whatever happens (Ctrl-C, SIGTERM, a failure), the stack goes down.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = _wait(config, args.services, args.timeout)
        if code != EXIT_OK:
            return code
        status = ops.client_for(config).get("/v1/status")
        env = dict(os.environ)
        env.update(ops.port_environment(status))
        return ops.run_command(args.cmd, env)
    except FileNotFoundError as exc:
        print(f"stackvisor: cannot run {args.cmd[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    except ops.Terminated as exc:
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        ops.down(config, timeout=60)


def _raise_interrupt(signum: int, frame: object) -> None:
    from stackvisor.control.ops import Terminated

    raise Terminated(128 + signum)


# ----- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stackvisor",
        description="Run a whole development or CI stack from one services.yaml.",
        epilog="exit statuses: 0 ok, 1 failure, 2 usage or config error, 3 not running",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str | None, func: object, short_file: bool = True) -> argparse.ArgumentParser:
        extra = {"help": help} if help else {}
        p = sub.add_parser(name, description=help, **extra)
        flags = ["-f", "--file"] if short_file else ["--file"]
        p.add_argument(*flags, help="the stack file (default: services.yaml here or above)")
        p.set_defaults(func=func)
        return p

    def supervisor_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("services", nargs="*", metavar="SERVICE")
        p.add_argument("--strategy", choices=[s.value for s in Strategy], help="port conflict strategy")
        p.add_argument(
            "--exit-when-done", action="store_true",
            help="stop once every service has ended (for stacks of one-shot jobs)",
        )
        p.add_argument("--exit-with", type=_pid, metavar="PID", help="stop the stack when PID exits")
        p.add_argument(
            "--lease", type=_duration, metavar="DURATION",
            help="stop the stack unless `stackvisor heartbeat` comes within every DURATION",
        )

    command("validate", "check the stack file and print the services in start order", cmd_validate)

    up = command("up", "start the stack (or the named services and what they need)", cmd_up)
    supervisor_options(up)
    up.add_argument("-d", "--detach", action="store_true", help="run in the background")
    up.add_argument(
        "--wait", action="store_true",
        help="with -d (implied): return once every service is ready; exit 1 if one fails",
    )
    up.add_argument("--timeout", type=_duration, default=120.0, help="for --wait (default 120s)")
    up.add_argument("--dry-run", action="store_true", help="print the port plan and start nothing")

    ports = command("ports", "show the port plan (holder, level, action) without doing anything", cmd_ports)
    ports.add_argument("services", nargs="*", metavar="SERVICE")
    ports.add_argument("--strategy", choices=[s.value for s in Strategy], help="port conflict strategy")
    ports.add_argument("--json", action="store_true")

    history = command("history", "list the port conflicts and how they were resolved", cmd_history)
    history.add_argument("--json", action="store_true")
    history.add_argument("--all", action="store_true", help="every recorded event, not only conflicts")
    history.add_argument("--limit", type=int, default=1000)

    sup = command("_supervise", None, cmd_supervise)
    supervisor_options(sup)

    down = command("down", "stop the stack and wait until everything has exited", cmd_down)
    down.add_argument("--timeout", type=_duration, default=60.0, help="then kill (default 60s)")

    for name in ("status", "ps"):
        st = command(name, "show the services of the running stack", cmd_status)
        st.add_argument("--json", action="store_true", help="the /v1/status document")

    # As in compose, `logs -f` follows; the file is then --file.
    logs = command("logs", "show (or follow) the services' output", cmd_logs, short_file=False)
    logs.add_argument("services", nargs="*", metavar="SERVICE")
    logs.add_argument("-f", "--follow", action="store_true", dest="follow")
    logs.add_argument("-n", "--lines", type=int, default=100, help="lines from the end (default 100)")

    restart = command("restart", "restart services (all when none is named)", cmd_restart)
    restart.add_argument("services", nargs="*", metavar="SERVICE")
    for action in ("start", "stop"):
        p = command(action, f"{action} one service of the running stack", _service_action(action))
        p.add_argument("service", metavar="SERVICE")

    command("heartbeat", "renew the lease of a stack started with --lease", cmd_heartbeat)

    reload = command("reload", "apply the edits of the stack file now (it also happens by itself)", cmd_reload)
    reload.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")

    run = command("run", "up --wait, run a command with the stack's ports, then down", cmd_run)
    run.add_argument("services", nargs="*", metavar="SERVICE", help="(default: every service)")
    run.add_argument("--strategy", choices=[s.value for s in Strategy], help="port conflict strategy")
    run.add_argument("--timeout", type=_duration, default=120.0, help="for the stack to be ready")
    run.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    if hasattr(args, "cmd"):
        args.cmd = cmd or [c for c in args.cmd if c != "--"]
    elif cmd:
        parser.error("unexpected arguments after --")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, graph.GraphError) as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotRunningError as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a refused or broken API call: say it, no traceback
        import http.client

        from stackvisor.control.client import ApiError, NotRunning

        if isinstance(exc, NotRunning):
            print(f"stackvisor: the stack is not running ({exc})", file=sys.stderr)
            return EXIT_NOT_RUNNING
        if isinstance(exc, ApiError):
            print(f"stackvisor: {exc}", file=sys.stderr)
            return EXIT_USAGE if exc.status in (400, 404) else EXIT_FAILURE
        if isinstance(exc, (OSError, http.client.HTTPException, ValueError)):
            print(f"stackvisor: the supervisor did not answer properly: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        raise


if __name__ == "__main__":
    raise SystemExit(main())
