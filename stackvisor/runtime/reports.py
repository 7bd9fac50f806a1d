"""Reports pushed to `settings.report.url`: every `interval`, and soon after a change.

`Reporter` runs beside the services (a companion of the stack, see `reporting`). It
builds each report (`reportdoc`, pure) from the stack's status and from who holds the
stack's ports, and puts it in a small queue; one task sends what is queued, with
aiohttp's client (imported on the first send), retrying with exponential backoff. The
supervision never waits on the network: making a report costs a status document (the
port holders are read in a thread, at most once a `scan_interval`), and a dead endpoint
fills only the queue, which keeps the newest reports and counts the oldest it drops.
A report that fails in the end is logged, published as a `report_failed` event and
counted (`/metrics`). Changes of `settings.report` by a reload apply to the next report.

`send_report` is also what `stackvisor report --once` sends with.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from stackvisor import __version__
from stackvisor.config.endpoint import auth_header, shown_url
from stackvisor.config.schema import ReportSettings, StackConfig
from stackvisor.ports.owners import find_owners_many
from stackvisor.runtime.clock import Clock
from stackvisor.runtime.events import Event, EventBus, EventKind, ReportFailed
from stackvisor.runtime.reportdoc import Holder, backoff_delays, build_report, stack_ports
from stackvisor.runtime.status import StackStatus

if TYPE_CHECKING:
    import aiohttp

QUEUE_SIZE = 16  # reports waiting for a slow or dead endpoint; older ones are dropped
DEBOUNCE = 0.5  # a change is reported this long after it, with whatever else changed meanwhile
FIRST_DELAY = 0.5  # before the first retry; each further one waits twice as long

# What the audit hook gets: the stack's configuration and its supervisor's pid.
AuditHook = Callable[[StackConfig, int | None], Mapping[str, Any]]


def default_audit(config: StackConfig, supervisor_pid: int | None) -> Mapping[str, Any]:
    """The port audit's document (`ports.audit_scan.audit_document`), imported when asked for."""
    module = importlib.import_module("stackvisor.ports.audit_scan")
    document: Mapping[str, Any] = module.audit_document(config, supervisor_pid)
    return document


def read_audit(
    hook: AuditHook, config: StackConfig, pid: int | None
) -> tuple[Mapping[str, Any] | None, str | None]:
    """(the audit document, None), or (None, why there is none): a report goes out without it."""
    try:
        return hook(config, pid), None
    except Exception as exc:  # noqa: BLE001  (any failure of the audit leaves the report whole)
        return None, f"the audit failed: {type(exc).__name__}: {exc}"


# ----- looking at ports ------------------------------------------------------------------


def scan_holders(ports: Sequence[int], prefer: Sequence[int] = ()) -> dict[int, Holder | None]:
    """Who listens on each of `ports` (None: nobody). Reads the socket tables and /proc:
    blocking, so the supervisor calls it in a thread."""
    found = find_owners_many(ports, prefer)
    out: dict[int, Holder | None] = {}
    for port in ports:
        owners = found.get(port) or []
        if not owners:
            out[port] = None
            continue
        first = next((o for o in owners if o.pid in prefer), owners[0])
        user = first.user if first.user is not None else (None if first.uid is None else str(first.uid))
        out[port] = {"pid": first.pid, "name": first.name, "user": user, "pgid": first.pgid}
    return out


# ----- sending -----------------------------------------------------------------------------


class Outcome(NamedTuple):
    ok: bool
    attempts: int
    status: int | None  # the last HTTP status, None when no answer came
    error: str  # "" when ok


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 429)


async def _attempt(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str], timeout: float
) -> tuple[int | None, str]:
    """One POST: (HTTP status, "") or (None, what went wrong)."""
    import aiohttp

    try:
        async with session.post(
            url,
            data=body,
            headers=dict(headers),
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as answer:
            answer.release()
            return answer.status, ""
    except TimeoutError:
        return None, f"no answer within {timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return None, f"cannot send: {exc or type(exc).__name__}"


async def send_report(
    session: aiohttp.ClientSession,
    settings: ReportSettings,
    payload: Mapping[str, Any],
    *,
    url: str | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    first_delay: float = FIRST_DELAY,
) -> Outcome:
    """POST `payload` as JSON to `url` (else `settings.url`): one attempt, and up to
    `settings.retries` more after an answer of 5xx, 408 or 429, or none at all (each
    attempt at most `settings.timeout`). Another answer is final: a 4xx will not change."""
    target = url or settings.url
    if target is None:
        return Outcome(False, 0, None, "no url to send the report to")
    headers = {"Content-Type": "application/json", "User-Agent": f"stackvisor/{__version__}"}
    if settings.auth is not None:
        name, value = auth_header(settings.auth)
        headers[name] = value
    body = json.dumps(payload, separators=(",", ":")).encode()
    delays = backoff_delays(settings.retries, first_delay)
    status: int | None = None
    error = ""
    for attempt in range(1, settings.retries + 2):
        status, error = await _attempt(session, target, body, headers, settings.timeout)
        if status is not None and 200 <= status < 300:
            return Outcome(True, attempt, status, "")
        if status is not None:
            error = f"HTTP {status}"
            if 300 <= status < 400:
                error += " (a redirect: give the URL it points to)"
            if not _retryable(status):
                return Outcome(False, attempt, status, error)
        if attempt <= len(delays):
            await sleep(delays[attempt - 1])
    return Outcome(False, settings.retries + 1, status, error)


async def open_session() -> aiohttp.ClientSession:
    """aiohttp's client, imported in a thread the first time: never on a start's path."""
    module = await asyncio.to_thread(importlib.import_module, "aiohttp")
    session: aiohttp.ClientSession = module.ClientSession()
    return session


async def send_once(settings: ReportSettings, payload: Mapping[str, Any], url: str | None = None) -> Outcome:
    """One report now, in a session of its own (`stackvisor report --once`)."""
    session = await open_session()
    async with session:
        return await send_report(session, settings, payload, url=url)


# ----- the reporter ------------------------------------------------------------------------


class ReportedStack(Protocol):
    """What the reporter needs of the stack (the supervisor is one)."""

    config: StackConfig
    bus: EventBus
    clock: Clock
    logger: Any
    reporter: Reporter | None

    def status(self, *, resources: bool = False) -> StackStatus: ...


class _Look(NamedTuple):
    at: float
    resources: dict[tuple[str, int | None], Any]  # (service, pid) -> its figures
    holders: dict[int, Holder | None]


def is_change(event: Event) -> bool:
    """A service changed state, or a port conflict was resolved: worth a report."""
    if event.kind is EventKind.STATE:
        return True
    return event.kind is EventKind.PORT_CONFLICT and event.data.get("outcome") == "ok"


class Reporter:
    """Makes the stack's reports and sends them; `sent`, `failed` and `dropped` count
    them for `/metrics`. `audit` makes the audit document when `include_audit` asks."""

    def __init__(
        self,
        stack: ReportedStack,
        *,
        audit: AuditHook = default_audit,
        queue_size: int = QUEUE_SIZE,
        debounce: float = DEBOUNCE,
        first_delay: float = FIRST_DELAY,
    ) -> None:
        self.stack = stack
        self.audit = audit
        self.debounce = debounce
        self.first_delay = first_delay
        self.queue: deque[dict[str, Any]] = deque()
        self.queue_size = queue_size
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.host = socket.gethostname()
        self._queued = asyncio.Event()
        self._look: _Look | None = None
        self._looking = asyncio.Lock()
        self._warned_no_url = False

    @property
    def settings(self) -> ReportSettings | None:
        return self.stack.config.settings.report  # the latest reload's

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._every_interval())
            tg.create_task(self._after_changes())
            tg.create_task(self._send_queued())

    # ----- making reports ----------------------------------------------------------------

    async def report(self, trigger: str) -> dict[str, Any] | None:
        """Make a report now and queue it; None when there is nowhere to send it."""
        settings = self.settings
        if settings is None or settings.url is None:
            if settings is not None and not self._warned_no_url:
                self._warned_no_url = True
                self.stack.logger.warning("settings.report has no url: no report is sent")
            return None
        look = await self._looked(settings.scan_interval)
        status = self.stack.status()
        for service in status["services"]:
            service["resources"] = look.resources.get((service["name"], service["pid"]))
        audit, audit_error = None, None
        if settings.include_audit:
            audit, audit_error = await asyncio.to_thread(
                read_audit, self.audit, self.stack.config, status["pid"]
            )
        payload = build_report(
            self.stack.config.name,
            status,
            look.holders,
            fields=settings.fields,
            trigger=trigger,
            now=time.time(),
            host=self.host,
            audit=audit,
            audit_error=audit_error,
        )
        self.put(payload)
        return payload

    def put(self, payload: dict[str, Any]) -> None:
        """Queue a report; when the queue is full, the oldest waiting one is dropped."""
        while len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(payload)
        self._queued.set()

    async def _looked(self, scan_interval: float) -> _Look:
        """What each service uses and who holds each port: looked at again when the last
        look is `scan_interval` old. The holders are read in a thread."""
        async with self._looking:
            now = self.stack.clock.now()
            if self._look is not None and now - self._look.at < scan_interval:
                return self._look
            status = self.stack.status(resources=True)
            ports = [p.port for p in stack_ports(status)]
            prefer = [status["pid"], *(s["pid"] for s in status["services"] if s["pid"] is not None)]
            holders = await asyncio.to_thread(scan_holders, ports, prefer) if ports else {}
            resources = {(s["name"], s["pid"]): s.get("resources") for s in status["services"]}
            self._look = _Look(now, resources, holders)
            return self._look

    async def _report_safely(self, trigger: str) -> None:
        # A report that cannot be made is logged: it never takes the stack down with it.
        try:
            await self.report(trigger)
        except Exception as exc:  # noqa: BLE001
            self.stack.logger.error(f"cannot make a report: {type(exc).__name__}: {exc}")

    async def _every_interval(self) -> None:
        while True:
            settings = self.settings
            if settings is None:  # a reload took `report` away: until one gives it back
                await self.stack.bus.wait_until(lambda: self.settings is not None)
                continue
            await self.stack.clock.sleep(settings.interval)
            await self._report_safely("interval")

    async def _after_changes(self) -> None:
        with self.stack.bus.subscribe() as changes:
            while True:
                event = await changes.get()
                settings = self.settings
                if not is_change(event) or settings is None or not settings.on_change:
                    continue
                await self.stack.clock.sleep(self.debounce)
                while not changes.queue.empty():  # what changed meanwhile is in this report
                    changes.queue.get_nowait()
                self._look = None  # a change: ports and processes are looked at again
                await self._report_safely("change")

    # ----- sending -----------------------------------------------------------------------

    async def _send_queued(self) -> None:
        session: aiohttp.ClientSession | None = None
        try:
            while True:
                while not self.queue:
                    self._queued.clear()
                    await self._queued.wait()
                payload = self.queue.popleft()
                settings = self.settings
                if settings is None or settings.url is None:
                    continue  # a reload took the endpoint away
                if session is None:
                    session = await open_session()
                try:
                    outcome = await send_report(
                        session, settings, payload, sleep=self.stack.clock.sleep, first_delay=self.first_delay
                    )
                except (TypeError, ValueError) as exc:  # a field or an audit JSON cannot hold
                    outcome = Outcome(False, 0, None, f"cannot be written as JSON: {exc}")
                self._count(outcome, settings.url, payload["trigger"])
        finally:
            if session is not None:
                await session.close()

    def _count(self, outcome: Outcome, url: str, trigger: str) -> None:
        if outcome.ok:
            self.sent += 1
            return
        self.failed += 1
        shown = shown_url(url)
        tries = f"{outcome.attempts} attempt{'s' if outcome.attempts != 1 else ''}"
        self.stack.logger.warning(f"report to {shown} failed after {tries}: {outcome.error}")
        self.stack.bus.publish(ReportFailed(shown, outcome.error, outcome.attempts, outcome.status, trigger))


async def reporting(stack: ReportedStack) -> None:
    """A companion of the running stack: its reporter, from the moment `settings.report`
    is set (at the start, or by a reload)."""
    await stack.bus.wait_until(lambda: stack.config.settings.report is not None)
    stack.reporter = Reporter(stack)
    await stack.reporter.run()
