"""`stackvisor top`: the terminal UI driven by Textual's own harness (80x24) against a real
running stack; and the pure board it draws, with tables of cases."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("textual", reason="`stackvisor top` needs Textual: pip install 'stackvisor[tui]'")

from conftest import alive, child_env, cli, client, free_ports, wait_for, write_stack
from textual.pilot import Pilot

from stackvisor.cli.top import build
from stackvisor.tui.app import TopApp
from stackvisor.tui.board import COLUMNS, NO_NAMESPACE, Board, LogLines, cells, matches

LONG = "notifications-sender-eu"  # longer than the name column: shown cut, with an ellipsis


def stack_text(port: int) -> str:
    return f"""
        services:
          api:
            command: python3 server.py
            port: {port}
            namespace: web
          worker:
            command: python3 -c "import time; print('worker up', flush=True); time.sleep(300)"
            namespace: web
            backoff: {{initial: 50ms}}
          chatty:
            command: >-
              python3 -c "import time; print('hello haystack', flush=True);
              print('the Needle 42', flush=True); time.sleep(300)"
          {LONG}:
            command: python3 -c "import time; time.sleep(300)"
        """


@pytest.fixture
def stack(tmp_path: Path, detached: Any) -> Iterator[Path]:
    """A running stack of four services (two in namespace `web`); brought down after."""
    write_stack(tmp_path, stack_text(*free_ports(1)))
    assert detached(tmp_path).returncode == 0
    yield tmp_path


def top(root: Path) -> TopApp:
    return build(argparse.Namespace(file=str(root / "services.yaml")))


async def until(pilot: Pilot[None], predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Let the app run until `predicate()` holds; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {predicate}")
        await pilot.pause(0.02)
    return value


def cell(app: TopApp, name: str, column: str) -> str:
    """The text of a cell; empty while the row is not drawn yet."""
    return str(app.table.get_cell(name, column)) if name in app.board.rows and app.table.row_count else ""


def log_text(app: TopApp) -> str:
    return "\n".join(strip.text for strip in app.log_view.lines)


def services(root: Path) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in client(root).get("/v1/status")["services"]}


async def select(pilot: Pilot[None], app: TopApp, name: str) -> None:
    """Move the cursor with the arrow keys until it is on `name`."""
    for key in ("down", "up"):
        for _ in range(app.table.row_count):
            if app.selected() == name:
                return
            await pilot.press(key)
    assert app.selected() == name


async def test_the_table_lists_every_service_with_its_state_in_its_namespace(stack: Path) -> None:
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link == "live" and app.table.row_count == 6)
        known = services(stack)
        for name, svc in known.items():
            assert cell(app, name, "state") == svc["state"] == "running"
            assert cell(app, name, "pid") == str(svc["pid"])
        assert cell(app, "api", "port") == str(known["api"]["port"])
        assert cell(app, LONG, "name") == LONG[:17] + "…"
        keys = [row.key.value for row in app.table.ordered_rows]
        assert keys == ["namespace\nweb", "api", "worker", f"namespace\n{NO_NAMESPACE}", "chatty", LONG]


async def test_a_killed_service_shows_its_new_pid_without_a_restart_of_the_app(stack: Path) -> None:
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link == "live")
        old = services(stack)["worker"]["pid"]
        await until(pilot, lambda: cell(app, "worker", "pid") == str(old))
        os.kill(old, signal.SIGKILL)
        new = await until(pilot, lambda: (p := services(stack)["worker"]["pid"]) not in (None, old) and p)
        await until(pilot, lambda: cell(app, "worker", "pid") == str(new))
        await until(pilot, lambda: cell(app, "worker", "state") == "running")
        await until(pilot, lambda: cell(app, "worker", "restarts") == "1")  # the status asked again
        assert cell(app, "api", "mem") not in ("", "-")  # which has no resources: those are kept


async def test_the_restart_key_restarts_the_selected_service(stack: Path) -> None:
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link == "live")
        before = services(stack)
        await select(pilot, app, "worker")
        await pilot.press("r")
        new = await until(
            pilot,
            lambda: (p := services(stack)["worker"]["pid"]) not in (None, before["worker"]["pid"]) and p,
        )
        await until(pilot, lambda: cell(app, "worker", "pid") == str(new))
        await until(pilot, lambda: app.status_line.startswith("restart worker: done"))
        assert services(stack)["api"]["pid"] == before["api"]["pid"]  # only the selected one


async def test_the_log_pane_follows_the_selected_service_and_search_filters_it(stack: Path) -> None:
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link == "live")
        await select(pilot, app, "chatty")
        await until(pilot, lambda: "the Needle 42" in log_text(app) and "hello haystack" in log_text(app))
        await pilot.press("slash", *"needle", "enter")
        await until(pilot, lambda: "hello haystack" not in log_text(app))
        assert "the Needle 42" in log_text(app)
        (shown,) = [strip for strip in app.log_view.lines if "Needle" in strip.text]
        marked = "".join(seg.text for seg in shown if seg.style is not None and seg.style.reverse)
        assert marked == "Needle"  # the match itself is marked, in reverse video
        assert app.focused is app.table  # Enter keeps the search and gives the keys back
        await pilot.press("escape")
        await until(pilot, lambda: "hello haystack" in log_text(app))


async def test_q_quits_and_the_stack_runs_on(stack: Path) -> None:
    before = {name: svc["pid"] for name, svc in services(stack).items()}
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link == "live")
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)
    after = services(stack)
    assert {name: svc["pid"] for name, svc in after.items()} == before
    assert {svc["state"] for svc in after.values()} == {"running"}


async def test_every_column_fits_80_columns(stack: Path) -> None:
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        # Widest once CPU and memory arrive (a `resources` event every 2 s).
        await until(pilot, lambda: cell(app, "api", "cpu").endswith("%"))
        await pilot.pause()
        headers = [str(column.label) for column in app.table.ordered_columns]
        assert headers == [header for _, header in COLUMNS]
        assert app.table.virtual_size.width <= app.table.size.width <= 80
        assert app.table.max_scroll_x == 0


async def test_scale_shows_the_answer_in_the_status_line(stack: Path) -> None:
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link == "live")
        await select(pilot, app, "api")
        await pilot.press("n", "2", "enter")
        said = await until(pilot, lambda: app.status_line.startswith("scale api:") and app.status_line)
        # A supervisor without scaling answers 404: said, and the app goes on.
        assert said.startswith("scale api: done") or "not found" in said
        assert app.is_running
        await pilot.press("n", *"two", "enter")
        assert "expected a number of replicas" in app.status_line


async def test_the_page_key_serves_the_status_page_while_top_runs(stack: Path) -> None:
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link == "live")
        await pilot.press("o")
        await until(pilot, lambda: "http://127.0.0.1:" in app.status_line, timeout=30)
        pid = app.page.pid
        assert alive(pid)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)
    wait_for(lambda: not alive(pid))


def test_top_without_textual_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['textual'] = None\nfrom stackvisor.cli import main\nsys.exit(main(['top']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
    )
    assert done.returncode == 2
    assert "pip install 'stackvisor[tui]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_top_without_a_running_stack_exits_3(tmp_path: Path) -> None:
    write_stack(tmp_path, stack_text(*free_ports(1)))
    done = cli("top", cwd=tmp_path)
    assert done.returncode == 3
    assert "is not running" in done.stderr


# ----- the board, without a terminal ------------------------------------------------------


def status(*services: dict[str, Any]) -> dict[str, Any]:
    return {"name": "demo", "started_at": 1.0, "services": list(services)}


def svc(name: str, namespace: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "state": "running", "pid": 10, "restarts": 0, "namespace": namespace, **kw}


@pytest.mark.parametrize(
    ("namespaces", "groups"),
    [
        ([None, None], [(None, ["a", "b"])]),
        (["x", None], [("x", ["a"]), (NO_NAMESPACE, ["b"])]),
        (["x", "y", "x"], [("x", ["a", "c"]), ("y", ["b"])]),
    ],
)
def test_services_are_grouped_only_when_one_has_a_namespace(
    namespaces: list[str | None], groups: list[tuple[str | None, list[str]]]
) -> None:
    board = Board()
    board.apply_status(status(*(svc(n, ns) for n, ns in zip("abc", namespaces, strict=False))), 0.0)
    assert [(ns, [r.name for r in rows]) for ns, rows in board.groups()] == groups


def test_a_state_event_is_drawn_at_once_and_asks_for_the_status() -> None:
    board = Board()
    board.apply_status(status(svc("a", started_at=5.0)), 0.0)
    assert board.apply_event("state", "a", {"old": "running", "new": "exited", "pid": 10}, 9.0)
    assert (board.rows["a"].state, board.rows["a"].pid, board.rows["a"].started_at) == ("exited", None, None)
    board.apply_event("state", "a", {"old": "backoff", "new": "starting", "pid": 11, "port": 81}, 10.0)
    row = board.rows["a"]
    assert (row.state, row.pid, row.port, row.started_at) == ("starting", 11, 81, 10.0)
    assert cells(row, 75.0)[4] == "1m05s"
    assert not board.apply_event("health", "a", {"health": "healthy"}, 11.0)


def test_events_older_than_the_status_are_already_in_it() -> None:
    board = Board()
    board.apply_status(status(svc("a", pid=12, started_at=50.0)), 100.0)
    assert not board.apply_event("state", "a", {"old": "running", "new": "pending", "pid": None}, 40.0)
    assert (board.rows["a"].state, board.rows["a"].pid) == ("running", 12)
    assert board.apply_event("state", "a", {"old": "running", "new": "exited", "pid": 12}, 100.5)
    assert board.rows["a"].state == "exited"


def test_cpu_is_a_rate_between_two_samples_and_none_for_a_new_process() -> None:
    board = Board()
    used = {"memory_bytes": 2 << 20, "cpu_seconds": 1.0}
    board.apply_status(status(svc("a", resources=used)), 100.0, resources=True)
    assert board.rows["a"].cpu_percent is None
    assert cells(board.rows["a"], 100.0)[6:] == ("-", "2M")
    board.apply_resources({"ts": 102.0, "services": {"a": {"memory_bytes": 1, "cpu_seconds": 1.5}}})
    assert cells(board.rows["a"], 102.0)[6] == "25%"
    # The status asked again without resources (after an event) says null for each: kept.
    board.apply_status(status(svc("a", resources=None)), 103.0)
    assert cells(board.rows["a"], 103.0)[6:] == ("25%", "1B")
    board.apply_resources({"ts": 104.0, "services": {"a": {"memory_bytes": 1, "cpu_seconds": 0.1}}})
    assert board.rows["a"].cpu_percent is None
    board.apply_resources({"ts": 106.0, "services": {"a": None}})
    assert cells(board.rows["a"], 106.0)[6:] == ("-", "-")


@pytest.mark.parametrize(
    ("query", "shown"),
    [("", ["GET /a", "error: db", "GET /b"]), ("get", ["GET /a", "GET /b"]), ("ERROR", ["error: db"])],
)
def test_search_keeps_the_lines_that_match_ignoring_case(query: str, shown: list[str]) -> None:
    lines = LogLines(query=query)
    for line in ["GET /a", "error: db", "GET /b"]:
        lines.add(line)
    assert lines.shown() == shown
    assert matches("a.b A.B", "a.b") == [(0, 3), (4, 7)]  # the query is text, not a pattern


async def test_a_worker_that_fails_as_the_app_closes_is_no_crash(stack: Path) -> None:
    """A status asked for just before `q` comes back to a screen being torn down: what it
    would say has nowhere to go, and that is no error of the app's."""
    app = top(stack)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.link == "live")
    app.say("late", error=True)  # the widgets are gone
