"""What the CLI prints: the status table and the history, from the documents the API returns."""

from __future__ import annotations

import time
from typing import Any

from stackvisor.runtime.states import State
from stackvisor.runtime.status import StackStatus
from stackvisor.textfmt import format_age, format_bytes, table


def format_status(status: StackStatus) -> str:
    now = time.time()
    rows = [("SERVICE", "STATE", "PID", "PORT", "RESTARTS", "UPTIME", "CPU", "MEM", "DETAIL")]
    for s in status["services"]:
        started = s.get("started_at")
        uptime = format_age(now - started, parts=2) if started else "-"
        detail = s.get("reason") or ""
        if s["state"] == State.EXITED and s.get("exit_code") is not None:
            detail = detail or f"exit code {s['exit_code']}"
        next_run = s.get("next_run")
        to_run = None if next_run is None else max(0.0, next_run - now)
        for left, what in (
            (s.get("idle_stop_in"), "idle stop"),
            (s.get("lease_left"), "lease ends"),
            (to_run, "next run"),
        ):
            if left is not None:
                detail = ", ".join(x for x in (detail, f"{what} in {format_age(left, parts=2)}") if x)
        if beside := len(s.get("overlapping") or ()):
            detail = ", ".join(x for x in (detail, f"{beside} more run{'s' * (beside > 1)} going") if x)
        used = s.get("resources")
        rows.append(
            (
                s["name"],
                s["state"],
                str(s["pid"] or "-"),
                str(s["port"] or "-"),
                str(s["restarts"]),
                uptime,
                f"{used['cpu_seconds']:.1f}s" if used else "-",
                format_bytes(used["memory_bytes"]) if used else "-",
                detail[:60],
            )
        )
    tracking = status.get("tracking", "marker")
    head = f"stack {status['name']} (supervisor pid {status['pid']}, processes tracked by {tracking})"
    lines = [head, *table(rows)]
    reload = status.get("reload")
    if reload and not reload["ok"]:
        error = reload.get("error", "").strip()
        lines += ["", "the last edit of the stack file was refused; it runs as before:", *error.splitlines()]
    return "\n".join(lines)


def format_history(rows: list[dict[str, Any]], *, conflicts_only: bool) -> str:
    lines: list[tuple[str, ...]]
    if conflicts_only:
        lines = [("TIME", "SERVICE", "PORT", "HOLDER", "LEVEL", "ACTION", "OUTCOME")]
        for r in rows:
            d = r["data"]
            holder = "/".join(str(d.get(k) or "?") for k in ("holder_pid", "holder_name", "holder_user"))
            port = str(d.get("port") or "-")
            if d.get("new_port"):
                port += f" -> {d['new_port']}"
            lines.append(
                (
                    clock(r["ts"]),
                    r["service"] or "-",
                    port,
                    holder,
                    d.get("level", "?"),
                    d.get("action", "?"),
                    d.get("outcome", "?"),
                )
            )
    else:
        lines = [("TIME", "SERVICE", "KIND", "DETAIL")]
        for r in rows:
            d = r["data"]
            if r["kind"] == "state":
                detail = f"{d.get('old')} -> {d.get('new')} {d.get('reason', '')}"
            else:
                detail = ", ".join(f"{k}={v}" for k, v in d.items() if k != "logs")
            lines.append((clock(r["ts"]), r["service"] or "-", r["kind"], detail[:100]))
    return "\n".join(table(lines))


def clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def conflict_line(row: dict[str, Any]) -> str:
    """`web: 8080 is held by python3 (pid 4242, root) -> moved to 8081`, and the like."""
    d = row["data"]
    name = d.get("holder_name") or "a process"
    holder = f"{name} (pid {d.get('holder_pid') or '?'}, {d.get('holder_user') or '?'})"
    service, port = row["service"] or "?", d.get("port")
    if d.get("action") == "migrate" and d.get("new_port"):
        return f"{service}: {port} is held by {holder} -> moved to {d['new_port']}"
    if d.get("action") == "terminate" and d.get("outcome") == "ok":
        return f"{service}: ended {holder} to free {port}"
    return f"{service}: {d.get('message') or d.get('outcome') or f'port {port}'}"
