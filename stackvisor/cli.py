"""The `stackvisor` command: parse arguments, then call the supervisor or the control client.

Exit statuses: 0 ok, 1 failure (a service failed, a port could not be secured),
2 usage or configuration error, 3 not running.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from stackvisor import graph
from stackvisor.config import ConfigError, find_config, load_config
from stackvisor.config.schema import StackConfig, Strategy

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments: printed without a traceback, exit 2."""


def _load(args: argparse.Namespace) -> StackConfig:
    path = Path(args.file) if args.file else find_config()
    return load_config(path)


def _check_names(config: StackConfig, names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in config.services]
    if unknown:
        known = ", ".join(sorted(config.services))
        raise UsageError(f"unknown service {', '.join(unknown)} (the stack has: {known})")


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


def cmd_up(args: argparse.Namespace) -> int:
    from stackvisor import logsetup
    from stackvisor.runtime.logs import stdout_console
    from stackvisor.runtime.supervisor import Supervisor

    config = _load(args)
    _check_names(config, args.services)
    logsetup.configure(config.root / config.settings.logs_dir / "stackvisor.log")
    width = max(len(n) for n in config.services)

    async def main() -> int:
        supervisor = Supervisor(
            config,
            console=stdout_console(width),
            strategy=Strategy(args.strategy) if args.strategy else None,
            owns_process_tree=True,
        )
        return await supervisor.run(args.services, until_done=args.exit_when_done)

    return asyncio.run(main())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stackvisor",
        description="Run a whole development or CI stack from one services.yaml.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, func: object, **kw: object) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, **kw)  # type: ignore[arg-type]
        p.add_argument("-f", "--file", help="the stack file (default: services.yaml here or above)")
        p.set_defaults(func=func)
        return p

    command("validate", "check the stack file and print the services in start order", cmd_validate)

    up = command("up", "start the stack (or the named services and what they need)", cmd_up)
    up.add_argument("services", nargs="*", metavar="SERVICE")
    up.add_argument("--strategy", choices=[s.value for s in Strategy], help="port conflict strategy")
    up.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop once every service has ended (for stacks of one-shot jobs)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, graph.GraphError) as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
