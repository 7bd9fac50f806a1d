"""The status page in a real browser (Playwright driving the system's Chromium), served by
a real `stackvisor ui` in front of a real stack; and its session rules over plain HTTP."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stackvisor.control import page as page_files
from tests.conftest import REPO, child_env, client, free_ports, kill_tree, save, write_stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where the screenshots go: kept after the run (CI keeps the folder as its artifacts).
ARTIFACTS = Path(os.environ.get("STACKVISOR_ARTIFACTS", REPO / "test-artifacts"))


@dataclass
class Ui:
    root: Path
    url: str  # with the one-time token
    proc: subprocess.Popen[str]

    @property
    def base(self) -> str:
        return self.url.split("/?", 1)[0]


def stack_text(db: int, api: int) -> str:
    return f"""
        services:
          db:
            command: python3 server.py
            port: {db}
            namespace: backend
            healthcheck: {{http: "http://127.0.0.1:${{PORT}}/", interval: 200ms}}
          api:
            command: python3 server.py
            port: {api}
            namespace: backend
            depends_on: {{db: {{condition: service_healthy}}}}
            healthcheck: {{tcp: "127.0.0.1:${{PORT}}", interval: 200ms}}
          worker:
            command: python3 -c "import time; print('worker up', flush=True); time.sleep(3600)"
            depends_on: [api]
        """


@pytest.fixture
def ui(tmp_path: Path, detached: Any) -> Iterator[Ui]:
    """A stack of three services and `stackvisor ui` in front of it; both ended after."""
    write_stack(tmp_path, stack_text(*free_ports(2)))
    assert detached(tmp_path).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackvisor", "ui"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("status page: "), f"stackvisor ui said {line!r}"
        yield Ui(tmp_path, line.split(": ", 1)[1].strip(), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def status_of(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url, method=method, headers=headers or {}, data=b"{}" if method == "POST" else None
    )
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def test_without_the_session_every_route_is_401_and_a_change_needs_the_csrf_header(ui: Ui) -> None:
    for path in ("/", "/ui/page.js", "/ui/page.css", "/v1/status", "/v1/events", "/metrics", "/nowhere"):
        assert status_of(ui.base + path) == 401, path
    assert status_of(ui.base + "/?token=wrong") == 401
    # The token opens one session, once.
    opened = urllib.request.build_opener(NoRedirect)
    try:
        opened.open(ui.url, timeout=10)
        raise AssertionError("expected a redirect to the bare page")
    except urllib.error.HTTPError as exc:
        assert exc.code == 303 and exc.headers["Location"] == "/"
        cookies = exc.headers.get_all("Set-Cookie")
    assert status_of(ui.url) == 401
    session = next(c for c in cookies if c.startswith("sv_session_"))
    assert "HttpOnly" in session and "SameSite=Strict" in session
    jar = "; ".join(c.split(";", 1)[0] for c in cookies)
    csrf = next(c.split(";", 1)[0].split("=", 1)[1] for c in cookies if c.startswith("sv_csrf_"))
    assert status_of(ui.base + "/v1/status", headers={"Cookie": jar}) == 200
    restart = ui.base + "/v1/services/worker/restart"
    assert status_of(restart, method="POST", headers={"Cookie": jar}) == 403
    evil = {"Cookie": jar, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert status_of(restart, method="POST", headers=evil) == 403
    assert status_of(restart, method="POST", headers={"Cookie": jar, "X-CSRF-Token": csrf}) == 200


def test_the_control_socket_serves_the_same_page(tmp_path: Path, detached: Any) -> None:
    write_stack(tmp_path, "services:\n  one: {command: \"python3 -c 'import time; time.sleep(300)'\"}\n")
    assert detached(tmp_path).returncode == 0
    html = client(tmp_path).get("/")
    assert '<script src="/ui/page.js" defer></script>' in html
    assert client(tmp_path).get("/ui/page.js").startswith("// The status page")


# ----- in the browser ---------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs it with apt)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


def opened(browser: Any, ui: Ui, after: Any = None) -> Any:
    """A page on the status page, its table rendered with every service: the first through
    the one-time address, another (`after` a first one) in the first one's session."""
    page = (after.context if after is not None else browser.new_context()).new_page()
    page.set_viewport_size({"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(ui.base + "/" if after is not None else ui.url)
    page.wait_for_selector("#services tbody[data-rendered='3']", timeout=15_000)
    page.wait_for_selector("#link[data-state='live']", timeout=15_000)
    page.errors = errors
    return page


def pid_cell(page: Any, name: str) -> str:
    return str(page.inner_text(f"#services tr[data-service='{name}'] td.pid"))


def test_the_page_lists_every_service_live_and_a_killed_one_recovers_without_a_reload(
    ui: Ui, browser: Any
) -> None:
    page = opened(browser, ui)
    page.wait_for_function(
        "() => ['db', 'api'].every(n => document.querySelector(`tr[data-service=${n}] .badge`)"
        ".textContent === 'healthy')"
    )
    page.wait_for_function(  # worker starts once api is healthy
        "() => document.querySelector('tr[data-service=worker] .badge').textContent === 'running'"
    )
    groups = page.locator("#services tr.group th").all_inner_texts()
    assert [g.lower() for g in groups] == ["no namespace", "backend"]  # grouped by namespace
    assert page.locator("#graph g.node").count() == 3 and page.locator("#graph path.edge").count() == 2
    assert page.url == ui.base + "/"  # the token is gone from the address
    # Every badge text the page ever shows from now on, and a mark a reload would wipe.
    page.evaluate(
        """() => {
        window.stillHere = true; window.seen = [];
        // Every badge of api ever drawn: each render adds new cells, which keep their
        // text, so states drawn between two callbacks of the observer are seen too.
        const api = "tr[data-service=api]";
        new MutationObserver((records) => {
          for (const record of records) {
            const inside = record.target.closest && record.target.closest(api);
            for (const node of record.addedNodes) {
              if (!node.querySelector || !(inside || node.matches(api))) continue;
              const b = node.matches(".badge") ? node : node.querySelector(".badge");
              if (b) window.seen.push(b.textContent);
            }
          }
        }).observe(document.querySelector("#services tbody"), {subtree: true, childList: true});
    }"""
    )
    old = int(pid_cell(page, "api"))
    os.kill(old, signal.SIGKILL)
    page.wait_for_function(
        f"() => document.querySelector('tr[data-service=api] .badge').textContent === 'healthy'"
        f" && document.querySelector('tr[data-service=api] td.pid').textContent !== '{old}'",
        timeout=15_000,
    )
    seen = page.evaluate("window.seen")
    assert {"exited", "backoff", "restarting", "starting"} & set(seen), seen
    assert page.evaluate("window.stillHere") is True
    assert page.errors == []


def test_the_restart_button_restarts_the_service_and_keys_reach_it(ui: Ui, browser: Any) -> None:
    page = opened(browser, ui)
    old = pid_cell(page, "worker")
    assert old.isdigit()
    restart = page.get_by_role("button", name="Restart worker")
    for _ in range(60):  # by keyboard alone
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('aria-label')") == "Restart worker":
            break
    else:
        raise AssertionError("Tab never reached the restart button of worker")
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => (t => /^\\d+$/.test(t.textContent) && t.textContent !== '{old}')"
        "(document.querySelector('tr[data-service=worker] td.pid'))",
        timeout=15_000,
    )
    # The new pid shows from `starting` on; `running` follows. The button waits for the
    # restart's answer, which may come after the page has drawn the new pid.
    page.wait_for_function(
        "() => document.querySelector('tr[data-service=worker] .badge').textContent === 'running'",
        timeout=15_000,
    )
    page.wait_for_function(
        "() => !document.querySelector('tr[data-service=worker] button[data-action=restart]').disabled",
        timeout=15_000,
    )
    assert restart.is_enabled()


def test_the_keyboard_focus_stays_on_a_button_while_the_page_redraws(ui: Ui, browser: Any) -> None:
    """A live page redraws a service's row on every event and every resources sample (every
    2 s): a keyboard user's focus on one of its buttons must survive that."""
    page = opened(browser, ui)
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('aria-label')") == "Stop worker":
            break
    else:
        raise AssertionError("Tab never reached the stop button of worker")
    watch = (
        "() => { window.redrawn = 0; new MutationObserver(() => { window.redrawn += 1; })"
        ".observe(document.querySelector('tr[data-service=worker]'), {childList: true}); }"
    )
    page.evaluate(watch)
    page.wait_for_function("() => window.redrawn >= 2", timeout=15_000)  # a resources sample or two
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Stop worker"
    # A change of state redraws the row and the table: the focus stays where it was.
    client(ui.root).post("/v1/services/worker/stop")
    page.wait_for_function(
        "() => document.querySelector('tr[data-service=worker] .badge').textContent === 'stopped'",
        timeout=15_000,
    )
    page.evaluate("() => { window.redrawn = 0; }")
    page.wait_for_function("() => window.redrawn >= 1", timeout=15_000)  # the table, from the status
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Stop worker"
    page.keyboard.press("Shift+Tab")  # and Tab order goes on from there
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Start worker"


def test_a_failed_reload_shows_where_and_the_page_fits_a_phone_and_the_dark(ui: Ui, browser: Any) -> None:
    page = opened(browser, ui)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_function("() => document.querySelectorAll('#services .badge').length === 3")
    page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    stack = ui.root / "services.yaml"
    save(stack, stack.read_text().replace("    port:", "    port: [", 1))
    page.wait_for_selector("#banner:not([hidden])", timeout=15_000)
    assert "services.yaml:" in page.inner_text("#banner")
    phone = opened(browser, ui, after=page)
    phone.set_viewport_size({"width": 390, "height": 844})
    phone.emulate_media(color_scheme="dark")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert phone.evaluate("getComputedStyle(document.body).backgroundColor") != light
    phone.screenshot(path=str(ARTIFACTS / "status-page-phone.png"), full_page=True)
    assert page_files.weight() < 64 * 1024


def test_the_log_follows_live(ui: Ui, browser: Any) -> None:
    page = opened(browser, ui)
    page.select_option("#log-service", "worker")
    page.wait_for_function(
        "() => document.querySelector('#log').textContent.includes('worker up')", timeout=15_000
    )
    before = page.inner_text("#log").count("worker up")
    client(ui.root).post("/v1/services/worker/restart")  # its next run says so again, live
    page.wait_for_function(
        f"() => document.querySelector('#log').textContent.split('worker up').length - 1 > {before}",
        timeout=15_000,
    )
