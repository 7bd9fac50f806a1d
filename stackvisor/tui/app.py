"""The Textual application of `stackvisor top`: the services' table, the log pane that
follows the selected service, a prompt for searching and scaling, a status line, the keys.

It reads `/v1/status?resources=true` once, then follows `/v1/events` (the stack's events
since it started, of which those older than the status are skipped, and a `resources`
sample every 2 s); a state change is drawn from the event at once, and the status
document is asked again shortly after (restart counts, ports, services a reload added).
Every request runs in a worker of the event loop, so the screen never waits on the
supervisor, and none outlives the app. Quitting touches nothing of the stack. What is
drawn lives in `board`; this module only draws it and sends keys.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote

from rich.text import Text
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, RichLog, Static
from textual.worker import Worker, WorkerState

from stackvisor.errors import ApiError, NotResponding, NotRunning, UnsafePath
from stackvisor.tui.board import COLUMNS, NAME_WIDTH, STATE_STYLES, Board, LogLines, cells, matches
from stackvisor.tui.feed import Feed
from stackvisor.tui.pageserver import PageError, PageServer

# What a request to the supervisor may end in (a broken answer is a ConnectionError).
FAILURES = (OSError, ValueError, ApiError, NotRunning, NotResponding, UnsafePath)
_GROUP = "namespace\n"  # row keys of namespace headers: no service name has a newline
_RETRY = 2.0  # seconds between attempts to reach a supervisor that went away


class TopApp(App[None]):
    TITLE = "stackvisor top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #title, #log-title { height: 1; background: $panel; text-style: bold; }
    #services { height: auto; max-height: 60%; }
    #log { height: 1fr; min-height: 3; }
    #prompt { display: none; }
    #prompt.-open { display: block; }
    #status { height: auto; max-height: 3; }
    #status.-error { text-style: bold reverse; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "act('start')", "start"),
        Binding("x", "act('stop')", "stop"),
        Binding("r", "act('restart')", "restart"),
        Binding("n", "scale", "scale"),
        Binding("slash", "search", "search"),
        Binding("o", "page", "page"),
        Binding("q", "quit", "quit"),
        Binding("escape", "escape", "clear", show=False),
    ]

    def __init__(self, socket: Path, stack_file: Path, name: str = "") -> None:
        super().__init__()
        self.feed = Feed(socket)
        self.page = PageServer(stack_file)
        self.board = Board(name=name)
        self.logs = LogLines()
        self.followed: str | None = None
        self.link = "connecting"
        self.prompting: Literal["search", "scale"] | None = None
        self._scaling: str | None = None
        self._drawn: dict[str, tuple[str, ...]] = {}
        self._layout: object = None
        self._refresh: Timer | None = None

    # ----- the screen --------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        table: DataTable[Text] = DataTable(id="services", cursor_type="row")
        for key, header in COLUMNS:
            table.add_column(header, key=key)
        yield table
        yield Static(id="log-title")
        yield RichLog(id="log", wrap=True, max_lines=self.logs.keep)
        yield Input(id="prompt", compact=True)
        yield Static(id="status")
        yield Footer(compact=True)

    @property
    def table(self) -> DataTable[Text]:
        return self.query_one("#services", DataTable)

    @property
    def log_view(self) -> RichLog:
        return self.query_one("#log", RichLog)

    @property
    def prompt(self) -> Input:
        return self.query_one("#prompt", Input)

    @property
    def status_line(self) -> str:
        return str(self.query_one("#status", Static).content)

    def on_mount(self) -> None:
        self.table.focus()
        self.draw_titles()
        self.run_worker(self._follow_stack(), group="events", exit_on_error=False)
        self.set_interval(1.0, self.draw)  # uptimes tick; nothing is asked of the server

    def say(self, text: str, *, error: bool = False) -> None:
        try:
            line = self.query_one("#status", Static)
        except (NoMatches, ScreenStackError):  # the app is closing: nobody to tell
            return
        line.update(text)
        line.set_class(error, "-error")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """What a worker did not expect is said, not lost; the rest of the app goes on."""
        if event.state is WorkerState.ERROR:
            self.say(f"unexpected: {event.worker.error!r}", error=True)

    def draw_titles(self) -> None:
        count = len(self.board.rows)
        where = f"down: {self.board.down}" if self.board.down else self.link
        self.query_one("#title", Static).update(
            f" {self.board.name or 'stack'} · {count} service{'s' * (count != 1)} · {where}"
        )
        title = f" logs: {self.followed or '-'}"
        if self.logs.query:
            title += (
                f" · search {self.logs.query!r}: {len(self.logs.shown())} of {len(self.logs.lines)} lines"
            )
        self.query_one("#log-title", Static).update(title)

    def draw(self, rebuild: bool = False) -> None:
        table, now = self.table, time.time()
        layout = self.board.layout()
        if rebuild or layout != self._layout:
            keep = self.selected()
            table.clear()
            self._drawn.clear()
            for namespace, rows in self.board.groups():
                if namespace is not None:
                    label = Text(f"▸ {namespace}"[: NAME_WIDTH + 2], style="bold underline")
                    table.add_row(label, *[Text("")] * (len(COLUMNS) - 1), key=_GROUP + namespace)
                for row in rows:
                    self._drawn[row.name] = texts = cells(row, now)
                    table.add_row(*self._styled(texts), key=row.name)
            self._layout = layout
            self._select(keep)
        else:
            for row in self.board.rows.values():
                texts, old = cells(row, now), self._drawn.get(row.name)
                for i, (key, _) in enumerate(COLUMNS):
                    if old is None or old[i] != texts[i]:
                        table.update_cell(row.name, key, self._styled(texts)[i], update_width=True)
                self._drawn[row.name] = texts
        self.draw_titles()

    @staticmethod
    def _styled(texts: tuple[str, ...]) -> list[Text]:
        out = [Text(t) for t in texts]
        out[1].stylize(STATE_STYLES.get(texts[1], ""))
        return out

    def selected(self) -> str | None:
        """The service under the cursor (None on a namespace's header row)."""
        table = self.table
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return key if key in self.board.rows else None

    def _select(self, name: str | None) -> None:
        """Put the cursor on `name`, or on the first service."""
        names = [n for _, rows in self.board.groups() for n in (r.name for r in rows)]
        target = name if name in self.board.rows else (names[0] if names else None)
        if target is not None:
            self.table.move_cursor(row=self.table.get_row_index(target))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        name = event.row_key.value
        if name in self.board.rows and name != self.followed:
            self.follow_logs(name)

    # ----- following the stack -----------------------------------------------------------

    async def _follow_stack(self) -> None:
        first = True
        while True:
            try:
                asked = time.time()  # the status is at least this new; older events are in it
                status = await self.feed.get("/v1/status?resources=true")
                self.board.apply_status(status, asked, resources=True)
                self.board.down, self.link = None, "live"
                self.draw(rebuild=True)
                if not first and self.followed:
                    self.follow_logs(self.followed)  # its stream ended with the old supervisor
                first = False
                url = f"/v1/events?since={status['started_at']}&resources=2"
                async for event in self.feed.events(url):
                    self._take(event.kind, event.data)
                self.link = "connection closed: the supervisor went away; retrying"
            except FAILURES as exc:
                self.link = f"cannot reach the supervisor ({exc}); retrying"
            self.draw_titles()
            await asyncio.sleep(_RETRY)

    def _take(self, kind: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if kind == "resources":
            self.board.apply_resources(data)
        else:
            details = data["data"] if isinstance(data.get("data"), dict) else {}
            service, ts = data.get("service"), float(data.get("ts") or time.time())
            if self.board.apply_event(kind, service, details, ts):
                self._schedule_refresh()
            if kind == "reload_failed" and ts >= self.board.as_of:
                self.say(f"reload failed, nothing changed: {details.get('error', '')}", error=True)
        self.draw()

    def _schedule_refresh(self) -> None:
        """Ask for the status once a burst of events has passed (a restart is several)."""
        if self._refresh is None:
            self._refresh = self.set_timer(0.15, self._start_refresh)

    def _start_refresh(self) -> None:
        self._refresh = None
        self.run_worker(self._refresh_status(), group="refresh", exclusive=True, exit_on_error=False)

    async def _refresh_status(self) -> None:
        asked = time.time()
        try:
            status = await self.feed.get("/v1/status")
        except FAILURES:
            return  # the event stream says what is wrong; the next event asks again
        self.draw(rebuild=self.board.apply_status(status, asked))

    # ----- the log pane ------------------------------------------------------------------

    def follow_logs(self, name: str) -> None:
        self.followed = name
        self.logs.clear()
        self.log_view.clear()
        self.draw_titles()
        self.run_worker(self._follow_logs(name), group="logs", exclusive=True, exit_on_error=False)

    async def _follow_logs(self, name: str) -> None:
        try:
            async for line in self.feed.lines(f"/v1/services/{quote(name)}/logs?tail=200&follow=true"):
                if self.logs.add(line):
                    self.log_view.write(self._marked(line))
                self.draw_titles()
        except FAILURES as exc:
            self.say(f"logs of {name}: {exc}", error=True)

    def _marked(self, line: str) -> Text:
        text = Text(line)
        for start, end in matches(line, self.logs.query):
            text.stylize("bold reverse", start, end)  # readable in any colour depth
        return text

    def redraw_logs(self) -> None:
        self.log_view.clear()
        for line in self.logs.shown():
            self.log_view.write(self._marked(line))
        self.draw_titles()

    # ----- keys --------------------------------------------------------------------------

    def _target(self, what: str) -> str | None:
        name = self.selected()
        if name is None:
            self.say(f"{what}: put the cursor on a service first", error=True)
        return name

    async def action_act(self, action: str) -> None:
        name = self._target(action)
        if name is not None:
            self.say(f"{action} {name}…")
            self.run_worker(self._post(action, name, None), group="actions", exit_on_error=False)

    async def _post(self, action: str, name: str, body: dict[str, Any] | None) -> None:
        try:
            answer = await self.feed.post(f"/v1/services/{quote(name)}/{action}", body)
        except ApiError as exc:
            # A route this supervisor lacks, not a service it lacks (also a 404).
            route = exc.status == 405 or (exc.status == 404 and exc.error == "not found")
            hint = " (this supervisor has no such action)" if route else ""
            self.say(f"{action} {name}: {exc}{hint}", error=True)
            return
        except FAILURES as exc:
            self.say(f"{action} {name}: {exc}", error=True)
            return
        state = answer.get("state") if isinstance(answer, dict) else None
        pid = answer.get("pid") if isinstance(answer, dict) else None
        now = f": {name} is {state}" + (f" (pid {pid})" if pid else "") if state else ""
        self.say(f"{action} {name}: done{now}")
        self._schedule_refresh()

    def _open_prompt(self, mode: Literal["search", "scale"], placeholder: str, value: str) -> None:
        self.prompting = mode
        prompt = self.prompt
        prompt.placeholder, prompt.value = placeholder, value
        prompt.add_class("-open")
        prompt.focus()

    def _close_prompt(self) -> None:
        self.prompting = self._scaling = None
        self.prompt.remove_class("-open")
        self.table.focus()

    def action_search(self) -> None:
        self._open_prompt("search", "search the log (Enter keeps it, Esc clears it)", self.logs.query)

    def action_scale(self) -> None:
        name = self._target("scale")
        if name is not None:
            self._open_prompt("scale", f"replicas of {name} (Enter applies, Esc cancels)", "")
            self._scaling = name

    def on_input_changed(self, event: Input.Changed) -> None:
        if self.prompting == "search" and event.value != self.logs.query:
            self.logs.query = event.value
            self.redraw_logs()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.prompting == "scale" and self._scaling is not None:
            name, text = self._scaling, event.value.strip()
            if not text.isdigit():
                self.say(f"scale {name}: expected a number of replicas (got {text!r})", error=True)
                return
            self.say(f"scale {name} to {text}…")
            self.run_worker(self._post("scale", name, {"replicas": int(text)}), exit_on_error=False)
        self._close_prompt()

    def action_escape(self) -> None:
        if self.prompting == "search" or (self.prompting is None and self.logs.query):
            self.logs.query = ""
            self.redraw_logs()
        if self.prompting is not None:
            self._close_prompt()

    async def action_page(self) -> None:
        self.say("starting the status page…")
        self.run_worker(self._serve_page(), group="page", exclusive=True, exit_on_error=False)

    async def _serve_page(self) -> None:
        try:
            address = await self.page.start()
        except (PageError, OSError) as exc:
            self.say(f"status page: {exc}", error=True)
            return
        self.say(f"status page (while top runs): {address}")

    async def action_quit(self) -> None:
        """Leave; the stack runs on. Only the status page this app served ends."""
        await self.page.stop()
        self.exit()

    async def on_unmount(self) -> None:
        await self.page.stop()
