"""Commands on a running stack, through its control socket: status, logs, restart, start,
stop, reload, heartbeat."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from stackvisor.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    check_names,
    client,
    follow_logs,
    in_namespaces,
    locate,
)
from stackvisor.cli.render import format_status
from stackvisor.cli.scaling import with_copies
from stackvisor.errors import ApiError, NotRunning

if TYPE_CHECKING:
    from stackvisor.config.schema import Service, StackConfig


def cmd_status(args: argparse.Namespace) -> int:
    config = locate(args)
    try:
        status = client(config).get("/v1/status?resources=true")
    except NotRunning:
        if args.json:
            print(json.dumps({"name": config.name, "running": False}))
        raise
    status["services"] = in_namespaces(status, args.namespace)
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(format_status(status))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from stackvisor.control import ops

    config = locate(args)
    check_names(config, args.services)
    names = with_copies(args.services, config.services) or list(config.services)
    try:
        api = client(config)
    except NotRunning:
        if args.follow:
            raise
        for line in ops.read_log_files(config, names, args.lines):
            print(line)
        return EXIT_OK
    running = [s["name"] for s in api.get("/v1/status")["services"]]
    names = with_copies(names or running, running)  # a group (`replicas`) is its copies
    width = max(len(n) for n in names)
    if args.follow:
        return follow_logs(api, names, args.lines)
    for name in names:
        text = api.get(f"/v1/services/{name}/logs?tail={args.lines}")
        for line in str(text).splitlines():
            print(f"{name.ljust(width)} | {line}")
    return EXIT_OK


def cmd_restart(args: argparse.Namespace) -> int:
    from stackvisor.cli.stack import wait_until_ready

    config = locate(args)
    check_names(config, args.services)
    api = client(config)
    if args.namespace:  # and the services of each namespace
        chosen = [s["name"] for s in in_namespaces(api.get("/v1/status"), args.namespace)]
        args.services += [n for n in chosen if n not in args.services]
    began = time.time()
    status = api.post("/v1/restart", {"services": args.services})
    names = args.services or [s["name"] for s in status["services"] if s.get("selected")]
    print(f"restarted {', '.join(names)}", file=sys.stderr)
    if args.wait:  # the restarted services and their dependents, with the rest of the stack
        return wait_until_ready(config, [], args.timeout, since=began)
    return EXIT_OK


def service_action(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        config = locate(args)
        check_names(config, [args.service])
        result = client(config).post(f"/v1/services/{args.service}/{action}")
        print(f"{args.service}: {result['state']}", file=sys.stderr)
        return EXIT_OK

    return run


def cmd_reload(args: argparse.Namespace) -> int:
    api = client(locate(args))
    try:
        result = api.post("/v1/reload", {"dry_run": args.dry_run})
    except ApiError as exc:
        if exc.status == 409:
            print(f"stackvisor: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"stackvisor: reload failed, nothing changed:\n{exc.detail}", file=sys.stderr)
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
    if args.service:  # a service's own `lease:`
        client(locate(args)).post(f"/v1/services/{args.service}/heartbeat")
        return EXIT_OK
    result = client(locate(args)).post("/v1/heartbeat")
    if result.get("lease_seconds_left") is None:
        print("stackvisor: the stack has no --lease; the heartbeat changes nothing", file=sys.stderr)
    return EXIT_OK


def cmd_exec(args: argparse.Namespace) -> int:
    """CMD in the foreground with what SERVICE's process would have: its environment
    (after interpolation, with the port variables: those of the running stack when it
    runs), `working_dir` and `user`. The exit status is CMD's (128+N for a signal N)."""
    import subprocess

    from stackvisor.cli.common import UsageError, load
    from stackvisor.config.interpolate import port_env
    from stackvisor.runtime.command import service_context
    from stackvisor.system.prelude import resolve_program

    if not args.cmd:
        raise UsageError("exec needs a command after --, e.g. stackvisor exec api -- python -m api.shell")
    config = load(args)
    name, service, ports, copies = _exec_target(config, args.service, args.index)
    variables = port_env(ports, own=name, groups=copies)  # as the service has them
    where = service_context(service, config.root, variables)
    user = where.user
    try:
        # Found as the service's own program is: "not found" is told apart from a PATH
        # folder the user may not enter.
        program = resolve_program(args.cmd[0], where.cwd, where.env.get("PATH", os.defpath))
        proc = subprocess.Popen(
            args.cmd,
            executable=program,
            cwd=where.cwd,
            env=where.env,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=list(user.groups) if user else None,
        )
    except (FileNotFoundError, PermissionError) as exc:
        print(f"stackvisor: cannot run {args.cmd[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        code = proc.wait()  # the terminal's Ctrl-C reached it too: let it finish its way
    return 128 - code if code < 0 else code


def _exec_target(
    config: StackConfig, name: str, index: int
) -> tuple[str, Service, dict[str, int | None], dict[str, list[str]]]:
    """What `exec` runs as: `name`, or copy `index` of the group `name` (as `docker
    compose exec`); with the ports and the copies of the running stack (`scale` may have
    added some), else of the file."""
    from stackvisor.cli.common import UsageError
    from stackvisor.config.replicas import groups
    from stackvisor.control import ops

    ports: dict[str, int | None] = {
        n: s.port if isinstance(s.port, int) else None for n, s in config.services.items()
    }
    copies = groups(config)
    if ops.supervisor_pid(config) is not None:
        for running in client(config).get("/v1/status")["services"]:
            ports[running["name"]] = running["port"]
            group = running.get("group")
            if group in copies and running["name"] not in copies[group]:
                copies[group].append(running["name"])
    copies = {g: sorted(c, key=lambda n: int(n.rpartition(".")[2])) for g, c in copies.items()}
    if name in copies:
        if f"{name}.{index}" not in copies[name]:
            raise UsageError(f"{name} has copies {', '.join(copies[name])}: no copy {index}")
        name = f"{name}.{index}"
    group = next((g for g, members in copies.items() if name in members), None)
    if name not in config.services and group is None:
        check_names(config, [name])  # says which services there are
        raise UsageError(f"unknown service {name}")
    return name, config.services.get(name) or config.groups[group or name], ports, copies
