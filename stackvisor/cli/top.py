"""`stackvisor top`: the running stack in the terminal (the `tui` extra, built on Textual).

Here only what a command does: check that Textual is there (exit 2 with the command that
installs it, never a traceback), find the running stack (exit 3 when none runs), and run
the application of `stackvisor.tui` until `q`. The stack is left as it was.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from stackvisor.cli.common import EXIT_OK, EXIT_USAGE, client, locate

if TYPE_CHECKING:
    from stackvisor.tui.app import TopApp

INSTALL = "pip install 'stackvisor[tui]'"


def missing_textual() -> str | None:
    """Why the terminal UI cannot run here, or None when it can."""
    try:
        import textual  # noqa: F401
    except ImportError as exc:
        return f"`top` needs Textual, an optional extra ({exc}): {INSTALL}"
    return None


def build(args: argparse.Namespace) -> TopApp:
    """The application for the stack that `args` names; NotRunning when none runs."""
    from stackvisor.tui.app import TopApp

    stack = locate(args)
    api = client(stack)
    return TopApp(api.path, stack.path, stack.name)


def cmd_top(args: argparse.Namespace) -> int:
    why = missing_textual()
    if why is not None:
        print(f"stackvisor: {why}", file=sys.stderr)
        return EXIT_USAGE
    build(args).run()
    return EXIT_OK
