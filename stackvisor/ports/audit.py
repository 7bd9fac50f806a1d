"""The security audit of what listens on the machine: its rules and its score (pure).

Here: `Endpoint` (one listening socket with the facts about its process), what a stack
declares (`DeclaredPorts`, read from a `StackConfig` by `declared_ports`), the rules,
`audit` (endpoints in, a `Report` out) and `score`. Reading the sockets, the processes
and their executables is `audit_scan`'s work; nothing here reads or writes anything.

The rules, each with its weight (what a finding of it adds to the risk):

| rule                 | weight | fires for a listener ...                                          |
|----------------------|--------|-------------------------------------------------------------------|
| `all_interfaces`     | 1      | on `0.0.0.0` or `::` (every interface) rather than one address    |
| `suspicious_port`    | 4      | on a port of `settings.audit.suspicious_ports`                    |
| `deleted_executable` | 5      | whose process runs an executable that was deleted after its start |
| `writable_folder`    | 5      | whose executable lives in `/tmp`, `/var/tmp`, `/dev/shm` or in    |
|                      |        | a folder every user may write to (o+w)                            |
| `other_user`         | 3      | of another user (not a process of the stack) on a port or in a    |
|                      |        | range the stack declares (`port`, `alternative_ports`,            |
|                      |        | `port_range`, the range of the service's `type`)                  |
| `unowned_in_range`   | 2      | in a service's `port_range` or type range, held by no process of  |
|                      |        | the stack                                                         |

An executable that cannot be read (another user's process, for a user who is not root)
is unknown, and unknown is no finding.

The score, 0 to 10: 0 without findings; else the highest weight plus a quarter of the
other weights, at most 10, to one decimal: `min(10, top + (sum - top) / 4)`. One
finding scores its weight; each further finding adds to the score, never takes from it.
A finding about a process (its executable) counts once per process, however many
sockets that process holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from stackvisor.config.schema import StackConfig

ALL_INTERFACES = frozenset({"0.0.0.0", "::"})
SCORE_MAX = 10.0
SHARE_OF_THE_REST = 0.25
SCORE_FORMULA = (
    "min(10, top + (sum - top) / 4): top is the highest weight, sum all of them; 0 without findings"
)


class Rule(StrEnum):
    ALL_INTERFACES = "all_interfaces"
    SUSPICIOUS_PORT = "suspicious_port"
    DELETED_EXECUTABLE = "deleted_executable"
    WRITABLE_FOLDER = "writable_folder"
    OTHER_USER = "other_user"
    UNOWNED_IN_RANGE = "unowned_in_range"


class RuleInfo(NamedTuple):
    weight: int
    description: str


RULES: dict[Rule, RuleInfo] = {
    Rule.ALL_INTERFACES: RuleInfo(1, "listens on every interface (0.0.0.0 or ::) rather than loopback"),
    Rule.SUSPICIOUS_PORT: RuleInfo(4, "listens on a port of settings.audit.suspicious_ports"),
    Rule.DELETED_EXECUTABLE: RuleInfo(5, "its process runs an executable deleted since it started"),
    Rule.WRITABLE_FOLDER: RuleInfo(
        5, "its executable lives in /tmp, /var/tmp, /dev/shm or a folder every user may write to"
    ),
    Rule.OTHER_USER: RuleInfo(3, "another user's listener on a port or in a range this stack declares"),
    Rule.UNOWNED_IN_RANGE: RuleInfo(
        2, "a listener in a service's port range that no process of the stack holds"
    ),
}

# Rules about a process rather than a socket: counted once per process in the score.
PROCESS_RULES = frozenset({Rule.DELETED_EXECUTABLE, Rule.WRITABLE_FOLDER})


@dataclass(frozen=True)
class Endpoint:
    """One listening socket (TCP in LISTEN, UDP bound with no peer) and its process.

    `pid` None: no visible process holds the socket (another user's, for a user who is
    not root, or the kernel's own). `exe` None: the executable could not be read; then
    `exe_deleted` and `exe_in_writable_folder` are False, never a guess.
    """

    protocol: str  # "tcp" or "udp"
    address: str
    port: int
    uid: int | None = None  # the process's real uid, else the socket's
    user: str | None = None
    pid: int | None = None
    name: str | None = None
    cmdline: tuple[str, ...] = ()
    exe: str | None = None
    exe_deleted: bool = False
    exe_in_writable_folder: bool = False

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cmdline"] = list(self.cmdline)
        return data


class PortSpan(NamedTuple):
    low: int
    high: int
    source: str  # "port_range", or "type NAME"


@dataclass(frozen=True)
class DeclaredPorts:
    """The ports one service of the stack declares: its fixed ones and its ranges."""

    service: str
    ports: tuple[int, ...] = ()  # `port` (when a number) and `alternative_ports`
    ranges: tuple[PortSpan, ...] = ()  # `port_range`, and the range of its `type`


def declared_ports(config: StackConfig) -> list[DeclaredPorts]:
    """What each service of `config` declares; a type of any port (`custom`) adds no range."""
    types = config.port_types()
    out = []
    for name, svc in config.services.items():
        fixed = ([svc.port] if isinstance(svc.port, int) else []) + list(svc.alternative_ports)
        spans: list[PortSpan] = []
        if svc.port_range is not None:
            spans.append(PortSpan(*svc.port_range, "port_range"))
        typed = types.get(svc.type) if svc.type else None
        if typed is not None and all((s.low, s.high) != typed for s in spans):
            spans.append(PortSpan(*typed, f"type {svc.type}"))
        out.append(DeclaredPorts(name, tuple(dict.fromkeys(fixed)), tuple(spans)))
    return out


@dataclass(frozen=True)
class Scope:
    """What the rules compare a listener with."""

    declared: Sequence[DeclaredPorts] = ()
    stack_pids: frozenset[int] = frozenset()
    uid: int = 0  # the user running the audit
    suspicious: Sequence[tuple[int, int]] = ()

    def of_stack(self, endpoint: Endpoint) -> bool:
        return endpoint.pid is not None and endpoint.pid in self.stack_pids


@dataclass(frozen=True)
class Finding:
    rule: Rule
    endpoint: Endpoint
    weight: int
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": str(self.rule),
            "weight": self.weight,
            "detail": self.detail,
            "listener": self.endpoint.as_dict(),
        }


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _all_interfaces(e: Endpoint, scope: Scope) -> str | None:
    return f"bound to every interface ({e.address})" if e.address in ALL_INTERFACES else None


def _suspicious_port(e: Endpoint, scope: Scope) -> str | None:
    for low, high in scope.suspicious:
        if low <= e.port <= high:
            within = "" if low == high else f" ({low}-{high})"
            return f"port {e.port} is in settings.audit.suspicious_ports{within}"
    return None


def _deleted_executable(e: Endpoint, scope: Scope) -> str | None:
    return f"runs {e.exe}, deleted since it started" if e.exe is not None and e.exe_deleted else None


def _writable_folder(e: Endpoint, scope: Scope) -> str | None:
    if e.exe is None or not e.exe_in_writable_folder:
        return None
    return f"runs {e.exe}, from a folder every user may write to"


def _declaring(port: int, scope: Scope, *, fixed: bool) -> str | None:
    """Which service declares `port` (fixed ports only with `fixed`), in words."""
    for declared in scope.declared:
        if fixed and port in declared.ports:
            return f"port {port} of service {declared.service}"
        for span in declared.ranges:
            if span.low <= port <= span.high:
                return f"{span.source} {_span(span.low, span.high)} of service {declared.service}"
    return None


def _other_user(e: Endpoint, scope: Scope) -> str | None:
    if e.uid is None or e.uid == scope.uid or scope.of_stack(e):
        return None
    where = _declaring(e.port, scope, fixed=True)
    if where is None:
        return None
    who = f"user {e.user} (uid {e.uid})" if e.user and e.user != str(e.uid) else f"uid {e.uid}"
    return f"{who} listens on {where}"


def _unowned_in_range(e: Endpoint, scope: Scope) -> str | None:
    if scope.of_stack(e):
        return None
    where = _declaring(e.port, scope, fixed=False)
    return None if where is None else f"in {where}, held by no process of the stack"


CHECKS: dict[Rule, Callable[[Endpoint, Scope], str | None]] = {
    Rule.ALL_INTERFACES: _all_interfaces,
    Rule.SUSPICIOUS_PORT: _suspicious_port,
    Rule.DELETED_EXECUTABLE: _deleted_executable,
    Rule.WRITABLE_FOLDER: _writable_folder,
    Rule.OTHER_USER: _other_user,
    Rule.UNOWNED_IN_RANGE: _unowned_in_range,
}


def _counted(findings: Iterable[Finding]) -> list[int]:
    """The weights the score adds up: a process rule once per process."""
    seen: set[tuple[Any, ...]] = set()
    weights = []
    for f in findings:
        e = f.endpoint
        key = (f.rule, e.pid) if f.rule in PROCESS_RULES and e.pid is not None else (f.rule, e)
        if key not in seen:
            seen.add(key)
            weights.append(f.weight)
    return weights


def score(findings: Iterable[Finding]) -> float:
    """The risk, 0 to 10: `min(10, top + (sum - top) / 4)`, to one decimal (see above)."""
    weights = _counted(findings)
    if not weights:
        return 0.0
    top = max(weights)
    return round(min(SCORE_MAX, top + SHARE_OF_THE_REST * (sum(weights) - top)), 1)


@dataclass(frozen=True)
class Report:
    endpoints: tuple[Endpoint, ...]
    findings: tuple[Finding, ...]
    score: float
    context: dict[str, Any] = field(default_factory=dict)  # what the scan adds: the stack, its pids

    def flags(self, endpoint: Endpoint) -> list[str]:
        return [str(f.rule) for f in self.findings if f.endpoint == endpoint]

    def as_dict(self) -> dict[str, Any]:
        """The audit document: `stackvisor audit --json` and `GET /v1/audit`."""
        return {
            **self.context,
            "score": self.score,
            "score_formula": SCORE_FORMULA,
            "rules": [
                {"rule": str(rule), "weight": info.weight, "description": info.description}
                for rule, info in RULES.items()
            ],
            "listeners": [{**e.as_dict(), "flags": self.flags(e)} for e in self.endpoints],
            "findings": [f.as_dict() for f in self.findings],
        }


def audit(endpoints: Iterable[Endpoint], scope: Scope, context: dict[str, Any] | None = None) -> Report:
    """Every rule over every listener; the findings ordered by port, then by rule."""
    ordered = tuple(sorted(set(endpoints), key=lambda e: (e.port, e.protocol, e.address, e.pid or 0)))
    findings = []
    for endpoint in ordered:
        for rule, check in CHECKS.items():
            detail = check(endpoint, scope)
            if detail is not None:
                findings.append(Finding(rule, endpoint, RULES[rule].weight, detail))
    return Report(ordered, tuple(findings), score(findings), dict(context or {}))
