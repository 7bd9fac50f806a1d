"""What every command shares: exit statuses, finding the stack, reaching its supervisor."""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackvisor.config.finding import find_config
from stackvisor.errors import NotRunning

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig
    from stackvisor.control.client import Client
    from stackvisor.control.ops import Stack
    from stackvisor.stackref import StackRef

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


def profiles(args: argparse.Namespace) -> list[str]:
    """The active Compose profiles: `--profile` (repeatable) and STACKVISOR_PROFILES (a,b)."""
    named = [p.strip() for p in os.environ.get("STACKVISOR_PROFILES", "").split(",") if p.strip()]
    return sorted({*getattr(args, "profile", []), *named})


class UsageError(Exception):
    """Bad arguments: printed without a traceback, exit 2."""


def load(args: argparse.Namespace) -> StackConfig:
    from stackvisor.config.loader import load_config  # the schema: only the commands that read the file

    path = Path(args.file) if args.file else find_config()
    return load_config(path)


def locate(args: argparse.Namespace) -> StackRef:
    """The running stack's address; works while its file is broken mid-edit."""
    from stackvisor.stackref import StackRef

    return StackRef.locate(Path(args.file) if args.file else find_config())


def check_names(config: Any, names: Sequence[str]) -> None:
    services = config.services
    if not services:
        return  # the file does not parse now: the supervisor will say what it knows
    unknown = [n for n in names if n not in services and not any(copy_of(s, n) for s in services)]
    if unknown:
        known = ", ".join(sorted(services))
        raise UsageError(f"unknown service {', '.join(unknown)} (the stack has: {known})")


def copy_of(service: str, group: str) -> bool:
    """`api.1` is a copy of `api` (`replicas`)."""
    base, dot, index = service.rpartition(".")
    return bool(dot) and base == group and index.isdigit()


def named(config: StackConfig, args: argparse.Namespace) -> list[str]:
    """The services named on the command line, and the enabled ones of each `--namespace`
    (a disabled service starts only when named itself)."""
    names = list(args.services)
    check_names(config, names)
    spaces = getattr(args, "namespace", None) or []
    known = sorted({svc.namespace for svc in config.services.values() if svc.namespace})
    check_namespaces(spaces, known)
    in_spaces = [n for n, svc in config.services.items() if svc.namespace in spaces and not svc.disabled]
    return names + [n for n in in_spaces if n not in names]


def check_namespaces(asked: Sequence[str], known: Sequence[str]) -> None:
    unknown = [n for n in asked if n not in known]
    if unknown:
        raise UsageError(
            f"unknown namespace {', '.join(unknown)} (the stack has: {', '.join(known) or 'none'})"
        )


def in_namespaces(status: dict[str, Any], asked: Sequence[str]) -> list[dict[str, Any]]:
    """The running stack's services (its status) of the namespaces asked for, or all."""
    services: list[dict[str, Any]] = status["services"]
    if not asked:
        return services
    check_namespaces(asked, sorted({s["namespace"] for s in services if s.get("namespace")}))
    return [s for s in services if s.get("namespace") in asked]


def client(config: Stack) -> Client:
    """A client of the running stack's supervisor; NotRunning when there is none."""
    from stackvisor.control import ops

    pid = ops.supervisor_pid(config)
    if pid is None:
        raise NotRunning(f"stack {config.name!r} is not running")
    found = ops.client_for(config, supervisor_pid=pid)
    if ops.is_stopped(pid):  # it would take the question and never answer
        raise found.not_responding("asked")
    return found


def follow_logs(api: Client, names: Sequence[str], lines: int) -> int:
    """The last `lines` of each service, then its output as it comes, until the stack stops."""
    width = max(len(n) for n in names)
    if len(names) == 1:
        for line in api.stream(f"/v1/services/{names[0]}/logs?tail={lines}&follow=true"):
            print(f"{names[0].ljust(width)} | {line}", flush=True)
        return EXIT_OK

    def follow(name: str) -> None:
        for line in api.stream(f"/v1/services/{name}/logs?tail={lines}&follow=true"):
            print(f"{name.ljust(width)} | {line}", flush=True)

    threads = [threading.Thread(target=follow, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return EXIT_OK
