"""The services.yaml schema as pydantic models.

Only the shape and the per-field rules live here. Reading YAML with line numbers is
in `yamlpos`, env files in `envfiles`, `${VAR}` interpolation and putting it all
together in `loader`, the syntax of `host:port` in `address`; cross-service rules that
need the whole stack (unknown dependencies, cycles, `service_healthy` without a
healthcheck) are checked by `checks` with `stackvisor.graph`.

Durations are stored as float seconds. Port variables (`${PORT}`, `${DB_PORT}`) are
still unexpanded here: they are known only once ports are resolved at start time.
"""

from __future__ import annotations

import ipaddress
import re
import signal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

from stackvisor.config.address import split_host_port
from stackvisor.config.endpoint import auth_header, check_url
from stackvisor.config.fields import (
    Backoff,
    Daemon,
    Dependency,
    Duration,
    EnvFile,
    HealthCheck,
    Interval,
    Model,
    Port,
    PortRange,
    Shutdown,
    SignalName,
    Watch,
    port_number,
    port_range,
    whole_number,
)
from stackvisor.config.kinds import DEFAULT_PORT_TYPES, Condition, RestartPolicy, Strategy, parse_duration
from stackvisor.config.timetable import Schedule, nothing_waits_for_a_schedule, scheduled_service

__all__ = [
    "Backoff",
    "Condition",
    "Dependency",
    "EnvFile",
    "HealthCheck",
    "ReportSettings",
    "RestartPolicy",
    "Service",
    "Settings",
    "StackConfig",
    "Strategy",
    "Watch",
    "parse_duration",
]


# More copies of one service than this is a typo, not a stack one machine runs.
MAX_REPLICAS = 1000


class Service(Model):
    name: str = ""
    command: str | list[str]
    port: Port | Literal["auto"] | None = None
    alternative_ports: list[Port] = []
    port_range: tuple[int, int] | None = None
    # The registry's service type: with `port: auto`, the port comes from its range.
    type: str | None = None
    process_patterns: list[str] = []
    healthcheck: HealthCheck | None = None
    depends_on: dict[str, Dependency] = {}
    # Compose's `environment` is the same field.
    env: dict[str, str] = Field(default={}, validation_alias=AliasChoices("env", "environment"))
    env_file: list[EnvFile] = []
    working_dir: str | None = None
    # Run as this user (`NAME` or `NAME:GROUP`, names or ids), as Compose's `user`.
    user: str | None = None
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: int = Field(default=5, ge=0)
    backoff: Backoff = Backoff()
    stop_signal: SignalName = "SIGTERM"
    # Compose's `stop_grace_period` is the same field.
    stop_timeout: Duration | None = Field(
        default=None, validation_alias=AliasChoices("stop_timeout", "stop_grace_period")
    )
    watch: list[Watch] = []
    conflict_strategy: Strategy | None = None
    # "inherit": the supervisor binds the port and hands the listening socket over
    # (systemd's LISTEN_FDS protocol, fd 3), so nobody can take it between our check
    # and the child's bind, and a restart never meets a conflict.
    # "proxy": the supervisor keeps the public port and forwards each connection to the
    # service on an internal port (`${PORT}` in the service; `<NAME>_PORT` stays public).
    socket: Literal["inherit", "proxy"] | None = None
    # `on_demand`: the supervisor holds the port's listening socket from `up` on and
    # starts the service at the first connection (the socket handed over, or proxied).
    start: Literal["always", "on_demand"] = "always"
    # Stopped after this long without an established connection on its port.
    idle_stop: Duration | None = None
    # Stopped unless `stackvisor heartbeat SERVICE` comes within every `lease`.
    lease: Duration | None = None
    # Run as a one-shot on a timetable (cron or an interval), not at `up` (see `timetable`).
    schedule: Schedule | None = None
    # Kept as written, shown in `status --json` (Compose's labels: notes for tools).
    labels: dict[str, str] = {}
    # Compose's profiles: a service with profiles starts only when one of them is
    # active (`--profile`, STACKVISOR_PROFILES) or when it is named; others always start.
    profiles: list[str] = []
    # A group of services for `up/status/restart --namespace` and the views (a name).
    namespace: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # Kept in the file, not started by `up` unless named (or needed by what starts).
    disabled: bool = False
    # A program that forks into the background: follow the process it leaves (`daemon`);
    # stop it with a command rather than a signal first (`shutdown`).
    daemon: Daemon | None = None
    shutdown: Shutdown | None = None
    # Copies of the service, each its own process and port (see `replicas`).
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)

    @model_validator(mode="before")
    @classmethod
    def _compose_spellings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for ours, theirs in (("env", "environment"), ("stop_timeout", "stop_grace_period")):
            if ours in value and theirs in value:
                raise ValueError(f"{ours} and {theirs} are the same field: write one of them")
        check = value.get("healthcheck")
        if isinstance(check, dict) and (check.get("disable") is True or check.get("test") == ["NONE"]):
            value = {k: v for k, v in value.items() if k != "healthcheck"}  # Compose: no check
        policy, _, count = str(value.get("restart", "")).partition(":")
        if policy == "on-failure" and count.strip().isdigit():  # Compose's `on-failure:N`
            if "max_restarts" in value and str(value["max_restarts"]) != count.strip():
                said = f"restart: {value['restart']} and max_restarts: {value['max_restarts']}"
                raise ValueError(f"{said} say two counts: write one of them")
            value = {**value, "restart": "on-failure", "max_restarts": int(count)}
        return value

    @model_validator(mode="after")
    def _inherit_needs_a_port(self) -> Service:
        if self.socket is not None and not isinstance(self.port, int):
            raise ValueError(f"socket: {self.socket} needs a fixed port (a number)")
        if self.start == "on_demand" and self.socket is None:
            raise ValueError(
                "start: on_demand needs socket: inherit or proxy (the supervisor holds the port)"
            )
        if self.idle_stop is not None and self.port is None:
            raise ValueError("idle_stop needs a port: idleness is counted in connections to it")
        return self

    @model_validator(mode="before")
    @classmethod
    def _scheduled(cls, value: Any) -> Any:
        return scheduled_service(value)  # each run a one-shot: `restart: no` unless said

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
            raise ValueError("expected a non-empty command")
        return value

    @field_validator("depends_on", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        # Compose's short form: a list of names means `condition: service_started`.
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of service names or a mapping")
            return {name: {} for name in value}
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_form(cls, value: Any) -> Any:
        # Compose allows a list of KEY=VALUE; scalar values are stringified like Compose does.
        if isinstance(value, list):
            out: dict[str, str] = {}
            for item in value:
                if not isinstance(item, str):
                    raise ValueError("expected KEY=VALUE strings")
                key, _, val = item.partition("=")
                out[key] = val
            return out
        if isinstance(value, dict):
            return {
                str(k): ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in value.items()
            }
        return value

    @field_validator("env_file", "watch", "process_patterns", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("env_file", mode="before")
    @classmethod
    def _env_file_short_form(cls, value: Any) -> Any:
        # A plain path is a required file.
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_form(cls, value: Any) -> Any:
        # Compose allows a list of KEY=VALUE, and scalar values.
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return dict(item.partition("=")[::2] for item in value)
        if isinstance(value, dict):
            return {str(k): "" if v is None else str(v) for k, v in value.items()}
        return value

    @field_validator("watch", mode="before")
    @classmethod
    def _watch_short_form(cls, value: Any) -> Any:
        # A plain glob means: restart on a change of a matching file.
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            return [{"path": item} if isinstance(item, str) else item for item in items]
        return value

    @field_validator("port_range", mode="before")
    @classmethod
    def _range(cls, value: Any) -> Any:
        return port_range(value)

    @property
    def signal_number(self) -> int:
        return int(signal.Signals[self.stop_signal])

    def candidate_ports(self) -> list[int]:
        """Migration candidates in the order they are tried: alternatives, then the range."""
        out = list(self.alternative_ports)
        if self.port_range:
            out += [p for p in range(self.port_range[0], self.port_range[1] + 1) if p not in out]
        return out


class ControlSettings(Model):
    socket: str = ".stackvisor/control.sock"
    tcp: str | None = None
    allow_remote: bool = False

    @field_validator("tcp")
    @classmethod
    def _tcp_address(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @model_validator(mode="after")
    def _tcp_on_loopback(self) -> ControlSettings:
        if self.tcp is None:
            return self
        host, _ = split_host_port(self.tcp)
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback and not self.allow_remote:
            raise ValueError(f"tcp: {host} is not a loopback address; set allow_remote: true to listen on it")
        return self


def _port_span(value: Any) -> Any:
    """`4444` or `"6666-6669"` (or `[6666, 6669]`) as a (low, high) pair."""
    if whole_number(value):
        return (port_number(int(value)), int(value))
    if isinstance(value, bool) or value == "any" or (isinstance(value, str) and "-" not in value):
        raise ValueError(f"expected a port like 4444 or a range like 6666-6669 (got {value!r})")
    return port_range(value)


# Ports whose listeners `stackvisor audit` flags: the usual defaults of remote-access
# tools and old trojans (Metasploit's 4444, Back Orifice's 31337, NetBus's 12345,
# SubSeven's 27374, Sasser's 5554), 1337, and IRC's 6666-6669 (botnet control).
DEFAULT_SUSPICIOUS_PORTS = [
    (1337, 1337),
    (4444, 4444),
    (5554, 5554),
    (6666, 6669),
    (12345, 12345),
    (27374, 27374),
    (31337, 31337),
]


class AuditSettings(Model):
    """What `stackvisor audit` flags beside its fixed rules (see `ports.audit`)."""

    suspicious_ports: list[Annotated[tuple[int, int], BeforeValidator(_port_span)]] = DEFAULT_SUSPICIOUS_PORTS


class ReportSettings(Model):
    """Reports of the stack pushed to an endpoint (see `runtime.reports`)."""

    # None: sent only by `stackvisor report --once --url URL`.
    url: str | None = None
    interval: Interval = 30.0
    # Ports and processes are looked at for a report at most this often.
    scan_interval: Interval = 2.0
    # `Bearer TOKEN`, `Basic user:password` or `Header-Name: value`; write `${VAR}`.
    auth: str | None = Field(default=None, repr=False)
    fields: dict[str, JsonValue] = {}
    include_audit: bool = False
    retries: int = Field(default=3, ge=0, le=10)
    timeout: Duration = Field(default=10.0, gt=0)
    on_change: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str | None) -> str | None:
        if value is not None:
            auth_header(value)
        return value


def _file_mode(value: Any) -> int:
    """`0640` (YAML reads it as octal), `"0640"` or `"640"` -> 0o640."""
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3}", value.strip()):
        value = int(value.strip().removeprefix("0").removeprefix("o"), 8)
    if not isinstance(value, int) or isinstance(value, bool) or value & ~0o666 or value & 0o600 != 0o600:
        shown = f"{value:04o}" if isinstance(value, int) and not isinstance(value, bool) else repr(value)
        raise ValueError(
            f"expected a file mode from 0600 to 0666 that lets the owner read and write (got {shown})"
        )
    return value


LogsMode = Annotated[int, BeforeValidator(_file_mode)]


class Settings(Model):
    strategy: Strategy = Strategy.INTELLIGENT
    reserved_ports: list[Port] = []
    # Service types of the port registry beside (or instead of) the defaults:
    # `name: 9000-9099`, or `any`.
    port_types: dict[str, PortRange] = {}
    protected_processes: list[str] = []
    dev_server_patterns: list[str] | None = None
    stop_timeout: Duration = 10.0
    logs_dir: str = "logs"
    # Who may read the logs: owner only by default (services print secrets); `0640`
    # lets the group read, and the folder follows (0750).
    logs_mode: LogsMode = 0o600
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    log_backups: int = Field(default=3, ge=0)
    reload: bool = True
    reload_debounce: Duration = 0.1
    # `socket: proxy`: the kernel carries a serving service's new connections where we may
    # (`runtime.forwarding`), else the relay; `relay` copies every byte itself.
    proxy_forwarding: Literal["relay", "kernel"] = "kernel"
    control: ControlSettings = ControlSettings()
    report: ReportSettings | None = None
    audit: AuditSettings = AuditSettings()


class StackConfig(Model):
    """A whole, validated stack. `path` is the file, `root` its folder."""

    name: str = ""
    settings: Settings = Settings()
    services: dict[str, Service]
    path: Path = Path("services.yaml")
    # Filled in by the loader: each service with `replicas` other than 1, as written;
    # `services` holds its copies (see `replicas`).
    groups: dict[str, Service] = {}

    @model_validator(mode="after")
    def _ports_from_types(self) -> StackConfig:
        """`port: auto` with a `type:` takes its port from the type's range (unless the
        service has a `port_range` of its own). An unknown type is reported by
        `checks.check_stack`, with its place in the file."""
        types = self.port_types()
        for name, svc in list(self.services.items()):
            span = types.get(svc.type) if svc.type else None
            if svc.port == "auto" and svc.port_range is None and span is not None:
                self.services[name] = svc.model_copy(update={"port_range": span})
        return self

    @field_validator("services")
    @classmethod
    def _scheduled_alone(cls, services: dict[str, Service]) -> dict[str, Service]:
        nothing_waits_for_a_schedule(services)
        return services

    def port_types(self) -> dict[str, tuple[int, int] | None]:
        return {**DEFAULT_PORT_TYPES, **self.settings.port_types}

    @property
    def root(self) -> Path:
        return self.path.parent

    def stop_timeout(self, service: Service) -> float:
        return service.stop_timeout if service.stop_timeout is not None else self.settings.stop_timeout

    def graph(self) -> dict[str, list[str]]:
        """service -> the services it depends on, for `stackvisor.graph`."""
        return {name: list(svc.depends_on) for name, svc in self.services.items()}
