"""The pod of one service for `stackvisor export kubernetes`: its container (command,
environment, folder, user, port, probes) and the init containers that wait for its
dependencies. The objects around it (Deployment, Job, Service), the names and the files
are `kubernetes`'s.

What cannot be carried over is added to a list (`lost`, said as in `base.not_carried` but
without the service's name, which the caller puts first). Pure, like `base`.

Kubernetes expands `$(VAR)` in a container's command, args and env values, and reads
`$$` as one `$`: a `$` followed by `$` or `(` is written `$$` there so the text reaches
the process as stackvisor would start it. Probes and init containers are not expanded.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from stackvisor.config.address import split_host_port
from stackvisor.config.commands import shell_argv
from stackvisor.config.fields import HealthCheck
from stackvisor.config.kinds import Condition, RestartPolicy
from stackvisor.export.base import Target, command, environment, port_text

# A relative `working_dir` is taken as relative to this folder: the image is expected to
# hold the stack's folder there (`COPY . /app`, `WORKDIR /app`).
APP_DIR = "/app"
# What waits for a dependency's Service: a small image that has `nc` whatever the
# service's own image has (a distroless or scratch image has no shell at all).
WAIT_IMAGE = "busybox:1.36"

_DOLLAR = re.compile(r"\$(?=[$(])")
_LOOPBACK_PORT = re.compile(r"(?<![\w.-])(?:127\.0\.0\.1|localhost|\[::1\]):(\d{1,5})(?!\d)")
_LOOPBACK = re.compile(r"(?<![\w.:-])(?:127\.0\.0\.1|localhost|\[?::1\]?)(?![\w.-])")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""}


@dataclass
class Pod:
    """A pod's spec and what of the service it leaves out."""

    spec: dict[str, Any]
    lost: list[str] = field(default_factory=list)


def escaped(text: str) -> str:
    """`text` as Kubernetes must be given it to pass it on unchanged (see the module)."""
    return _DOLLAR.sub("$$", text)


def seconds(value: float, least: int = 1) -> int:
    """A duration as the whole seconds Kubernetes counts in, rounded up."""
    return max(least, math.ceil(value))


def pod(target: Target, name: str, names: dict[str, str], image: str, *, job: bool) -> Pod:
    """The pod of `name` (`job`: run to completion), `names` mapping every exported
    service to its Kubernetes name."""
    svc = target.service(name)
    lost: list[str] = []
    container: dict[str, Any] = {"name": names[name], "image": image}
    container.update(_command(target, name, lost))
    env = [{"name": key, "value": value} for key, value in _environment(target, name, names).items()]
    if env:
        container["env"] = env
    if svc.working_dir is not None:
        container["workingDir"] = _folder(svc.working_dir, lost)
    port = target.ports.get(name)
    if port is not None:
        container["ports"] = [{"containerPort": port, "protocol": "TCP"}]
    if svc.healthcheck is not None:
        probe = _probe(svc.healthcheck, target, name, lost)
        if probe is not None:
            container["readinessProbe"] = probe
            if svc.restart is not RestartPolicy.NO:
                # stackvisor restarts an unhealthy service unless `restart: no`.
                delay = seconds(svc.healthcheck.start_period, least=0)
                container["livenessProbe"] = {**probe, **({"initialDelaySeconds": delay} if delay else {})}
    if svc.user is not None and (security := _security(svc.user, lost)):
        container["securityContext"] = security
    if svc.stop_signal != "SIGTERM":
        lost.append(
            f"stop_signal: {svc.stop_signal}: Kubernetes stops it with the image's STOPSIGNAL (SIGTERM)"
        )

    spec: dict[str, Any] = {
        # Kubernetes would add `<NAME>_PORT=tcp://...` for every Service: ours say the port.
        "enableServiceLinks": False,
        "restartPolicy": _restart_policy(svc.restart) if job else "Always",
        "terminationGracePeriodSeconds": seconds(target.config.stop_timeout(svc), least=0),
    }
    waits = _waits(target, name, names, lost)
    if waits:
        spec["initContainers"] = waits
    spec["containers"] = [container]
    return Pod(spec, lost)


def _restart_policy(policy: RestartPolicy) -> str:
    return "Never" if policy is RestartPolicy.NO else "OnFailure"


def _command(target: Target, name: str, lost: list[str]) -> dict[str, list[str]]:
    """`command` and `args`: a string through `/bin/sh -c` (a single simple command
    `exec`'d, as stackvisor runs it), a list exec'd as it is."""
    ran = command(target, name)
    if any(_LOOPBACK.search(part) for part in ([ran] if isinstance(ran, str) else ran)):
        lost.append(
            "its command names 127.0.0.1 or localhost, which is its own pod: a server must listen "
            "on 0.0.0.0 to be reached through its Service, other services are reached by their names"
        )
    if isinstance(ran, str):
        shell, flag, line = shell_argv(ran)
        return {"command": [shell, flag], "args": [escaped(line)]}
    argv = [escaped(part) for part in ran]
    return {"command": argv[:1], "args": argv[1:]} if len(argv) > 1 else {"command": argv}


def reachable(value: str, target: Target, name: str, names: dict[str, str]) -> str:
    """`127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT` where PORT is another exported
    service's port, as that service's name and port: pods do not share a loopback, and
    the cluster's DNS resolves a Service's name. Not only its dependencies: an address
    is often handed down (api reads the database that a migration it waits for waited for)."""
    by_port: dict[int, str | None] = {}
    for other, port in target.ports.items():
        if port is not None and other != name:
            by_port[port] = None if port in by_port else other  # two with one port: neither

    def swap(match: re.Match[str]) -> str:
        other = by_port.get(int(match.group(1)))
        return f"{names[other]}:{match.group(1)}" if other is not None else match.group(0)

    return _LOOPBACK_PORT.sub(swap, value)


def _environment(target: Target, name: str, names: dict[str, str]) -> dict[str, str]:
    return {
        key: escaped(reachable(value, target, name, names))
        for key, value in environment(target, name).items()
    }


def _folder(working_dir: str, lost: list[str]) -> str:
    if posixpath.isabs(working_dir):
        return posixpath.normpath(working_dir)
    folder = posixpath.normpath(posixpath.join(APP_DIR, working_dir))
    lost.append(
        f"working_dir: {working_dir} is taken as {folder}: the image holds the stack's folder at {APP_DIR}"
    )
    return folder


def _security(user: str, lost: list[str]) -> dict[str, int]:
    """`runAsUser` and `runAsGroup` from `user: UID[:GID]`: a name means the user database
    of this machine, which a container does not share."""
    who, _, group = user.partition(":")
    context: dict[str, int] = {}
    for key, part in (("runAsUser", who), ("runAsGroup", group)):
        if part.isascii() and part.isdigit():
            context[key] = int(part)
        elif part:
            lost.append(f"user: {part} is a name; Kubernetes takes numeric ids only (write {key} by hand)")
    return context


def _handler(check: HealthCheck, target: Target, name: str, lost: list[str]) -> dict[str, Any] | None:
    """What a probe does: run a program, get a URL, or connect."""
    if check.exec is not None:
        if isinstance(check.exec, str):
            return {"exec": {"command": ["/bin/sh", "-c", port_text(check.exec, target, name)]}}
        return {"exec": {"command": [port_text(part, target, name) for part in check.exec]}}
    if check.log is not None:
        lost.append("healthcheck: log (a line of its output) has no probe in Kubernetes: no readiness probe")
        return None
    scheme, path = "", ""
    if check.http is not None:
        url = urlsplit(port_text(check.http, target, name))
        scheme, path = url.scheme, (url.path or "/") + (f"?{url.query}" if url.query else "")
        try:
            host, port = url.hostname or "", url.port or (443 if scheme == "https" else 80)
        except ValueError:
            host, port = "", 0
        if scheme not in ("http", "https") or not host or not port:
            lost.append(f"healthcheck: http: {check.http} is not an http(s) URL with a port: no probe")
            return None
    else:
        host, port = split_host_port(port_text(check.tcp or "", target, name))
    local = host in _LOCAL_HOSTS
    other = next((o for o, p in target.ports.items() if p == port and o != name), None)
    if local and other is not None and port != target.ports.get(name):
        # stackvisor probes the machine; the kubelet probes this pod, where the port is closed.
        lost.append(f"healthcheck: it probes {other}'s port {port}, which is not in its pod: no probe")
        return None
    where = {} if local else {"host": host}
    if scheme:
        return {"httpGet": {"path": path, "port": port, **where, "scheme": scheme.upper()}}
    return {"tcpSocket": {"port": port, **where}}


def _probe(check: HealthCheck, target: Target, name: str, lost: list[str]) -> dict[str, Any] | None:
    """A readiness (and liveness) probe with the health check's timings."""
    handler = _handler(check, target, name, lost)
    if handler is None:
        return None
    if any(value < 1 or not float(value).is_integer() for value in (check.interval, check.timeout)):
        lost.append(
            f"healthcheck: interval {check.interval:g}s and timeout {check.timeout:g}s are rounded up "
            "to whole seconds"
        )
    if "start_interval" in check.model_fields_set:
        lost.append("healthcheck: start_interval: probes run every `interval` from the start")
    timing = {
        "periodSeconds": seconds(check.interval),
        "timeoutSeconds": seconds(check.timeout),
        "failureThreshold": check.retries,
    }
    return {**handler, **timing}


def _waits(target: Target, name: str, names: dict[str, str], lost: list[str]) -> list[dict[str, Any]]:
    """An init container per dependency with a port, waiting until its Service takes a
    connection. A Service routes only to ready pods, so this waits for a dependency's
    readiness probe too: `service_healthy` holds as well as `service_started`."""
    waits: list[dict[str, Any]] = []
    svc = target.service(name)
    for index, dep in enumerate(sorted(svc.depends_on), 1):
        if dep not in names:
            continue
        edge = svc.depends_on[dep]
        port = target.ports.get(dep)
        if edge.restart:
            lost.append(f"depends_on: {dep} restart: true: it is not restarted when {dep} is")
        if edge.condition is Condition.COMPLETED or port is None:
            completed = edge.condition is Condition.COMPLETED
            why = "a pod cannot wait for a Job to complete" if completed else "it has no port to wait on"
            lost.append(
                f"depends_on: {dep} ({edge.condition}) is not waited for ({why}): "
                f"it may fail and be restarted until {dep} is done"
            )
            continue
        host = names[dep]
        wait = f"wait-{host}" if len(host) <= 58 else f"wait{index}-{host}"[:63].rstrip("-")
        waits.append(
            {
                "name": wait,
                "image": WAIT_IMAGE,
                "command": ["sh", "-c", f"until nc -z -w 2 {host} {port}; do sleep 1; done"],
            }
        )
    return waits
