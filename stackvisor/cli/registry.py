"""`stackvisor ports VERB`: the user's port registry from a script or a terminal.

`allocate` prints a port that no stack and no other script will be handed while the
allocation lives (`PORT=$(stackvisor ports allocate web --quiet)`); `list`, `lookup`,
`stats` and `ranges` read the directory; `heartbeat`, `release`, `cleanup`, `reserve`
and `unreserve` change it. `ports` alone, or with service names, is the stack's plan
(`ports plan`), as before the registry existed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackvisor.cli.common import EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig
    from stackvisor.ports.registry import Registry

VERBS = (
    *("plan", "allocate", "heartbeat", "release", "cleanup", "list", "lookup", "stats", "ranges"),
    *("reserve", "unreserve"),
)


def normalise(argv: list[str]) -> list[str]:
    """`ports`, `ports --json`, `ports api web` are `ports plan ...`, as they always were."""
    if argv[:1] == ["ports"] and not (len(argv) > 1 and argv[1] in (*VERBS, "-h", "--help")):
        return ["ports", "plan", *argv[1:]]
    return argv


def grammar(
    verbs: Any,
    duration: Callable[[str], float],
    plan: Callable[[argparse.ArgumentParser], None],
    plan_command: Callable[[argparse.Namespace], int],
) -> None:
    """The verbs of `ports` (`verbs`: its subparsers action; `plan` adds the plan's
    options, `plan_command` runs it)."""

    def verb(name: str, text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = verbs.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    def json_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true")

    plan(
        verb(
            "plan", "show this stack's port plan (holder, level, action) without doing anything", plan_command
        )
    )
    p = verb(
        "allocate", "hand out a port no stack or script will get while the allocation lives", cmd_allocate
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--type", default="custom", help="a service type: its range (see `ports ranges`)")
    p.add_argument("-f", "--file", help="the stack whose port_types --type may name (default: the one here)")
    p.add_argument("--preferred", type=int, metavar="PORT", help="this port when it is available")
    p.add_argument("--required", action="store_true", help="with --preferred: that port or exit 1")
    p.add_argument("--ttl", type=duration, help="expire unless `ports heartbeat ID` comes within it")
    p.add_argument(
        "--pid",
        type=int,
        help="the process that holds it (default: the one that ran this command; 0: none, needs --ttl)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="the whole allocation")
    out.add_argument("--quiet", "-q", action="store_true", help="only the port")
    for name, text, func in (
        ("heartbeat", "renew an allocation's lease", cmd_heartbeat),
        ("release", "give an allocation's port back", cmd_release),
    ):
        verb(name, text, func).add_argument("id", metavar="ID")
    json_option(verb("cleanup", "expire what is dead and forget old expired allocations", cmd_cleanup))
    p = verb("list", "every live allocation: port, owner, status, heartbeat", cmd_list)
    p.add_argument("--type", help="only this service type")
    p.add_argument("--all", action="store_true", help="also the expired ones")
    json_option(p)
    p = verb("lookup", "the allocations of a service name or a port", cmd_lookup)
    p.add_argument("key", metavar="NAME|PORT")
    json_option(p)
    json_option(verb("stats", "allocations by status and type", cmd_stats))
    p = verb("ranges", "the service types and their port ranges (with this stack's port_types)", cmd_ranges)
    p.add_argument("-f", "--file", help="the stack file (default: services.yaml here or above, if any)")
    json_option(p)
    for name, text in (
        ("reserve", "never hand out these ports"),
        ("unreserve", "hand these ports out again"),
    ):
        verb(name, text, cmd_reserve).add_argument("ports", nargs="+", type=int, metavar="PORT")


def allocated_to_others(config: StackConfig) -> dict[int, str]:
    """The ports the registry gave other stacks and scripts; none when it cannot be read."""
    import sqlite3

    from stackvisor.errors import UnsafePath
    from stackvisor.ports.registry import Registry

    try:
        registry = Registry.open()
    except (OSError, UnsafePath, sqlite3.Error):
        return {}
    try:
        registry.sweep()
        return {port: a.describe() for port, a in registry.others(str(config.path)).items()}
    finally:
        registry.close()


def _open() -> Registry:
    from stackvisor.ports.registry import Registry

    registry = Registry.open()
    if registry.note:
        print(f"stackvisor: warning: {registry.note}", file=sys.stderr)
    return registry


def _run(func: Callable[[Registry], int]) -> int:
    """Open the registry, run, close; a refusal is a message and exit 1."""
    from stackvisor.errors import UnsafePath
    from stackvisor.ports.leases import RegistryError

    try:
        registry = _open()
    except (UnsafePath, OSError) as exc:
        print(f"stackvisor: cannot open the port registry: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return func(registry)
    except RegistryError as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        registry.close()


def _show(rows: list[dict[str, Any]], as_json: bool) -> None:
    from stackvisor.textfmt import format_age, table

    if as_json:
        print(json.dumps(rows, indent=2))
        return
    lines = [("PORT", "NAME", "TYPE", "STATUS", "OWNER", "PID", "HEARTBEAT", "ID")]
    for r in rows:
        age = f"{format_age(r['heartbeat_age'])} ago" + (f" (ttl {r['ttl']:g}s)" if r["ttl"] else "")
        pid = str(r["pid"]) if r["pid"] is not None else "-"
        lines.append((str(r["port"]), r["name"], r["type"], r["status"], r["owner"], pid, age, r["id"]))
    print("\n".join(table(lines)))


def cmd_allocate(args: argparse.Namespace) -> int:
    holder = os.getppid() if args.pid is None else (args.pid or None)
    types = port_types(args.file, args.type)

    def allocate(registry: Registry) -> int:
        allocation, _ = registry.allocate(
            args.name,
            kind=args.type,
            preferred=args.preferred,
            required=args.required,
            ttl=args.ttl,
            pid=holder,
            types=types,
        )
        if args.quiet:
            print(allocation.port)
        elif args.json:
            print(json.dumps(registry.as_dicts([allocation])[0], indent=2))
        else:
            held = f"while pid {holder} runs" if holder else "by its lease"
            lease = f", renewed within {args.ttl:g}s" if args.ttl else ""
            print(f"{allocation.port}  (id {allocation.id}, held {held}{lease})")
        return EXIT_OK

    return _run(allocate)


def cmd_heartbeat(args: argparse.Namespace) -> int:
    def renew(registry: Registry) -> int:
        allocation = registry.heartbeat(args.id)
        print(f"renewed {allocation.id} (port {allocation.port})")
        return EXIT_OK

    return _run(renew)


def cmd_release(args: argparse.Namespace) -> int:
    def release(registry: Registry) -> int:
        allocation = registry.release(args.id)
        print(f"released port {allocation.port} ({allocation.name})")
        return EXIT_OK

    return _run(release)


def cmd_cleanup(args: argparse.Namespace) -> int:
    def cleanup(registry: Registry) -> int:
        expired, forgotten = registry.cleanup()
        if args.json:
            print(json.dumps({"expired": registry.as_dicts(expired), "forgotten": forgotten}, indent=2))
        else:
            for a in expired:
                print(f"expired port {a.port}: {a.describe()}")
            print(f"{len(expired)} expired, {forgotten} old expired allocations forgotten")
        return EXIT_OK

    return _run(cleanup)


def cmd_list(args: argparse.Namespace) -> int:
    def listing(registry: Registry) -> int:
        _show(registry.as_dicts(registry.listing(args.type, everything=args.all)), args.json)
        return EXIT_OK

    return _run(listing)


def cmd_lookup(args: argparse.Namespace) -> int:
    def lookup(registry: Registry) -> int:
        found = registry.as_dicts(registry.lookup(args.key))
        if not found and not args.json:
            print(f"stackvisor: no live allocation for {args.key}", file=sys.stderr)
            return EXIT_FAILURE
        _show(found, args.json)
        return EXIT_OK if found else EXIT_FAILURE

    return _run(lookup)


def cmd_stats(args: argparse.Namespace) -> int:
    def stats(registry: Registry) -> int:
        numbers = registry.stats()
        if args.json:
            print(json.dumps(numbers, indent=2))
        else:
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(numbers["by_status"].items())) or "none"
            kinds = ", ".join(f"{n} {t}" for t, n in sorted(numbers["by_type"].items())) or "none"
            print(f"{numbers['total']} allocations: {statuses}\nlive by type: {kinds}")
        return EXIT_OK

    return _run(stats)


def port_types(file: str | None, wanted: str | None = None) -> dict[str, tuple[int, int] | None]:
    """The default service types, and those of the stack here (or `file`) when there is
    one. The stack file is loaded only when it is named or `wanted` is not a default
    type: a script's `allocate --type rest-api` costs no schema."""
    from stackvisor.config.kinds import DEFAULT_PORT_TYPES

    if file is None and wanted is not None and wanted in DEFAULT_PORT_TYPES:
        return dict(DEFAULT_PORT_TYPES)
    from stackvisor.config import load_config
    from stackvisor.config.finding import find_config
    from stackvisor.errors import ConfigError

    try:
        return load_config(Path(file) if file else find_config()).port_types()
    except ConfigError:
        if file is not None:
            raise
        return dict(DEFAULT_PORT_TYPES)  # no stack here (or a broken one): the defaults


def cmd_ranges(args: argparse.Namespace) -> int:
    ranges = {kind: (list(span) if span else None) for kind, span in port_types(args.file).items()}
    if args.json:
        print(json.dumps(ranges, indent=2))
    else:
        for kind, span in ranges.items():
            print(f"{kind:<10} {f'{span[0]}-{span[1]}' if span else 'any'}")
    return EXIT_OK


def cmd_reserve(args: argparse.Namespace) -> int:
    keep = args.verb == "reserve"

    def reserve(registry: Registry) -> int:
        registry.reserve(args.ports, keep=keep)
        reserved = sorted(registry.reserved_ports())
        print("reserved: " + (", ".join(map(str, reserved)) or "none"))
        return EXIT_OK

    return _run(reserve)


__all__: Sequence[str] = ["VERBS", "grammar", "normalise"]
