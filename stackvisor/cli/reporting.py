"""`stackvisor report --once`: one report of the stack sent now (from cron, from CI).

The report is the one the running supervisor sends (`runtime.reportdoc`), made here:
the status comes over the control socket, the holders of the stack's ports are read
in this process. A stack that does not run is reported as such, with its services
and ports as the file names them. The endpoint and its settings come from the file's
`settings.report`; `--url` overrides its url.
"""

from __future__ import annotations

import argparse
import sys
import time

from stackvisor.cli.common import EXIT_FAILURE, EXIT_OK, UsageError, client, load
from stackvisor.errors import NotRunning


def cmd_report(args: argparse.Namespace) -> int:
    # Imported here: the parser imports this module for every command.
    import asyncio
    import socket

    from stackvisor.config.endpoint import check_url, shown_url
    from stackvisor.config.schema import ReportSettings
    from stackvisor.runtime import reports
    from stackvisor.runtime.reportdoc import build_report, stack_ports

    if not args.once:
        raise UsageError(
            "say --once to send one report now (the running stack sends its own: settings.report)"
        )
    config = load(args)
    settings = config.settings.report or ReportSettings()
    url = args.url or settings.url
    if url is None:
        raise UsageError(
            "no url to send the report to: give --url URL, or set settings.report.url in the file"
        )
    try:
        check_url(url)
    except ValueError as exc:
        raise UsageError(f"--url: {exc}") from None
    try:
        status = client(config).get("/v1/status?resources=true")
    except NotRunning:
        status = None
    configured = {
        name: svc.port if isinstance(svc.port, int) else None for name, svc in config.services.items()
    }
    ports = [p.port for p in stack_ports(status, configured)]
    prefer = [] if status is None else [status["pid"], *(s["pid"] for s in status["services"] if s["pid"])]
    audit, audit_error = None, None
    if settings.include_audit:
        audit, audit_error = reports.read_audit(
            reports.default_audit, config, status["pid"] if status is not None else None
        )
    payload = build_report(
        config.name,
        status,
        reports.scan_holders(ports, prefer),
        fields=settings.fields,
        trigger="once",
        now=time.time(),
        host=socket.gethostname(),
        configured=configured,
        audit=audit,
        audit_error=audit_error,
    )
    outcome = asyncio.run(reports.send_once(settings, payload, url))
    shown = shown_url(url)
    if outcome.ok:
        running = "" if status is not None else " (the stack is not running)"
        print(f"report sent to {shown}: HTTP {outcome.status}{running}", file=sys.stderr)
        return EXIT_OK
    tries = f"{outcome.attempts} attempt{'s' if outcome.attempts != 1 else ''}"
    print(f"stackvisor: the report to {shown} failed after {tries}: {outcome.error}", file=sys.stderr)
    return EXIT_FAILURE
