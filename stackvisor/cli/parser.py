"""The CLI's grammar: every command, its arguments and its help text."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from stackvisor.cli import audit, export, importing, registry, reporting, running, scaling, stack, top, ui
from stackvisor.config.kinds import Strategy, parse_duration


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(f"expected a process id (got {text!r})")
    return int(text)


def _live_pid(text: str) -> int:
    """A process id that names a process now (`--exit-with` of a gone one would stop the
    stack the moment it started)."""
    import psutil

    pid = _pid(text)
    if not psutil.pid_exists(pid):
        raise argparse.ArgumentTypeError(f"no process {pid} runs now")
    return pid


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (got {text!r})")
    return int(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stackvisor",
        description="Run a whole development or CI stack from one services.yaml.",
        epilog="exit statuses: 0 ok, 1 failure, 2 usage or config error, 3 not running",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help: str | None, func: Callable[[argparse.Namespace], int], short_file: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, description=help, help=help) if help else sub.add_parser(name)
        flags = ["-f", "--file"] if short_file else ["--file"]
        p.add_argument(*flags, help="the stack file (default: services.yaml here or above)")
        p.set_defaults(func=func)
        return p

    def profile_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--profile",
            action="append",
            default=[],
            metavar="NAME",
            help="also start the services of this profile (repeatable; and STACKVISOR_PROFILES=a,b)",
        )

    def namespace_option(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--namespace", action="append", default=[], metavar="NS", help=what)

    def supervisor_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("services", nargs="*", metavar="SERVICE")
        namespace_option(p, "also the services of this namespace (repeatable)")
        p.add_argument("--strategy", choices=[s.value for s in Strategy], help="port conflict strategy")
        profile_option(p)
        p.add_argument(
            "--exit-when-done",
            action="store_true",
            help="stop once every service has ended (for stacks of one-shot jobs)",
        )
        p.add_argument("--exit-with", type=_live_pid, metavar="PID", help="stop the stack when PID exits")
        p.add_argument(
            "--lease",
            type=_duration,
            metavar="DURATION",
            help="stop the stack unless `stackvisor heartbeat` comes within every DURATION",
        )

    command("validate", "check the stack file and print the services in start order", stack.cmd_validate)

    imported = sub.add_parser(
        "import",
        help="write a Procfile or a process-compose file as a services.yaml",
        description="write a Procfile (foreman, honcho) or a process-compose file as a services.yaml",
    )
    imported.add_argument("source", metavar="FILE", help="Procfile, or a process-compose YAML file")
    imported.add_argument("-o", "--output", metavar="OUT", help="write here instead of standard output")
    imported.add_argument("--force", action="store_true", help="with -o: replace OUT if it exists")
    imported.add_argument(
        "-p", "--port", type=int, default=5000, help="a Procfile's first PORT (foreman's rule; default 5000)"
    )
    imported.set_defaults(func=importing.cmd_import)

    up = command("up", "start the stack (or the named services and what they need)", stack.cmd_up)
    supervisor_options(up)
    up.add_argument("-d", "--detach", action="store_true", help="run in the background")
    up.add_argument(
        "--wait",
        action="store_true",
        help="with -d (implied): return once every service is ready; exit 1 if one fails",
    )
    up.add_argument("--timeout", type=_duration, default=120.0, help="for --wait (default 120s)")
    up.add_argument("--dry-run", action="store_true", help="print the port plan and start nothing")

    ports = sub.add_parser(
        "ports",
        help="this stack's port plan, and the registry of ports every stack and script shares",
        description="`ports` alone (or with service names) is `ports plan`",
    )
    verbs = ports.add_subparsers(dest="verb", required=True, metavar="VERB")

    def plan_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("-f", "--file", help="the stack file (default: services.yaml here or above)")
        p.add_argument("services", nargs="*", metavar="SERVICE")
        p.add_argument("--strategy", choices=[s.value for s in Strategy], help="port conflict strategy")
        p.add_argument("--json", action="store_true")

    registry.grammar(verbs, _duration, plan_options, stack.cmd_ports)

    history = command("history", "list the port conflicts and how they were resolved", stack.cmd_history)
    history.add_argument("--json", action="store_true")
    history.add_argument("--all", action="store_true", help="every recorded event, not only conflicts")
    history.add_argument("--limit", type=int, default=1000)

    inspect = command(
        "audit", "list what listens on this machine, flag what looks risky, score it 0-10", audit.cmd_audit
    )
    inspect.add_argument("--json", action="store_true", help="the /v1/audit document")
    inspect.add_argument(
        "--fail-over", type=audit.fail_over, metavar="SCORE", help="exit 1 when the score is SCORE or more"
    )

    sup = command("_supervise", None, stack.cmd_supervise)
    supervisor_options(sup)

    down = command("down", "stop the stack and wait until everything has exited", stack.cmd_down)
    down.add_argument("--timeout", type=_duration, default=60.0, help="then kill (default 60s)")

    for name in ("status", "ps"):
        st = command(name, "show the services of the running stack", running.cmd_status)
        st.add_argument("--json", action="store_true", help="the /v1/status document")
        namespace_option(st, "only the services of this namespace (repeatable)")

    # As in compose, `logs -f` follows; the file is then --file.
    logs = command("logs", "show (or follow) the services' output", running.cmd_logs, short_file=False)
    logs.add_argument("services", nargs="*", metavar="SERVICE")
    logs.add_argument("-f", "--follow", action="store_true", dest="follow")
    logs.add_argument("-n", "--lines", type=int, default=100, help="lines from the end (default 100)")

    restart = command("restart", "restart services (all when none is named)", running.cmd_restart)
    restart.add_argument("services", nargs="*", metavar="SERVICE")
    namespace_option(restart, "also the services of this namespace (repeatable)")
    restart.add_argument(
        "--wait", action="store_true", help="return once the stack is ready again; exit 1 if a service fails"
    )
    restart.add_argument("--timeout", type=_duration, default=120.0, help="for --wait (default 120s)")
    for action in ("start", "stop"):
        p = command(action, f"{action} one service of the running stack", running.service_action(action))
        p.add_argument("service", metavar="SERVICE")

    scale = command("scale", "run N copies of a service (`replicas`) in the running stack", scaling.cmd_scale)
    scale.add_argument("service", metavar="SERVICE")
    scale.add_argument("replicas", type=scaling.replicas, metavar="N")

    beat = command(
        "heartbeat",
        "renew the lease of a stack started with --lease, or of a service's `lease`",
        running.cmd_heartbeat,
    )
    beat.add_argument(
        "service", nargs="?", metavar="SERVICE", help="a service with `lease:` (default: the stack)"
    )

    reload = command(
        "reload", "apply the edits of the stack file now (it also happens by itself)", running.cmd_reload
    )
    reload.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")

    run = command("run", "up --wait, run a command with the stack's ports, then down", stack.cmd_run)
    run.add_argument("services", nargs="*", metavar="SERVICE", help="(default: every service)")
    run.add_argument("--strategy", choices=[s.value for s in Strategy], help="port conflict strategy")
    profile_option(run)
    run.add_argument("--timeout", type=_duration, default=120.0, help="for the stack to be ready")
    run.add_argument("--dry-run", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")

    export.grammar(command)

    page = command("ui", "serve the status page on 127.0.0.1 (an address that works once)", ui.cmd_ui)
    page.add_argument("--port", type=_port, default=0, help="(default: a free one)")
    page.add_argument("--open", action="store_true", help="open it in the browser")

    command("top", "the running stack in the terminal, live (the tui extra)", top.cmd_top)

    report = command("report", "send a report of the stack to settings.report's url", reporting.cmd_report)
    report.add_argument("--once", action="store_true", help="send one report now and exit (for cron, CI)")
    report.add_argument("--url", help="send it here instead of settings.report.url")

    run_in = command(
        "exec", "run a command as a service runs: its environment, ports, folder and user", running.cmd_exec
    )
    run_in.add_argument(
        "--index", type=int, default=0, metavar="N", help="for a group of copies: copy N (default 0)"
    )
    run_in.add_argument("service", metavar="SERVICE")
    run_in.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    return parser
