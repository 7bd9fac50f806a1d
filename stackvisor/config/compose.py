"""What a docker compose file brings that stackvisor reads its own way, before validation.

Lives here: dropping `x-` extension fields wherever they are, `environment` lists whose
bare `KEY` takes its value from the environment, `deploy.replicas` and `scale` as
`replicas`, and a specific word for the fields that only make sense for containers.
Compose's other spellings (`environment`, `stop_grace_period`, `healthcheck.test`,
`env_file` entries, `labels`, `profiles`) are fields of the schema itself. Not here:
reading YAML (`yamlpos`), interpolation (`interpolate`), the schema (`schema`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackvisor.config.report import Report

# What to write instead of a container's field: stackvisor runs processes.
_NO_MAPPING = "there is no port mapping: write `port:`, the port the process listens on"
_SHARED_NETWORK = "processes share the machine's network: reach a service on 127.0.0.1:${NAME_PORT}"
_MACHINE = (
    "processes share the machine's name, network and resolver: reach a service on 127.0.0.1:${NAME_PORT}"
)
_NO_IMAGE = "there is no image to run: write `command:` with the program to start"
_NO_TERMINAL = "a service has no terminal: its output goes to logs/<service>.log and the console"
_RIGHTS = "a process has its user's rights: write `user:` to run it as another user"
_NO_LIMITS = "stackvisor sets no resource limits (`status` shows what each service uses)"
CONTAINER_ONLY = {
    "image": _NO_IMAGE,
    "platform": _NO_IMAGE,
    "pull_policy": _NO_IMAGE,
    "build": "there is nothing to build: write `command:` with the program to start",
    "volumes": "a process sees the machine's files: name paths in `command`, `env` or `working_dir`",
    "networks": _SHARED_NETWORK,
    "network_mode": _SHARED_NETWORK,
    "deploy": (
        "there is nothing to deploy: `restart`, `max_restarts` and `backoff` say how it restarts"
        " (`deploy.replicas` is read as `replicas`)"
    ),
    "container_name": "a service is named by its key",
    "ports": _NO_MAPPING,
    "expose": _NO_MAPPING,
    "hostname": _MACHINE,
    "domainname": _MACHINE,
    "extra_hosts": _MACHINE,
    "dns": _MACHINE,
    "init": "the supervisor reaps every process its services start: there is no init to add",
    "tty": _NO_TERMINAL,
    "stdin_open": _NO_TERMINAL,
    "logging": "output goes to logs/<service>.log (and to the console with `up`)",
    "privileged": _RIGHTS,
    "cap_add": _RIGHTS,
    "cap_drop": _RIGHTS,
    "security_opt": _RIGHTS,
    "mem_limit": _NO_LIMITS,
    "cpus": _NO_LIMITS,
    "ulimits": _NO_LIMITS,
    "pids_limit": _NO_LIMITS,
}


def carry_over(data: dict[str, Any], variables: Mapping[str, str], report: Report) -> dict[str, Any]:
    """The document with Compose's habits turned into stackvisor's (see the module)."""
    out: dict[str, Any] = without_extensions(data)
    services = out.get("services")
    if isinstance(services, dict):
        out["services"] = {
            name: _service(name, service, variables, report) if isinstance(service, dict) else service
            for name, service in services.items()
        }
    return out


def _service(
    name: str, written: dict[str, Any], variables: Mapping[str, str], report: Report
) -> dict[str, Any]:
    service = dict(written)
    _copies(name, service, report)
    for field, instead in CONTAINER_ONLY.items():
        if field not in service:
            continue
        written_value = service.pop(field)
        hint = _published(written_value) if field in ("ports", "expose") else None
        also = f" (here: `port: {hint}`)" if hint else ""
        message = f"stackvisor runs processes, not containers: {instead}{also}"
        report.add(("services", name, field), message, key=True)
    for field in ("env", "environment"):
        if isinstance(service.get(field), list):
            service[field] = _inherited(service[field], variables)
    return service


def _copies(name: str, service: dict[str, Any], report: Report) -> None:
    """Compose's `deploy.replicas` and `scale` are `replicas`; said more than once, they
    must agree."""
    said: dict[str, Any] = {}
    deploy = service.get("deploy")
    if isinstance(deploy, dict) and "replicas" in deploy:
        rest = {k: v for k, v in deploy.items() if k != "replicas"}
        said["deploy.replicas"] = deploy["replicas"]
        if rest:
            service["deploy"] = rest  # what is left is a container's, reported below
        else:
            del service["deploy"]
    if "scale" in service:
        said["scale"] = service.pop("scale")
    if not said:
        return
    if "replicas" in service:
        said = {"replicas": service["replicas"], **said}
    if len({repr(v) for v in said.values()}) > 1:
        where = ("services", name, *(("deploy", "replicas") if "deploy.replicas" in said else ("scale",)))
        told = " and ".join(f"{field} says {value}" for field, value in said.items())
        report.add(where, f"{told}: write one `replicas`")
    service["replicas"] = next(iter(said.values()))


def _published(ports: Any) -> str | None:
    """The port on the machine's side of a single `ports` entry ("8080:80" -> 8080)."""
    if not isinstance(ports, list) or len(ports) != 1:
        return None
    parts = str(ports[0]).split("/")[0].split(":")
    port = parts[-2] if len(parts) > 1 else parts[0]
    return port if port.isdigit() else None


def without_extensions(value: Any) -> Any:
    """`x-` fields dropped at every level: anchors to reuse (`x-defaults: &defaults`) and
    notes for other tools. Merge keys have already copied what they share."""
    if isinstance(value, dict):
        return {k: without_extensions(v) for k, v in value.items() if not str(k).startswith("x-")}
    if isinstance(value, list):
        return [without_extensions(item) for item in value]
    return value


def _inherited(items: list[Any], variables: Mapping[str, str]) -> list[Any]:
    """`- KEY` alone takes KEY's value from the environment (or `.env`), as in Compose; it
    is left out when neither has it. The value is protected from interpolation (`$$`)."""
    out = []
    for item in items:
        if isinstance(item, str) and "=" not in item:
            if item in variables:
                out.append(f"{item}={variables[item].replace('$', '$$')}")
            continue
        out.append(item)
    return out
