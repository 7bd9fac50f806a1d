"""Ports: who holds a port, what to do about it, and doing it.

`scan` reads the system (listeners and their processes), `conflicts` decides (pure:
levels, strategies, the plan), `resolve` acts (terminate, migrate, fail) and is what
the supervisor calls before starting a service. The names below are the public surface.
"""

from stackvisor.ports.conflicts import (
    DEFAULT_DEV_PATTERNS,
    Action,
    Classification,
    ConflictLevel,
    ConflictRecord,
    Policy,
    PortAction,
    PortConflictError,
    classify,
    format_plan,
    plan_port,
    plan_services,
)
from stackvisor.ports.resolve import (
    PortContext,
    PortResolution,
    listener_pgid_matches,
    plan_stack,
    secure_port,
)
from stackvisor.ports.scan import Listener, Owner, find_owner, find_owners, free_ports, is_free, listening_ports

__all__ = [
    "DEFAULT_DEV_PATTERNS",
    "Action",
    "Classification",
    "ConflictLevel",
    "ConflictRecord",
    "Listener",
    "Owner",
    "Policy",
    "PortAction",
    "PortConflictError",
    "PortContext",
    "PortResolution",
    "classify",
    "find_owner",
    "find_owners",
    "format_plan",
    "free_ports",
    "is_free",
    "listener_pgid_matches",
    "listening_ports",
    "plan_port",
    "plan_services",
    "plan_stack",
    "secure_port",
]
