"""Ports: who holds a port, what to do about it, and doing it.

`tables` reads the kernel's socket tables (who listens where), `fdwalk` finds the
process behind a socket, `owners` describes those processes (`OwnerSearch`),
`levels` and `conflicts` decide (pure: how dangerous a holder is; the strategies and
the plan), and `resolve` acts
(terminate through the signal gate, migrate, fail) and is what the supervisor calls
before starting a service. The names below are the public surface.
"""

from stackvisor.ports.conflicts import (
    Action,
    ConflictRecord,
    PortAction,
    PortConflictError,
    format_plan,
    plan_port,
    plan_services,
)
from stackvisor.ports.levels import DEFAULT_DEV_PATTERNS, Classification, ConflictLevel, Policy, classify
from stackvisor.ports.owners import Owner, OwnerSearch, describe_process, find_owner, find_owners
from stackvisor.ports.resolve import (
    Ending,
    PortContext,
    PortResolution,
    Termination,
    plan_stack,
    secure_port,
    terminate_holder,
)
from stackvisor.ports.tables import Listener, free_ports, is_free, listening_ports

__all__ = [
    "DEFAULT_DEV_PATTERNS",
    "Action",
    "Classification",
    "ConflictLevel",
    "ConflictRecord",
    "Ending",
    "Listener",
    "Owner",
    "OwnerSearch",
    "Policy",
    "PortAction",
    "PortConflictError",
    "PortContext",
    "PortResolution",
    "Termination",
    "classify",
    "describe_process",
    "find_owner",
    "find_owners",
    "format_plan",
    "free_ports",
    "is_free",
    "listening_ports",
    "plan_port",
    "plan_services",
    "plan_stack",
    "secure_port",
    "terminate_holder",
]
