#!/usr/bin/env python3
"""Benchmark: what the status page weighs, and how long a browser takes from navigation
to a rendered table of 50 services.

A stack of 50 services (each a sleeping Python process) runs, `stackvisor ui` serves the
page, and the system's Chromium (driven by Playwright) loads it again and again in one
session: the figure is the page's own mark `table-rendered` (set once the status is read
and the table, the graph and the log choices are drawn), counted from the start of the
navigation, as the browser's performance timeline gives it. With `--screenshot PATH`, a
smaller stack of a few named services is drawn to PATH (the README's picture).

Usage: python scripts/bench_status_page.py [--services 50] [--runs 9] [--screenshot docs/status-page.png]
"""

from __future__ import annotations

import argparse
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchkit import REPO, STACKVISOR, cli, end_everything, free_ports

sys.path.insert(0, str(REPO))

from stackvisor.control import page as page_files

SERVER = """\
import http.server, os
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        print("GET", self.path, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Quiet).serve_forever()
"""


def serve_ui(folder: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([*STACKVISOR, "ui"], cwd=folder, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("status page: "):
        proc.kill()
        sys.exit(f"stackvisor ui did not start: {line!r}")
    return proc, line.split(": ", 1)[1].strip()


def many(count: int) -> str:
    lines = ["services:"]
    for i in range(count):
        lines.append(f"  svc{i:02d}:\n    command: {sys.executable} -c 'import time; time.sleep(10**6)'")
        if i:
            lines.append(f"    depends_on: [svc{(i - 1) // 3:02d}]")
    return "\n".join(lines) + "\n"


def few() -> str:
    db, cache, api, web = free_ports(4)
    py = sys.executable
    return f"""services:
  db:
    command: {py} server.py
    port: {db}
    healthcheck: {{http: "http://127.0.0.1:${{PORT}}/", interval: 2s}}
  cache:
    command: {py} server.py
    port: {cache}
    healthcheck: {{tcp: "127.0.0.1:${{PORT}}", interval: 2s}}
  api:
    command: {py} server.py
    port: {api}
    depends_on:
      db: {{condition: service_healthy}}
      cache: {{condition: service_healthy}}
    healthcheck: {{http: "http://127.0.0.1:${{PORT}}/", interval: 1s}}
  worker:
    command: {py} -c "import time; print('worker ready', flush=True); time.sleep(10**6)"
    depends_on: [api]
  web:
    command: {py} server.py
    port: {web}
    depends_on: [api]
"""


def measure(folder: Path, count: int, runs: int, chromium: str, screenshot: Path | None) -> list[float]:
    from playwright.sync_api import sync_playwright

    stack = folder / "services.yaml"
    if cli("up", "-d", "--wait", "-f", str(stack), timeout=300).returncode != 0:
        sys.exit("up failed")
    proc, url = serve_ui(folder)
    took: list[float] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium)
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            for run in range(runs):
                page.goto(url if run == 0 else url.split("/?", 1)[0] + "/")
                page.wait_for_selector(f"#services tbody[data-rendered='{count}']", timeout=60_000)
                page.wait_for_function("() => performance.getEntriesByName('table-rendered').length > 0")
                took.append(page.evaluate("performance.getEntriesByName('table-rendered')[0].startTime"))
            if screenshot is not None:
                page.wait_for_selector("#link[data-state='live']")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#services td[data-label=CPU]')]"
                    ".some(c => c.textContent)"
                )
                page.select_option("#log-service", "api")
                page.wait_for_function("() => document.querySelector('#log').textContent.includes('GET /')")
                page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        end_everything(folder, stack, [])
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium here (apt-get install chromium)")
    sizes = {name: len(page_files.asset(name)) for name in page_files.ASSETS}
    print(
        f"the page weighs {page_files.weight():,} bytes: " + ", ".join(f"{n} {b:,}" for n, b in sizes.items())
    )
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        folder = Path(tmp)
        (folder / "services.yaml").write_text(many(args.services))
        took = measure(folder, args.services, args.runs, chromium, None)
        print(
            f"navigation to a rendered table of {args.services} services, {args.runs} loads: "
            f"median {statistics.median(took):.0f} ms (min {min(took):.0f}, max {max(took):.0f}; "
            f"the first, with the one-time address: {took[0]:.0f} ms)"
        )
    if args.screenshot is not None:
        with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
            folder = Path(tmp) / "shop"
            folder.mkdir()
            (folder / "server.py").write_text(SERVER)
            (folder / "services.yaml").write_text(few())
            measure(folder, 5, 1, chromium, args.screenshot)
            print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
