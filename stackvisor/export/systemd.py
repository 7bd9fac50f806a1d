"""`stackvisor export systemd`: the stack as systemd units.

One `<stack>.target` that Wants= every service (`systemctl start|stop <stack>.target`),
and per service a `<stack>-<service>.service`, PartOf= and WantedBy= the target, that
runs what stackvisor runs: a string command through `/bin/sh -c` (`exec`'d when it is
one simple command), a list exec'd; its folder, user, environment, restart policy and
backoff, start limit, stop signal and timeout. `depends_on` becomes After= with
Requires= (`required: true`) or Wants=; a service that others wait to complete is
`Type=oneshot` with `RemainAfterExit=yes`.

A health check that a dependent waits on (`service_healthy`) becomes an ExecStartPost=
that waits until it passes: the service is not started (and its dependents wait) until
then, for at most start_period + retries x interval (a minute at least). `http` and
`tcp` are probed with `python3 -c`, `exec` by a `/bin/sh` loop around the command
(`timeout` and `date` from coreutils). python3 rather than curl: minimal Debian and
Ubuntu images have neither curl nor wget, servers mostly have python3, and it speaks
http and https, takes 2xx and 3xx without following redirects as stackvisor does, and
needs no shell quoting of the URL. bash's /dev/tcp would do tcp only. A `log` check
cannot be waited on from outside: said so.

`socket: inherit` adds a `<stack>-<service>.socket` on 127.0.0.1:PORT handed over as
fd 3 (LISTEN_FDS, LISTEN_FDNAMES the service's name, as stackvisor does); with `start:
on_demand` the target Wants= the socket only, and dependents wait on the socket.

Environment: `EnvironmentFile=` names each env_file (so its secrets stay in it) and
`Environment=` holds the rest: the variables `env` sets, the ports, and any that
systemd would read from the files otherwise than stackvisor does. That needs the
files' text (`read_env_files`, called by the command line); without it, Environment=
carries every variable and the files are not named. systemd gives the files precedence
over Environment=, so a file's variable that stackvisor overrides is a warning.

What systemd cannot express is a `# not carried over:` comment at the top of the unit
concerned and a warning. `systemd_version` (default 252, Debian 12's) gates keys: the
backoff's growth (RestartSteps=, RestartMaxDelaySec=) needs 254. Pure, but for
`read_env_files`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stackvisor.config.address import split_host_port
from stackvisor.config.commands import shell_argv
from stackvisor.config.fields import HealthCheck
from stackvisor.config.kinds import Condition, RestartPolicy
from stackvisor.export import systemd_text as syntax
from stackvisor.export.base import (
    STACK_WIDE,
    Exported,
    ExportError,
    Target,
    command,
    environment,
    not_carried,
    port_text,
)
from stackvisor.export.systemd_timer import has_timer, timer

DEFAULT_VERSION = 252
RESTART_STEPS_SINCE = 254
MIN_HEALTH_WAIT = 60.0
# Exit statuses of a shell that cannot find or run the program: no restart helps.
NOT_RUNNABLE = "126 127"


@dataclass
class _Stack:
    target: Target
    env_files: Mapping[str, str] | None
    version: int

    @property
    def unit(self) -> str:
        return syntax.unit_name(self.target.name, suffix=".target")

    def service_unit(self, name: str) -> str:
        return syntax.unit_name(self.target.name, name, suffix=".service")

    def socket_unit(self, name: str) -> str:
        return syntax.unit_name(self.target.name, name, suffix=".socket")

    def timer_unit(self, name: str) -> str:
        return syntax.unit_name(self.target.name, name, suffix=".timer")

    def on_demand(self, name: str) -> bool:
        svc = self.target.service(name)
        return svc.socket == "inherit" and svc.start == "on_demand"

    def waiting(self, name: str, condition: Condition) -> list[str]:
        """The exported services that wait for `name` to meet `condition`."""
        return [
            other
            for other in self.target.services
            if (edge := self.target.service(other).depends_on.get(name)) is not None
            and edge.condition == condition
        ]

    def reached_by(self, name: str) -> str:
        """The unit a dependent of `name` orders itself after (an on-demand service's socket)."""
        return self.socket_unit(name) if self.on_demand(name) else self.service_unit(name)

    def workdir(self, name: str) -> str:
        root = os.path.abspath(self.target.config.root)
        return os.path.normpath(os.path.join(root, self.target.service(name).working_dir or ""))


def env_file_paths(target: Target, name: str) -> list[tuple[str, bool]]:
    """The absolute path of each of the service's env files, and whether it is required."""
    root = os.path.abspath(target.config.root)
    return [
        (os.path.normpath(os.path.join(root, ref.path)), ref.required)
        for ref in target.service(name).env_file
    ]


def read_env_files(target: Target) -> dict[str, str]:
    """The text of each env file the units name, for `export(env_files=...)`; a missing
    one is left out. The one function here that reads the disk (the command line calls it)."""
    texts: dict[str, str] = {}
    for name in target.services:
        for file, _ in env_file_paths(target, name):
            try:
                texts[file] = Path(file).read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as exc:
                raise ExportError(f"cannot read the env file {file}: {exc}") from None
    return texts


def export(
    target: Target, *, env_files: Mapping[str, str] | None = None, systemd_version: int = DEFAULT_VERSION
) -> Exported:
    """The units of `target` (see the module docstring). `env_files`: each env file's
    text by absolute path (`read_env_files`); `systemd_version`: the oldest systemd the
    units are for."""
    stack = _Stack(target, env_files, systemd_version)
    files: dict[str, str] = {}
    warnings: list[str] = []
    for name in target.services:
        units = _service(stack, name)
        for unit in units.values():
            warnings += [f"{name}: {note}" for note in unit.notes]
        files.update({file: unit.text() for file, unit in units.items()})
    head = _target(stack)
    warnings += head.notes
    return Exported({stack.unit: head.text(), **files}, warnings)


def _target(stack: _Stack) -> syntax.Unit:
    target = stack.target
    unit = syntax.Unit(
        [
            f"{stack.unit}: the stack {target.name}, written by `stackvisor export systemd` from"
            f" {target.config.path.name}.",
            f"systemctl start {stack.unit} starts it; systemctl stop {stack.unit} stops it.",
        ]
    )
    unit.notes += [STACK_WIDE, _INHERITED_ENV]
    if stack.version < RESTART_STEPS_SINCE and any(
        target.service(n).restart != RestartPolicy.NO
        and target.service(n).backoff.max > target.service(n).backoff.initial
        for n in target.services
    ):
        unit.notes.append(
            f"backoff: the units are for systemd {stack.version}, which restarts after RestartSec="
            " (backoff.initial) each time: a delay growing to backoff.max (RestartSteps=,"
            f" RestartMaxDelaySec=) needs systemd {RESTART_STEPS_SINCE}"
        )
    wanted = [stack.reached_by(n) for n in target.services if not target.service(n).schedule]
    wanted += [
        stack.timer_unit(n) for n in target.services if (s := target.service(n).schedule) and has_timer(s)
    ]
    unit.add("Unit", f"Description={syntax.plain(f'stack {target.name}')}")
    unit.add("Unit", *(f"Wants={w}" for w in wanted), *(f"After={w}" for w in wanted))
    unit.add("Install", "WantedBy=" + ("default.target" if target.user_units else "multi-user.target"))
    return unit


_INHERITED_ENV = (
    "environment: a service gets its own variables and the ports, not the environment"
    " stackvisor was started in (PATH is systemd's own unless env sets it)"
)


def _service(stack: _Stack, name: str) -> dict[str, syntax.Unit]:
    target, svc = stack.target, stack.target.service(name)
    own = stack.service_unit(name)
    unit = syntax.Unit([f"{own}: the service {name} of the stack {target.name} ({target.config.path.name})."])
    unit.notes += [note.removeprefix(f"{name}: ") for note in not_carried(target, name)]
    unit.add("Unit", f"Description={syntax.plain(f'{target.name}: {name}')}", f"PartOf={stack.unit}")
    for dep, edge in svc.depends_on.items():
        if dep not in target.services:
            continue
        reached = stack.reached_by(dep)
        unit.add("Unit", f"After={reached}", f"{'Requires' if edge.required else 'Wants'}={reached}")
        if edge.restart:
            unit.notes.append(
                f"depends_on.{dep}.restart: true holds when {dep} is restarted with systemctl"
                f" (Requires=), not when it crashes and comes back by itself"
            )
    oneshot = bool(stack.waiting(name, Condition.COMPLETED)) and not stack.on_demand(name)
    oneshot = oneshot or svc.schedule is not None  # each run ends; the timer starts the next
    stays = ["RemainAfterExit=yes"] if svc.schedule is None else []
    unit.add("Service", *(["Type=oneshot", *stays] if oneshot else ["Type=exec"]))
    unit.add("Service", f"ExecStart={syntax.exec_line(_argv(stack, name, unit))}")
    _health(stack, name, unit, oneshot)
    unit.add("Service", f"WorkingDirectory={syntax.path(stack.workdir(name))}")
    if svc.user and target.user_units:
        unit.notes.append(f"user: {svc.user}: a user unit runs as the user of its service manager")
    elif svc.user:
        user, _, group = svc.user.partition(":")
        unit.add(
            "Service", f"User={syntax.plain(user)}", *([f"Group={syntax.plain(group)}"] if group else [])
        )
    _environment(stack, name, unit)
    _restart(stack, name, unit, oneshot)
    # TimeoutStopSec=0 would mean no timeout at all; stackvisor's 0 kills at once.
    unit.add(
        "Service",
        "KillMode=control-group",
        f"KillSignal={svc.stop_signal}",
        f"TimeoutStopSec={syntax.duration(max(target.config.stop_timeout(svc), 0.001))}",
    )
    units = {own: unit}
    if svc.socket == "inherit":
        socket = stack.socket_unit(name)
        unit.add("Unit", f"Requires={socket}", f"After={socket}")
        unit.add("Service", f"Sockets={socket}")
        units[socket] = _socket(stack, name)
    elif svc.start == "on_demand":
        unit.notes.append("start: on_demand: with socket: proxy it starts with the stack")
    if svc.schedule is not None:  # its timer, not the stack, starts it
        clock, notes = timer(svc.schedule, own, f"{target.name}: {name}", stack.unit)
        unit.notes += notes
        if clock is not None:
            units[stack.timer_unit(name)] = clock
    elif not stack.on_demand(name):
        unit.add("Install", f"WantedBy={stack.unit}")
    return units


def _argv(stack: _Stack, name: str, unit: syntax.Unit) -> list[str]:
    ran = command(stack.target, name)
    if isinstance(ran, str):
        return shell_argv(ran)
    argv = list(ran)
    if "/" in argv[0] and not argv[0].startswith("/"):
        argv[0] = os.path.normpath(os.path.join(stack.workdir(name), argv[0]))  # as execvp from the folder
    elif "/" not in argv[0] and "PATH" in stack.target.service(name).env:
        unit.notes.append(
            f"command: systemd looks {argv[0]} up in its own search path, not in the PATH env sets:"
            " write its full path"
        )
    return argv


def _socket(stack: _Stack, name: str) -> syntax.Unit:
    port = stack.target.ports.get(name)
    unit = syntax.Unit([f"{stack.socket_unit(name)}: the listening socket of {name}, handed over as fd 3."])
    unit.add(
        "Unit", f"Description={syntax.plain(f'{stack.target.name}: {name} (socket)')}", f"PartOf={stack.unit}"
    )
    unit.add(
        "Socket",
        f"ListenStream=127.0.0.1:{port}",
        f"FileDescriptorName={name}",
        f"Service={stack.service_unit(name)}",
    )
    unit.add("Install", f"WantedBy={stack.unit}")
    return unit


def _health(stack: _Stack, name: str, unit: syntax.Unit, oneshot: bool) -> None:
    check = stack.target.service(name).healthcheck
    if check is None:
        return
    waiting = stack.waiting(name, Condition.HEALTHY)
    if not waiting or stack.on_demand(name) or oneshot:
        why = (
            "its dependents wait for its socket"
            if stack.on_demand(name)
            else "others wait for it to complete"
            if oneshot and waiting
            else "nothing here waits for it to be healthy"
        )
        unit.notes.append(f"healthcheck: not checked by systemd ({why}); failing does not restart it")
        return
    if check.kind == "log":
        unit.notes.append(
            "healthcheck log: systemd cannot wait for a line of output;"
            f" {', '.join(waiting)} start once it has started"
        )
        return
    limit = max(check.start_period + check.retries * check.interval, MIN_HEALTH_WAIT)
    argv = _wait_argv(stack, name, check, limit)
    unit.header.append(
        f"ExecStartPost= waits up to {limit:g}s for the {check.kind} health check (for {', '.join(waiting)});"
        " http and tcp are probed by python3 (2xx or 3xx, redirects not followed, as stackvisor)."
    )
    unit.add(
        "Service",
        f"ExecStartPost={syntax.exec_line(argv)}",
        f"TimeoutStartSec={syntax.duration(math.ceil(limit + check.timeout + check.interval + 5))}",
    )
    unit.notes.append(
        "healthcheck: checked at start only; once it has passed, a failing check does not restart it"
    )


def _wait_argv(stack: _Stack, name: str, check: HealthCheck, limit: float) -> list[str]:
    every = max(check.start_interval, 0.1)
    timing = [f"{check.timeout:g}", f"{every:g}"]
    if check.http is not None:
        return [
            "python3",
            "-c",
            syntax.PROBE,
            *timing,
            f"{limit:g}",
            "http",
            port_text(check.http, stack.target, name),
        ]
    if check.tcp is not None:
        host, port = split_host_port(port_text(check.tcp, stack.target, name))
        return ["python3", "-c", syntax.PROBE, *timing, f"{limit:g}", "tcp", host, str(port)]
    assert check.exec is not None
    if isinstance(check.exec, str):
        probe = ["/bin/sh", "-c", port_text(check.exec, stack.target, name)]
    else:
        probe = [port_text(part, stack.target, name) for part in check.exec]
    return ["/bin/sh", "-c", syntax.EXEC_PROBE_LOOP, "health-check", *timing, str(math.ceil(limit)), *probe]


def _environment(stack: _Stack, name: str, unit: syntax.Unit) -> None:
    wanted = environment(stack.target, name)
    files = env_file_paths(stack.target, name)
    read: dict[str, str] = {}
    source: dict[str, str] = {}
    if files and stack.env_files is None:
        unit.header.append(
            "The env_file values are in Environment= below: the files were not read to leave them out."
        )
    elif files:
        assert stack.env_files is not None
        for file, required in files:
            unit.add("Service", f"EnvironmentFile={'' if required else '-'}{syntax.path(file)}")
            values = syntax.environment_file(stack.env_files.get(file, ""))
            read.update(values)
            source.update(dict.fromkeys(values, file))
    for key, value in wanted.items():
        if key in read:  # the files give it, and win over Environment= (a difference is said below)
            continue
        if not syntax.ENV_NAME.fullmatch(key):
            unit.notes.append(f"env: {key}: not a name systemd gives a process")
        else:
            unit.add("Service", f"Environment={syntax.environment(key, value)}")
    for key, value in read.items():
        if wanted.get(key) != value:
            unit.notes.append(
                f"env: {key}: systemd takes it from {source[key]}, which it reads otherwise than stackvisor"
                " (env overrides it there, or quotes, `${...}` or `export` read differently):"
                " change one of them"
            )


def _restart(stack: _Stack, name: str, unit: syntax.Unit, oneshot: bool) -> None:
    svc = stack.target.service(name)
    policy = {RestartPolicy.NO: "no", RestartPolicy.ON_FAILURE: "on-failure"}.get(svc.restart, "always")
    if oneshot and policy == "always":
        policy = "on-failure"
        unit.notes.append(
            f"restart: {svc.restart}: others wait for it to complete, so it restarts on failure only"
        )
    unit.add("Service", f"Restart={policy}")
    if policy == "no":
        return
    backoff = svc.backoff
    unit.add(
        "Service",
        f"RestartSec={syntax.duration(backoff.initial)}",
        f"RestartPreventExitStatus={NOT_RUNNABLE}",
    )
    grows = stack.version >= RESTART_STEPS_SINCE and backoff.initial > 0 and backoff.max > backoff.initial
    if grows and backoff.factor > 1:
        steps = math.ceil(math.log(backoff.max / backoff.initial) / math.log(backoff.factor))
        unit.add("Service", f"RestartSteps={steps}", f"RestartMaxDelaySec={syntax.duration(backoff.max)}")
    if policy == "always" or svc.max_restarts == 0:
        unit.add("Unit", "StartLimitIntervalSec=0")  # never gives up
        return
    # `max_restarts` restarts in a row, each run shorter than `reset_after`, fit this window.
    delays = [
        min(backoff.initial * backoff.factor**k, backoff.max) if grows else backoff.initial
        for k in range(svc.max_restarts)
    ]
    window = sum(delays) + (svc.max_restarts + 1) * backoff.reset_after
    unit.add("Unit", f"StartLimitIntervalSec={math.ceil(window)}s", f"StartLimitBurst={svc.max_restarts + 1}")
