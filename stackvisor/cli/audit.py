"""`stackvisor audit`: what listens on this machine, what looks risky, and a score.

The command reads the stack file (for the ports it declares) and, when the stack
runs, asks the lock who its supervisor is (for the stack's own processes); the scan
and the rules are `ports.audit_scan` and `ports.audit`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from stackvisor.cli.common import EXIT_FAILURE, EXIT_OK, load
from stackvisor.textfmt import table


def fail_over(text: str) -> float:
    """`--fail-over`'s SCORE: a number from 0 to 10."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"expected a score from 0 to 10 (got {text!r})")
    return value


def _owner(listener: dict[str, Any]) -> tuple[str, str, str]:
    pid = listener["pid"]
    program = listener["exe"] or listener["name"] or ("-" if pid is None else "?")
    return ("-" if pid is None else str(pid), listener["user"] or "-", program)


def format_audit(document: dict[str, Any]) -> str:
    """The listeners as a table (each with the rules it fired), the findings, the score."""
    rows = [("PROTO", "ADDRESS", "PORT", "PID", "USER", "PROGRAM", "FLAGS")]
    for listener in document["listeners"]:
        pid, user, program = _owner(listener)
        flags = ",".join(listener["flags"]) or "-"
        row = (listener["protocol"], listener["address"], str(listener["port"]), pid, user, program, flags)
        rows.append(row)
    lines = table(rows)
    if document["findings"]:
        lines += ["", "findings:"]
        for finding in document["findings"]:
            who = finding["listener"]
            pid, user, _ = _owner(who)
            owner = (
                f"pid {pid} {who['name'] or '?'}, user {user}" if who["pid"] is not None else f"user {user}"
            )
            host = f"[{who['address']}]" if ":" in who["address"] else who["address"]
            lines.append(
                f"  {who['protocol']} {host}:{who['port']} ({owner}): "
                f"{finding['rule']} (+{finding['weight']}): {finding['detail']}"
            )
    count = len(document["findings"])
    lines += ["", f"risk score {document['score']:g}/10 ({count} finding{'' if count == 1 else 's'})"]
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> int:
    from stackvisor.control import ops
    from stackvisor.ports.audit_scan import audit_document

    config = load(args)
    pid = ops.supervisor_pid(config)
    document = audit_document(config, pid if pid is not None and pid > 0 else None)
    print(json.dumps(document, indent=2) if args.json else format_audit(document))
    if args.fail_over is not None and document["score"] >= args.fail_over:
        return EXIT_FAILURE
    return EXIT_OK
