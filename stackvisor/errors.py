"""Errors that cross layers: raised in one (runtime, control, the client) and handled in another.

Each says what happened in words a person can act on; the CLI maps them to exit
statuses and the control API to HTTP statuses; `ConfigError` (everything wrong with a
stack file) is here too, so that commands can catch it without loading the schema.
Errors that stay inside one module (a `GraphError`, a `PortConflictError`) live there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ActionConflict(Exception):
    """An action the current state does not allow: the stack is stopping, the service is
    already running... (HTTP 409, exit 1)."""


class StartError(Exception):
    """A service cannot start (its port cannot be secured, its program is missing): it
    fails with this message."""


class NotRunning(Exception):
    """Nobody answers for the stack: it is not running (exit 3)."""


class NotResponding(Exception):
    """The supervisor holds the stack but does not answer (stopped, stuck): exit 1."""


class UnsafePath(Exception):
    """A folder or file stackvisor would write is not safely its own (a link, another
    user's folder): it refuses to start rather than write there (exit 1)."""


class AlreadyRunning(Exception):
    """Another supervisor holds the stack's lock."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        super().__init__(f"already running (pid {pid})" if pid else "already running")


class ApiError(Exception):
    """A control API error: an HTTP status, a short `error` and a `detail`.

    The server raises it to answer `{"error": ..., "detail": ...}`; the client raises
    it when it receives such an answer.
    """

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        self.status = status
        self.error = error
        self.detail = detail
        super().__init__(f"{error}: {detail}" if detail else error)

    @classmethod
    def from_body(cls, status: int, body: Any) -> ApiError:
        if not isinstance(body, dict):
            return cls(status, str(body) or "error")
        return cls(status, str(body.get("error") or "error"), str(body.get("detail") or ""))

    @property
    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


class ConfigError(Exception):
    """Everything wrong with a stack file, one formatted line per problem."""

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)
