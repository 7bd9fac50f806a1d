"""The parts of a service's definition: durations, ports, signals, restart policies,
and the small models a service is made of (health check, dependency, backoff, watch
entry, env file).

Only shapes and per-field rules; `schema` puts them together into `Service` and
`StackConfig`, which re-exports the names other modules use.
"""

from __future__ import annotations

import re
import signal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from stackvisor.config.kinds import Condition, parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]
MIN_INTERVAL = 0.01


def _interval(seconds: float) -> float:
    if seconds < MIN_INTERVAL:
        raise ValueError(f"expected at least 10ms: a shorter interval is a busy loop (got {seconds:g}s)")
    return seconds


# How often something is done: never so often that it becomes a busy loop.
Interval = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_interval)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def port_number(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"expected a port between 1 and 65535 (got {value})")
    return value


Port = Annotated[int, Field(ge=1, le=65535)]


def port_range(value: Any) -> Any:
    """`6380-6399` or `[6380, 6399]` as a (low, high) pair; `any` as None."""
    if value == "any":
        return None
    if isinstance(value, str):
        low, sep, high = value.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise ValueError(f"expected a range like 6380-6399 (got {value!r})")
        value = (int(low), int(high))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        if not all(whole_number(end) for end in value):
            raise ValueError("expected two port numbers like [6380, 6399]")
        first, last = port_number(int(value[0])), port_number(int(value[1]))
        if first > last:
            raise ValueError(f"expected the low end first (got {first}-{last})")
        return (first, last)
    return value


PortRange = Annotated[tuple[int, int] | None, BeforeValidator(port_range)]  # None: any port


def whole_number(value: Any) -> bool:
    # bool is an int subclass, and `true` is not a port.
    if isinstance(value, str):
        return value.strip().isdigit()
    return isinstance(value, int) and not isinstance(value, bool)


class HealthCheck(Model):
    """Exactly one probe (`http`, `tcp`, `exec`, `log`) plus Compose's timing fields.

    Compose's `test` is read as an `exec` probe: `["CMD", prog, args...]` runs the
    program, `["CMD-SHELL", "line"]` and a plain string run through the shell.
    `["NONE"]` and `disable: true` mean no health check (see `Service`).
    """

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

    @model_validator(mode="before")
    @classmethod
    def _compose_test(cls, value: Any) -> Any:
        if not isinstance(value, dict) or "test" not in value:
            return value
        value = dict(value)
        test = value.pop("test")
        if isinstance(test, list) and test and test[0] == "CMD" and len(test) > 1:
            value["exec"] = [str(part) for part in test[1:]]
        elif isinstance(test, list) and len(test) == 2 and test[0] == "CMD-SHELL":
            value["exec"] = str(test[1])
        elif isinstance(test, str) and test.strip():
            value["exec"] = test
        else:
            raise ValueError(
                'test: expected ["CMD", "program", "arg", ...], ["CMD-SHELL", "command line"], '
                f'a command line, or ["NONE"] (got {test!r})'
            )
        return value

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


class Dependency(Model):
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


class Watch(Model):
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


class EnvFile(Model):
    """One `env_file` (Compose's long form): a missing optional file is no error."""

    path: str
    required: bool = True


class Backoff(Model):
    initial: Duration = 0.5
    max: Duration = 30.0
    factor: float = Field(default=2.0, ge=1.0)
    reset_after: Duration = 10.0


class Daemon(Model):
    """`daemon:` for a program that forks into the background: the process to follow is
    the one in `pidfile` (relative to the service's folder), else (`daemon: true`) the
    oldest one the service left running; it must show up within `wait`."""

    pidfile: str | None = None
    wait: Duration = 10.0

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {} if value is True else value


class Shutdown(Model):
    """`shutdown:` a command that stops the service (`pg_ctl stop`) before any signal,
    given `timeout` to run and for the service to end."""

    command: str | list[str]
    timeout: Duration = 10.0
