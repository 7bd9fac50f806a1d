"""`stackvisor export compose`: the stack as a `compose.yaml` (the Compose Specification).

Each service becomes a container of `image` (`--image`, or the service's
`x-kubernetes: {image: ...}`) that runs what stackvisor runs:
- `command`: a string through `/bin/sh -c`, as stackvisor starts it (`entrypoint` is
  set to nothing, so an image's own entrypoint does not wrap it); a list as it is;
- `environment`: the service's environment with its ports (`PORT`, `<NAME>_PORT`);
  a value that names `127.0.0.1` or `localhost` with the port of another service of
  the export names that service instead (`postgres://127.0.0.1:5432/app` becomes
  `postgres://db:5432/app`): containers do not share a loopback, Compose's network
  resolves service names;
- `ports`: the service's port published on the host's loopback under the same number
  (`127.0.0.1:8080:8080`), as it was reachable before;
- `depends_on` with its conditions, `restart: true` and `required`;
- `healthcheck`: an `exec` probe as `CMD` or `CMD-SHELL`; an `http` or `tcp` probe as a
  `CMD-SHELL` line that tries the tools images commonly have (curl, then wget, then
  python3; `nc`, then bash's `/dev/tcp`, then python3), with the same timings;
- `restart` (`on-failure:N` with `max_restarts`), `stop_signal`, `stop_grace_period`,
  `user`, `working_dir` (when absolute: a folder of the machine means nothing in an
  image), `labels`, `profiles`.
`$` is written `$$` everywhere Compose would interpolate. What Compose cannot express is
a comment at the top of the file and a warning (see `base.not_carried`).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from stackvisor.config.fields import HealthCheck
from stackvisor.config.kinds import RestartPolicy
from stackvisor.export.base import STACK_WIDE, Exported, Target, command, environment, not_carried, port_text

_LOOPBACK = re.compile(r"\b(?:127\.0\.0\.1|localhost):(\d+)\b")
_LOOPBACK_BIND = re.compile(r"\b(?:127\.0\.0\.1|localhost)\b")


def duration(seconds: float) -> str:
    """Compose's duration: `1m30s`, `250ms`, `10s`."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes and rest else f"{minutes}m" if minutes else f"{rest}s"


def escaped(text: str) -> str:
    return text.replace("$", "$$")


def reachable(value: str, target: Target, name: str) -> str:
    """`127.0.0.1:PORT` and `localhost:PORT` of another service of the export, as that
    service's name (see the module docstring)."""
    by_port = {port: other for other, port in target.ports.items() if port is not None and other != name}

    def swap(match: re.Match[str]) -> str:
        dep = by_port.get(int(match.group(1)))
        return f"{dep}:{match.group(1)}" if dep is not None else match.group(0)

    return _LOOPBACK.sub(swap, value)


def _probe(check: HealthCheck, target: Target, name: str) -> list[str] | None:
    if check.exec is not None:
        if isinstance(check.exec, list):
            return ["CMD", *(escaped(port_text(part, target, name)) for part in check.exec)]
        return ["CMD-SHELL", escaped(port_text(check.exec, target, name))]
    if check.http is not None:
        url = port_text(check.http, target, name)
        line = (
            f"curl -fsS -o /dev/null '{url}' || wget -q -O /dev/null '{url}' || python3 -c"
            f" 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' '{url}'"
        )
        return ["CMD-SHELL", escaped(line)]
    if check.tcp is not None:
        host, _, port = port_text(check.tcp, target, name).rpartition(":")
        line = (
            f"nc -z {host} {port} || bash -c '</dev/tcp/{host}/{port}' || python3 -c"
            " 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 5)'"
            f" {host} {port}"
        )
        return ["CMD-SHELL", escaped(line)]
    return None  # a `log` probe: said in the warnings


def _healthcheck(check: HealthCheck, target: Target, name: str) -> dict[str, Any] | None:
    test = _probe(check, target, name)
    if test is None:
        return None
    out: dict[str, Any] = {
        "test": test,
        "interval": duration(check.interval),
        "timeout": duration(check.timeout),
        "retries": check.retries,
    }
    if check.start_period:
        out["start_period"] = duration(check.start_period)
        out["start_interval"] = duration(max(check.start_interval, 0.001))
    return out


def _restart(target: Target, name: str) -> str:
    svc = target.service(name)
    if svc.restart is RestartPolicy.ON_FAILURE:
        return f"on-failure:{svc.max_restarts}"
    return str(svc.restart)


def service(target: Target, name: str) -> tuple[dict[str, Any], list[str]]:
    """One service of compose.yaml, and what of it did not carry over."""
    svc = target.service(name)
    lost = list(not_carried(target, name))
    ran = command(target, name)
    out: dict[str, Any] = {"image": target.image_of(name), "entrypoint": []}
    out["command"] = ["/bin/sh", "-c", escaped(ran)] if isinstance(ran, str) else [escaped(a) for a in ran]
    env = {key: escaped(reachable(value, target, name)) for key, value in environment(target, name).items()}
    if env:
        out["environment"] = env
    port = target.ports.get(name)
    if port is not None:
        out["ports"] = [f"127.0.0.1:{port}:{port}"]
    if svc.depends_on:
        out["depends_on"] = {
            dep: {"condition": str(d.condition), "restart": d.restart, "required": d.required}
            for dep, d in svc.depends_on.items()
            if dep in target.services
        }
    if svc.healthcheck is not None:
        check = _healthcheck(svc.healthcheck, target, name)
        if check is None:
            lost.append(f"{name}: a `log` health check has no Compose form: the service has none")
        else:
            out["healthcheck"] = check
    out["restart"] = _restart(target, name)
    if svc.backoff.initial != 0.5 or svc.backoff.max != 30.0:
        lost.append(f"{name}: backoff (the delays between restarts) is Docker's own")
    out["stop_signal"] = svc.stop_signal
    out["stop_grace_period"] = duration(target.config.stop_timeout(svc))
    if svc.user:
        out["user"] = svc.user
    if svc.working_dir and svc.working_dir.startswith("/"):
        out["working_dir"] = svc.working_dir
    elif svc.working_dir:
        lost.append(
            f"{name}: working_dir {svc.working_dir} is a folder of the machine: the image's own is used"
        )
    if isinstance(ran, str) and _LOOPBACK_BIND.search(ran):
        lost.append(
            f"{name}: its command names 127.0.0.1 or localhost:"
            " in a container, other services reach it only when it listens on 0.0.0.0"
        )
    if svc.schedule is not None:
        lost.append(f"{name}: schedule: Compose has no timetable: the container runs once at `up`")
    if svc.socket == "inherit" or svc.start == "on_demand":
        lost.append(
            f"{name}: socket: inherit and start: on_demand: the container starts at once and binds itself"
        )
    if svc.labels:
        out["labels"] = dict(svc.labels)
    if svc.profiles:
        out["profiles"] = list(svc.profiles)
    return out, lost


def project_name(target: Target) -> str:
    """Compose's project name: lowercase letters, digits, `_` and `-`, a letter or digit first."""
    name = re.sub(r"[^a-z0-9_-]+", "-", target.name.lower()).strip("-_")
    return name or "stack"


def export(target: Target) -> Exported:
    """`compose.yaml` for `target` (ExportError when a service has no image)."""
    target.require_images()
    services: dict[str, Any] = {}
    warnings: list[str] = []
    for name in target.services:
        services[name], lost = service(target, name)
        warnings += lost
    warnings.append(STACK_WIDE)
    document = {"name": project_name(target), "services": services}
    head = [f"# {target.name}: written by `stackvisor export compose` from {target.config.path.name}."]
    head += ["# Not carried over:"] + [f"#   {w}" for w in warnings]
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    return Exported({"compose.yaml": "\n".join(head) + "\n" + body}, warnings)
