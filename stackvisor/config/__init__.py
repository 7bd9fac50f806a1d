"""Configuration: the services.yaml schema, loading it, and comparing two loaded stacks.

The public names live here so callers need one import; each is loaded when first asked
for (see `_WHERE`). Each submodule says what it owns: `schema` the models (`fields` its
parts, `kinds` the plain enums), `finding` where the stack file is, `loader` loading
it, `report` collecting problems, `explain` pydantic's errors as messages, `checks` env
files and whole-stack rules, `yamlpos` YAML with positions, `envfiles` dotenv files,
`interpolate` `${VAR}`, `address` `host:port`, `diff` what a reload changes. Nothing
here starts processes or reads anything but the stack's own files.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stackvisor.config.address import split_host_port
    from stackvisor.config.diff import ReloadDiff, diff_configs, restart_set
    from stackvisor.config.finding import CONFIG_NAMES, find_config
    from stackvisor.config.interpolate import (
        InterpolationError,
        interpolate,
        port_env,
        port_variable,
        port_variables,
    )
    from stackvisor.config.loader import load_config
    from stackvisor.config.schema import (
        Backoff,
        Condition,
        ControlSettings,
        Dependency,
        HealthCheck,
        RestartPolicy,
        Service,
        Settings,
        StackConfig,
        Strategy,
        parse_duration,
    )
    from stackvisor.errors import ConfigError

__all__ = [
    "CONFIG_NAMES",
    "Backoff",
    "Condition",
    "ConfigError",
    "ControlSettings",
    "Dependency",
    "HealthCheck",
    "InterpolationError",
    "ReloadDiff",
    "RestartPolicy",
    "Service",
    "Settings",
    "StackConfig",
    "Strategy",
    "diff_configs",
    "find_config",
    "interpolate",
    "load_config",
    "parse_duration",
    "port_env",
    "port_variable",
    "port_variables",
    "restart_set",
    "split_host_port",
]

# Where each name lives: imported when first asked for, so that a command that only
# needs to find the stack file (`status`, `logs`, `down`) does not load the schema.
_WHERE = {
    "split_host_port": "stackvisor.config.address",
    "ReloadDiff": "stackvisor.config.diff",
    "diff_configs": "stackvisor.config.diff",
    "restart_set": "stackvisor.config.diff",
    "InterpolationError": "stackvisor.config.interpolate",
    "interpolate": "stackvisor.config.interpolate",
    "port_env": "stackvisor.config.interpolate",
    "port_variable": "stackvisor.config.interpolate",
    "port_variables": "stackvisor.config.interpolate",
    "CONFIG_NAMES": "stackvisor.config.finding",
    "find_config": "stackvisor.config.finding",
    "load_config": "stackvisor.config.loader",
    "ConfigError": "stackvisor.errors",
    "Backoff": "stackvisor.config.schema",
    "Condition": "stackvisor.config.kinds",
    "ControlSettings": "stackvisor.config.schema",
    "Dependency": "stackvisor.config.schema",
    "HealthCheck": "stackvisor.config.schema",
    "RestartPolicy": "stackvisor.config.kinds",
    "Service": "stackvisor.config.schema",
    "Settings": "stackvisor.config.schema",
    "StackConfig": "stackvisor.config.schema",
    "Strategy": "stackvisor.config.kinds",
    "parse_duration": "stackvisor.config.schema",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
