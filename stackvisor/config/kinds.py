"""The plain values of a stack file: the kinds it chooses between (port strategies,
dependency conditions, restart policies) and durations. Without pydantic, so that the
command line can offer and read them without loading the schema."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Any


class Strategy(StrEnum):
    CONSERVATIVE = "conservative"
    AGGRESSIVE = "aggressive"
    INTELLIGENT = "intelligent"


class Condition(StrEnum):
    STARTED = "service_started"
    HEALTHY = "service_healthy"
    COMPLETED = "service_completed_successfully"


# The service types of the port registry and where each gets its port (`type:` with
# `port: auto`, `stackvisor ports allocate --type`); None: any port. The stack's
# `settings.port_types` adds types or changes these.
DEFAULT_PORT_TYPES: dict[str, tuple[int, int] | None] = {
    "rest-api": (8080, 8099),
    "grpc": (50050, 50099),
    "websocket": (8100, 8199),
    "database": (5400, 5499),
    "cache": (6300, 6399),
    "analytics": (8200, 8299),
    "security": (8300, 8399),
    "frontend": (3000, 3099),
    "custom": None,
}


class RestartPolicy(StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
# Compose's (Go's) compound form: `1m30s`, `1h5m`, `2s500ms`.
_COMPOUND = re.compile(r"^\s*(?:\d+(?:\.\d+)?(?:us|ms|s|m|h))+\s*$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNITS = {"us": 0.000001, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# The longest duration any field takes: a week. Longer is a typo, and would overflow
# the event loop's timers.
MAX_DURATION = 7 * 24 * 3600.0


def parse_duration(value: Any) -> float:
    """`500ms`, `2s`, `1m`, `1h`, Compose's `1m30s`, or a plain number of seconds -> float
    seconds, 0 to a week."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
        elif _COMPOUND.match(value):
            seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(value))
    if seconds is None or math.isnan(seconds):
        raise ValueError(f"expected a duration like 500ms, 2s, 1m or a number of seconds (got {value!r})")
    if seconds < 0:
        raise ValueError("expected a duration that is not negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"expected a duration of at most a week (168h) (got {value!r})")
    return seconds
