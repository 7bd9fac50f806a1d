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
import math
import re
import signal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from stackvisor.config.address import split_host_port

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# The longest duration any field takes: a week. Longer is a typo, and would overflow
# the event loop's timers.
MAX_DURATION = 7 * 24 * 3600.0


def parse_duration(value: Any) -> float:
    """`500ms`, `2s`, `1m`, `1h` or a plain number of seconds -> float seconds, 0 to a week."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds is None or math.isnan(seconds):
        raise ValueError(f"expected a duration like 500ms, 2s, 1m or a number of seconds (got {value!r})")
    if seconds < 0:
        raise ValueError("expected a duration that is not negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"expected a duration of at most a week (168h) (got {value!r})")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
MIN_INTERVAL = 0.01


def _interval(seconds: float) -> float:
    if seconds < MIN_INTERVAL:
        raise ValueError(f"expected at least 10ms: a shorter interval is a busy loop (got {seconds:g}s)")
    return seconds


# How often something is done: never so often that it becomes a busy loop.
Interval = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_interval)]


class Strategy(StrEnum):
    CONSERVATIVE = "conservative"
    AGGRESSIVE = "aggressive"
    INTELLIGENT = "intelligent"


class Condition(StrEnum):
    STARTED = "service_started"
    HEALTHY = "service_healthy"
    COMPLETED = "service_completed_successfully"


class RestartPolicy(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _port_number(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"expected a port between 1 and 65535 (got {value})")
    return value


Port = Annotated[int, Field(ge=1, le=65535)]


def _whole_number(value: Any) -> bool:
    # bool is an int subclass, and `true` is not a port.
    if isinstance(value, str):
        return value.strip().isdigit()
    return isinstance(value, int) and not isinstance(value, bool)


class HealthCheck(_Model):
    """Exactly one probe (`http`, `tcp`, `exec`, `log`) plus Compose's timing fields."""

    http: str | None = None
    tcp: str | None = None
    exec: str | list[str] | None = None
    log: str | None = None
    interval: Interval = 10.0
    timeout: Interval = 2.0
    retries: int = Field(default=3, ge=1)
    start_period: Duration = 0.0
    # Until the first success, probe this often: dependents wait on it (Compose's field).
    start_interval: Interval = 0.02

    @model_validator(mode="after")
    def _one_probe(self) -> HealthCheck:
        probes = [k for k in ("http", "tcp", "exec", "log") if getattr(self, k) is not None]
        if len(probes) != 1:
            got = ", ".join(probes) if probes else "none"
            raise ValueError(f"expected exactly one of http, tcp, exec, log (got {got})")
        if self.log is not None:
            try:
                re.compile(self.log)
            except re.error as exc:
                raise ValueError(f"log: not a valid regular expression: {exc}") from None
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("http", "tcp", "exec", "log") if getattr(self, k) is not None)


class Dependency(_Model):
    """One `depends_on` entry, with Compose's fields (the short form's list gives defaults)."""

    # What the dependency must reach before this service starts.
    condition: Condition = Condition.STARTED
    # Restart this service too whenever the dependency is restarted (`stackvisor
    # restart`, or a reload that changed the dependency).
    restart: bool = False
    # Compose's `required`: false means the dependency does not block this service
    # when it is not in the selection (`up` of a subset) or cannot start; this service
    # then starts without it. True (the default) makes both a hard requirement.
    required: bool = True


def _signal_name(value: str) -> str:
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in signal.Signals.__members__:
        raise ValueError(f"expected a signal name like SIGTERM or SIGHUP (got {value!r})")
    return name


SignalName = Annotated[str, AfterValidator(_signal_name)]


class Watch(_Model):
    """One `watch` entry: a glob (relative to the stack file) and what a change of a
    matching file does to the service."""

    path: str
    # restart: stop and start it (a one-shot that completed runs again); rerun: the same,
    # the name that reads right for one-shots (render a config, run migrations);
    # signal: send `signal` to its process, which reloads by itself (nginx, postgres).
    action: Literal["restart", "rerun", "signal"] = "restart"
    signal: SignalName | None = None

    @model_validator(mode="before")
    @classmethod
    def _hangup_by_default(cls, value: Any) -> Any:
        if isinstance(value, dict) and value.get("action") == "signal" and value.get("signal") is None:
            return {**value, "signal": "SIGHUP"}
        return value

    @model_validator(mode="after")
    def _signal_with_its_action(self) -> Watch:
        if self.action != "signal" and self.signal is not None:
            raise ValueError(f"signal: is for action: signal (this entry says action: {self.action})")
        return self


class Backoff(_Model):
    initial: Duration = 0.5
    max: Duration = 30.0
    factor: float = Field(default=2.0, ge=1.0)
    reset_after: Duration = 10.0


class Service(_Model):
    name: str = ""
    command: str | list[str]
    port: Port | Literal["auto"] | None = None
    alternative_ports: list[Port] = []
    port_range: tuple[int, int] | None = None
    process_patterns: list[str] = []
    healthcheck: HealthCheck | None = None
    depends_on: dict[str, Dependency] = {}
    env: dict[str, str] = {}
    env_file: list[str] = []
    working_dir: str | None = None
    # Run as this user (`NAME` or `NAME:GROUP`, names or ids), as Compose's `user`.
    user: str | None = None
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: int = Field(default=5, ge=0)
    backoff: Backoff = Backoff()
    stop_signal: SignalName = "SIGTERM"
    stop_timeout: Duration | None = None
    watch: list[Watch] = []
    conflict_strategy: Strategy | None = None
    # "inherit": the supervisor binds the port and hands the listening socket over
    # (systemd's LISTEN_FDS protocol, fd 3), so nobody can take it between our check
    # and the child's bind, and a restart never meets a conflict.
    socket: Literal["inherit"] | None = None

    @model_validator(mode="after")
    def _inherit_needs_a_port(self) -> Service:
        if self.socket == "inherit" and not isinstance(self.port, int):
            raise ValueError("socket: inherit needs a fixed port (a number)")
        return self

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
        if isinstance(value, str):
            low, sep, high = value.partition("-")
            if not sep or not low.strip().isdigit() or not high.strip().isdigit():
                raise ValueError(f"expected a range like 6380-6399 (got {value!r})")
            value = (int(low), int(high))
        if isinstance(value, (list, tuple)) and len(value) == 2:
            if not all(_whole_number(end) for end in value):
                raise ValueError("expected two port numbers like [6380, 6399]")
            first, last = _port_number(int(value[0])), _port_number(int(value[1]))
            if first > last:
                raise ValueError(f"expected the low end first (got {first}-{last})")
            return (first, last)
        return value

    @property
    def signal_number(self) -> int:
        return int(signal.Signals[self.stop_signal])

    def candidate_ports(self) -> list[int]:
        """Migration candidates in the order they are tried: alternatives, then the range."""
        out = list(self.alternative_ports)
        if self.port_range:
            out += [p for p in range(self.port_range[0], self.port_range[1] + 1) if p not in out]
        return out


class ControlSettings(_Model):
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


class Settings(_Model):
    strategy: Strategy = Strategy.INTELLIGENT
    reserved_ports: list[Port] = []
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
    control: ControlSettings = ControlSettings()


class StackConfig(_Model):
    """A whole, validated stack. `path` is the file, `root` its folder."""

    name: str = ""
    settings: Settings = Settings()
    services: dict[str, Service]
    path: Path = Path("services.yaml")

    @property
    def root(self) -> Path:
        return self.path.parent

    def stop_timeout(self, service: Service) -> float:
        return service.stop_timeout if service.stop_timeout is not None else self.settings.stop_timeout

    def graph(self) -> dict[str, list[str]]:
        """service -> the services it depends on, for `stackvisor.graph`."""
        return {name: list(svc.depends_on) for name, svc in self.services.items()}
