"""Configuration: the services.yaml schema, loading it, and comparing two loaded stacks.

The public names live here so callers need one import; each submodule says what it
owns: `schema` the models, `loader` finding and loading the file, `report` collecting
problems and `ConfigError`, `explain` pydantic's errors as messages, `checks` env files
and whole-stack rules, `yamlpos` YAML with positions, `envfiles` dotenv files,
`interpolate` `${VAR}`, `address` `host:port`, `diff` what a reload changes. Nothing
here starts processes or reads anything but the stack's own files.
"""

from stackvisor.config.address import split_host_port
from stackvisor.config.diff import ReloadDiff, diff_configs, restart_set
from stackvisor.config.interpolate import (
    InterpolationError,
    interpolate,
    port_env,
    port_variable,
    port_variables,
)
from stackvisor.config.loader import CONFIG_NAMES, ConfigError, find_config, load_config
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
