"""Reports pushed to an endpoint: the payload and its schema, the auth forms, retries and
timeouts, reports after a change, the bounded queue, and `stackvisor report --once`.

Every endpoint is a real aiohttp server on 127.0.0.1 in a thread of its own, and every
report it receives is checked against docs/report.schema.json.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import textwrap
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from conftest import (
    SLEEP,
    async_wait_for,
    cli,
    client,
    free_port,
    free_ports,
    running_stack,
    until,
    until_ready,
    write_stack,
)

from stackvisor.config import ConfigError, load_config
from stackvisor.config.endpoint import auth_header, check_url, shown_url
from stackvisor.config.schema import ReportSettings
from stackvisor.runtime import reports
from stackvisor.runtime.clock import MonotonicClock
from stackvisor.runtime.events import EventBus
from stackvisor.runtime.reportdoc import backoff_delays, build_report
from stackvisor.runtime.states import State

pytestmark = pytest.mark.timeout(60)

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "docs" / "report.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def valid(payload: dict[str, Any]) -> dict[str, Any]:
    VALIDATOR.validate(payload)
    return payload


# ----- the endpoint --------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # monotonic


class Receiver:
    """An HTTP endpoint in a thread of its own (so a CLI in the test's thread can reach it):
    records each POST and answers with the statuses in `answers`, in turn, then 200;
    with `hang`, it answers nothing until it is stopped."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: deque[int] = deque()
        self.hang = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/reports"

    def bodies(self, trigger: str | None = None) -> list[dict[str, Any]]:
        return [r.body for r in list(self.requests) if trigger is None or r.body["trigger"] == trigger]

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.requests.append(Received(request.path, dict(request.headers), body, time.monotonic()))
        if self.hang:
            await self.release.wait()
        return web.Response(status=self.answers.popleft() if self.answers else 200)

    def stop(self) -> None:
        async def stop() -> None:
            self.release.set()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver, stopped after the test; every report it got must match the schema."""
    rx = Receiver()
    rx.start()
    try:
        yield rx
    finally:
        rx.stop()
    for received in rx.requests:
        valid(received.body)


# ----- a stack of plain data, for the reporter alone ------------------------------------------


class Logger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def _log(self, message: str, **_: Any) -> None:
        self.lines.append(message)

    info = warning = error = debug = _log


def a_status(pid: int, port: int) -> dict[str, Any]:
    """A running stack's status document: api (running, on `port`) and a job that completed."""
    service = {
        "name": "api",
        "state": "healthy",
        "reason": "",
        "pid": pid,
        "port": port,
        "health": "healthy",
        "restarts": 2,
        "exit_code": None,
        "started_at": 1700000000.0,
        "depends_on": [],
        "selected": True,
        "resources": {"memory_bytes": 1 << 20, "cpu_seconds": 0.25, "processes": 1},
    }
    job = {
        **service,
        "name": "migrate",
        "state": "completed",
        "pid": None,
        "port": None,
        "health": None,
        "restarts": 0,
        "exit_code": 0,
        "started_at": None,
        "resources": None,
    }
    return {
        "name": "shop",
        "pid": pid,
        "file": "/srv/shop/services.yaml",
        "started_at": 1700000000.0,
        "stopping": False,
        "tracking": "marker",
        "reload": None,
        "services": [service, job],
    }


class PlainStack:
    """What the reporter asks of a stack, with a status document as given."""

    def __init__(self, path: Path, status: dict[str, Any]) -> None:
        self.config = load_config(path, environ={})
        self.bus = EventBus()
        self.clock = MonotonicClock()
        self.logger = Logger()
        self.reporter: reports.Reporter | None = None
        self._status = status

    def status(self, *, resources: bool = False) -> Any:
        return json.loads(json.dumps(self._status))


def states(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in report["services"]}


def report_file(tmp_path: Path, report: str) -> Path:
    return write_stack(
        tmp_path,
        "services:\n  api: {command: 'true', port: 8000}\nsettings:\n  report:\n"
        + textwrap.indent(textwrap.dedent(report), "    "),
        programs=False,
    )


# ----- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        ("Bearer abc.def-123", ("Authorization", "Bearer abc.def-123")),
        ("bearer  tok", ("Authorization", "Bearer tok")),
        ("Basic ci:pa:ss word", ("Authorization", "Basic " + base64.b64encode(b"ci:pa:ss word").decode())),
        ("X-API-Key: k3y", ("X-API-Key", "k3y")),
        ("Authorization: Token abc", ("Authorization", "Token abc")),
    ],
)
def test_auth_forms_become_one_header(auth: str, header: tuple[str, str]) -> None:
    assert auth_header(auth) == header


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("", "auth is empty"),
        ("Bearer", "one token after Bearer (is its variable set?)"),
        ("Bearer two words", "one token after Bearer"),
        ("Basic secretonly", "expected `Basic user:password`"),
        ("Bearer: s3cret", "with a space after Bearer, not a colon"),
        ("X-API-Key:", "the X-API-Key header has no value"),
        ("just-a-s3cret", "expected `Bearer TOKEN`, `Basic user:password` or `Header-Name: value`"),
        ("Bad Header: s3cret", "expected `Bearer TOKEN`"),
        ("X-Key: s3cret\nX-Other: 1", "printable ASCII characters, on one line"),
    ],
)
def test_a_bad_auth_is_refused_in_words_that_never_show_the_secret(auth: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        auth_header(auth)
    assert message in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_urls_must_be_http_with_a_host_and_are_shown_without_credentials() -> None:
    assert check_url("https://reports.example.com/x?y=1") == "https://reports.example.com/x?y=1"
    for bad, message in (
        ("ftp://host/x", "the scheme is ftp:"),
        ("reports.example.com/x", "http:// or https://"),
        ("http:///x", "with a host"),
        ("http://host:99999/x", "a port between 1 and 65535"),
        ("http://host/a b", "without spaces"),
    ):
        with pytest.raises(ValueError, match=message):
            check_url(bad)
    assert shown_url("https://ci:pw@host:8443/r") == "https://host:8443/r"
    assert shown_url("http://host/r") == "http://host/r"


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert backoff_delays(0) == []
    assert backoff_delays(4, 0.5) == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delays(6, 10, ceiling=30) == [10, 20, 30, 30, 30, 30]


def test_the_report_of_a_running_stack() -> None:
    pid = os.getpid()
    status = a_status(pid, 8000)
    status["services"][0]["internal_port"] = 40001
    holders = {8000: {"pid": pid, "name": "python3", "user": "dev", "pgid": pid}, 40001: None}
    report = valid(
        build_report(
            "shop",
            status,  # type: ignore[arg-type]
            holders,  # type: ignore[arg-type]
            fields={"server": "ci-7", "team": "payments", "shards": 3},
            trigger="interval",
            now=1700000000.25,
            host="ci-7.example",
        )
    )
    assert report["timestamp"] == "2023-11-14T22:13:20.250Z"
    assert report["stack"] == {
        "name": "shop",
        "host": "ci-7.example",
        "running": True,
        "file": "/srv/shop/services.yaml",
        "pid": pid,
        "started_at": 1700000000.0,
        "stopping": False,
    }
    assert report["fields"] == {"server": "ci-7", "team": "payments", "shards": 3}
    api, job = report["services"]
    assert (api["state"], api["health"], api["restarts"], api["cpu_seconds"], api["memory_bytes"]) == (
        "healthy",
        "healthy",
        2,
        0.25,
        1 << 20,
    )
    assert (job["state"], job["exit_code"], job["cpu_seconds"]) == ("completed", 0, None)
    assert report["ports"] == [
        {
            "port": 8000,
            "service": "api",
            "role": "service",
            "status": "occupied",
            "holder": {"pid": pid, "name": "python3", "user": "dev"},
            "ours": True,
        },
        {
            "port": 40001,
            "service": "api",
            "role": "internal",
            "status": "free",
            "holder": None,
            "ours": False,
        },
    ]
    assert report["summary"] == {
        "services": 2,
        "by_state": {"completed": 1, "healthy": 1},
        "ports": {"total": 2, "occupied": 1, "free": 1},
    }
    assert "audit" not in report


def test_a_port_held_by_a_stranger_is_not_ours_and_a_stack_not_running_says_so() -> None:
    stranger = {"pid": 4242, "name": "node", "user": "dev", "pgid": 4242}
    report = valid(
        build_report(
            "shop",
            None,
            {8000: stranger, 8001: None},  # type: ignore[dict-item]
            fields={},
            trigger="once",
            now=time.time(),
            host="h",
            configured={"api": 8000, "web": 8001, "job": None},
        )
    )
    assert report["stack"]["running"] is False and report["stack"]["pid"] is None
    assert [s["state"] for s in report["services"]] == ["not running"] * 3
    assert [(p["port"], p["status"], p["ours"]) for p in report["ports"]] == [
        (8000, "occupied", False),
        (8001, "free", False),
    ]
    assert report["summary"]["by_state"] == {"not running": 3}


def test_the_schema_knows_every_state() -> None:
    assert set(SCHEMA["$defs"]["state"]["enum"]) == {str(s) for s in State} | {"not running"}


def test_report_settings_defaults_interpolation_and_errors(tmp_path: Path) -> None:
    path = report_file(
        tmp_path,
        """
        url: https://reports.example.com/in
        auth: "Bearer ${REPORT_TOKEN}"
        fields: {server: "${HOSTNAME_OF_CI:-ci-1}", environment: staging}
        """,
    )
    settings = load_config(path, environ={"REPORT_TOKEN": "t0k"}).settings.report
    assert settings is not None
    assert (settings.interval, settings.scan_interval, settings.retries, settings.timeout) == (30, 2, 3, 10)
    assert (settings.include_audit, settings.on_change) == (False, True)
    assert settings.auth == "Bearer t0k" and "t0k" not in repr(settings)
    assert settings.fields == {"server": "ci-1", "environment": "staging"}
    # The variable unset: the file is refused, saying what to look at.
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert (
        "settings.report.auth: expected `Bearer TOKEN`: one token after Bearer (is its variable set?)"
        in str(caught.value)
    )
    bad = report_file(tmp_path, "url: ftp://reports.example.com\nauth: 'X-Key s3cret'\ntimeout: 0s\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad, environ={})
    text = str(caught.value)
    assert "services.yaml:5:10: settings.report.url: expected an http:// or https:// URL" in text
    assert (
        "settings.report.auth: expected `Bearer TOKEN`, `Basic user:password` or `Header-Name: value`" in text
    )
    assert "settings.report.timeout: expected more than 0" in text
    assert "s3cret" not in text


# ----- sending --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "name", "value"),
    [
        ("Bearer ${REPORT_TOKEN}", "Authorization", "Bearer t0k-1"),
        ("Basic ci:${REPORT_TOKEN}", "Authorization", "Basic " + base64.b64encode(b"ci:t0k-1").decode()),
        ("X-API-Key: ${REPORT_TOKEN}", "X-API-Key", "t0k-1"),
    ],
)
async def test_each_auth_form_arrives_as_configured(
    tmp_path: Path, receiver: Receiver, auth: str, name: str, value: str
) -> None:
    path = report_file(tmp_path, f"url: {receiver.url}\nauth: '{auth}'\n")
    settings = load_config(path, environ={"REPORT_TOKEN": "t0k-1"}).settings.report
    assert settings is not None
    payload = build_report("s", None, {}, fields={}, trigger="once", now=time.time(), host="h")
    outcome = await reports.send_once(settings, payload)
    assert outcome == reports.Outcome(True, 1, 200, "")
    (got,) = receiver.requests
    assert got.headers[name] == value
    assert got.headers["Content-Type"] == "application/json" and got.path == "/reports"
    assert got.body == payload


async def test_a_server_error_is_retried_with_backoff_and_a_client_error_is_not(receiver: Receiver) -> None:
    settings = ReportSettings(url=receiver.url, retries=3)
    payload = build_report("s", None, {}, fields={}, trigger="once", now=time.time(), host="h")
    receiver.answers.extend([500, 503])
    paused: list[float] = []

    async def sleep(seconds: float) -> None:
        paused.append(seconds)

    session = await reports.open_session()
    async with session:
        outcome = await reports.send_report(session, settings, payload, sleep=sleep, first_delay=0.1)
        assert outcome == reports.Outcome(True, 3, 200, "")
        assert paused == [0.1, 0.2]
        assert len({r.body["id"] for r in receiver.requests}) == 1  # one report, three attempts
        receiver.answers.append(401)
        outcome = await reports.send_report(session, settings, payload, sleep=sleep)
    assert outcome == reports.Outcome(False, 1, 401, "HTTP 401")
    assert len(receiver.requests) == 4


async def test_a_hanging_endpoint_times_out_and_the_failure_is_an_event_and_counted(
    tmp_path: Path, receiver: Receiver
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    receiver.hang = True
    path = write_stack(
        tmp_path,
        f"""
        services:
          idle: {{command: "{SLEEP}"}}
        settings:
          report: {{url: "{receiver.url}", interval: 100ms, timeout: 300ms, retries: 1, on_change: false}}
        """,
    )
    async with running_stack(path) as sup:
        began = time.monotonic()
        await async_wait_for(lambda: sup.reporter is not None and sup.reporter.failed >= 1)
        assert time.monotonic() - began < 5  # two attempts of 300 ms and a pause, not a hang
        failed = [e for e in sup.bus.backlog if e.kind == "report_failed"]
        assert failed[0].data == {
            "url": receiver.url,
            "error": "no answer within 0.3s",
            "attempts": 2,
            "status": None,
            "trigger": "interval",
        }
        text = await asyncio.to_thread(client(tmp_path).get, "/metrics")
        counters = {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if "reports" in s.name
        }
        assert counters["stackvisor_reports_failed_total"] >= 1
        assert counters["stackvisor_reports_sent_total"] == 0


async def test_a_change_is_reported_within_the_debounce_with_fields_and_ports(
    tmp_path: Path, receiver: Receiver
) -> None:
    (port,) = free_ports(1)
    path = write_stack(
        tmp_path,
        f"""
        services:
          web:
            command: python3 server.py
            port: {port}
            healthcheck: {{tcp: "127.0.0.1:${{PORT}}", interval: 200ms}}
          worker: {{command: "{SLEEP}", backoff: {{initial: 10ms}}}}
        settings:
          report:
            url: {receiver.url}
            interval: 1h
            fields: {{server: ci-7, environment: test}}
        """,
    )
    async with running_stack(path) as sup:
        await until_ready(sup)

        def healthy_web() -> list[dict[str, Any]]:
            return [b for b in receiver.bodies("change") if states(b)["web"]["state"] == "healthy"]

        report = (await async_wait_for(healthy_web))[-1]
        web_pid = sup.runners["web"].status()["pid"]
        assert report["fields"] == {"server": "ci-7", "environment": "test"}
        assert report["ports"] == [
            {
                "port": port,
                "service": "web",
                "role": "service",
                "status": "occupied",
                "holder": {"pid": web_pid, "name": "python3", "user": report["ports"][0]["holder"]["user"]},
                "ours": True,
            }
        ]
        assert report["stack"]["pid"] == os.getpid() and report["stack"]["running"] is True

        before = len(receiver.requests)
        worker_pid = sup.runners["worker"].status()["pid"]
        os.kill(worker_pid, signal.SIGKILL)
        worker = sup.runners["worker"]
        await until(sup, lambda: worker.state == "running" and worker.status()["pid"] != worker_pid)
        changed = time.monotonic()  # running again: a change, reported after the debounce

        def crash_reported() -> list[Received]:
            return [
                r
                for r in receiver.requests[before:]
                if r.body["trigger"] == "change" and states(r.body)["worker"]["pid"] != worker_pid
            ]

        first = (await async_wait_for(crash_reported))[0]
        assert first.at - changed < reports.DEBOUNCE + 2.0


async def test_no_reporter_without_settings_until_a_reload_sets_them(
    tmp_path: Path, receiver: Receiver
) -> None:
    stack = f'services:\n  idle: {{command: "{SLEEP}"}}\n'
    path = write_stack(tmp_path, stack)
    async with running_stack(path) as sup:
        await until_ready(sup)
        assert sup.reporter is None
        write_stack(tmp_path, stack + f"settings:\n  report: {{url: '{receiver.url}', interval: 50ms}}\n")
        result = await sup.reload()
        assert result["settings_changed"] == ["report"] and result["needs_supervisor_restart"] == []
        await async_wait_for(lambda: receiver.bodies("interval"))
        # Counted once the answer is read, a moment after the receiver has the body.
        await async_wait_for(lambda: sup.reporter is not None and sup.reporter.sent >= 1)


async def test_the_audit_hook_and_a_full_queue_against_a_dead_endpoint(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.hang = True  # takes the connection, never answers
    path = report_file(
        tmp_path,
        f"url: {receiver.url}\ninterval: 10ms\ntimeout: 30s\nretries: 0\ninclude_audit: true\n"
        "fields: {team: payments}\n",
    )
    stack = PlainStack(path, a_status(os.getpid(), free_port()))
    asked: list[tuple[str, int | None]] = []

    def audit(config: Any, supervisor_pid: int | None) -> dict[str, Any]:
        asked.append((config.name, supervisor_pid))
        return {"score": 0.0, "findings": [], "listeners": []}

    reporter = reports.Reporter(stack, audit=audit, queue_size=4)
    made: list[str] = []
    put = reporter.put

    def recording(payload: dict[str, Any]) -> None:
        made.append(payload["id"])
        put(payload)

    reporter.put = recording  # type: ignore[method-assign]
    task = asyncio.create_task(reporter.run())
    try:
        await async_wait_for(lambda: reporter.dropped >= 6)
        assert len(reporter.queue) == 4  # memory stays bounded while the endpoint is dead
        # The newest wait; the oldest were dropped (the first is the one being sent).
        assert [p["id"] for p in reporter.queue] == made[-4:]
        assert reporter.dropped == len(made) - 4 - 1
        (sending,) = receiver.requests
        assert sending.body["audit"] == {"score": 0.0, "findings": [], "listeners": []}
        assert sending.body["fields"] == {"team": "payments"}
        assert asked[0] == (tmp_path.name, os.getpid())
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_audit_that_fails_leaves_the_report_whole(tmp_path: Path, receiver: Receiver) -> None:
    path = report_file(tmp_path, f"url: {receiver.url}\ninclude_audit: true\n")
    stack = PlainStack(path, a_status(os.getpid(), free_port()))

    def audit(config: Any, supervisor_pid: int | None) -> dict[str, Any]:
        raise OSError("cannot read /proc")

    reporter = reports.Reporter(stack, audit=audit)
    payload = await reporter.report("change")
    assert payload is not None
    assert payload["audit"] is None
    assert payload["audit_error"] == "the audit failed: OSError: cannot read /proc"
    valid(payload)


# ----- report --once --------------------------------------------------------------------------


def test_report_once_against_a_running_stack_and_a_stopped_one(
    tmp_path: Path, receiver: Receiver, detached: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPORT_TOKEN", "t0k-2")
    (port,) = free_ports(1)
    write_stack(
        tmp_path,
        f"""
        services:
          web:
            command: python3 server.py
            port: {port}
            healthcheck: {{tcp: "127.0.0.1:${{PORT}}", interval: 200ms}}
        settings:
          report:
            url: {receiver.url}
            auth: "X-API-Key: ${{REPORT_TOKEN}}"
            interval: 1h
            on_change: false
            fields: {{server: ci-7}}
        """,
    )
    sent = cli("report", "--once", cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr == f"report sent to {receiver.url}: HTTP 200 (the stack is not running)\n"
    (down,) = receiver.bodies("once")
    assert down["stack"]["running"] is False
    assert down["services"][0]["state"] == "not running"
    assert down["ports"][0]["status"] == "free"

    up = detached(tmp_path)
    assert up.returncode == 0, up.stderr
    sent = cli("report", "--once", cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    report = receiver.bodies("once")[-1]
    assert report["stack"]["running"] is True
    (web,) = report["services"]
    assert web["state"] == "healthy" and web["memory_bytes"] > 0 and web["pid"] is not None
    assert report["ports"][0]["ours"] is True and report["ports"][0]["holder"]["pid"] == web["pid"]
    assert report["fields"] == {"server": "ci-7"}
    assert receiver.requests[-1].headers["X-API-Key"] == "t0k-2"

    # --url overrides the file's; a failing endpoint is exit 1, saying why.
    other = Receiver()
    other.start()
    try:
        other.answers.extend([500] * 10)
        failed = cli("report", "--once", "--url", other.url, cwd=tmp_path)
        assert failed.returncode == 1
        assert failed.stderr == f"stackvisor: the report to {other.url} failed after 4 attempts: HTTP 500\n"
        assert len(other.requests) == 4
    finally:
        other.stop()
    for received in other.requests:
        valid(received.body)


def test_report_once_without_a_url_or_with_a_bad_one_is_a_usage_error(tmp_path: Path) -> None:
    write_stack(tmp_path, "services:\n  a: {command: 'true'}\n", programs=False)
    nowhere = cli("report", "--once", cwd=tmp_path)
    assert nowhere.returncode == 2
    assert "no url to send the report to: give --url URL, or set settings.report.url" in nowhere.stderr
    bad = cli("report", "--once", "--url", "ftp://x", cwd=tmp_path)
    assert (bad.returncode, bad.stderr) == (
        2,
        "stackvisor: --url: expected an http:// or https:// URL (the scheme is ftp:)\n",
    )
    assert cli("report", cwd=tmp_path).returncode == 2


def test_report_once_to_an_endpoint_nobody_listens_on(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/r"
    write_stack(
        tmp_path, f"services:\n  a: {{command: 'true'}}\nsettings:\n  report: {{url: '{url}', retries: 0}}\n"
    )
    result = cli("report", "--once", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"stackvisor: the report to {url} failed after 1 attempt: cannot send: ")
    assert "Traceback" not in result.stderr
