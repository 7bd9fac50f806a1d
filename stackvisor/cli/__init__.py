"""The `stackvisor` command: parse arguments, then call the supervisor or the control client.

Exit statuses: 0 ok, 1 failure (a service failed, a port could not be secured,
--wait gave up), 2 usage or configuration error, 3 not running. The grammar is in
`parser`; the commands in `stack` (up, down, run, ports...) and `running` (what
asks a running stack); what they print in `render`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from stackvisor import graph
from stackvisor.cli.common import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE, UsageError
from stackvisor.config import ConfigError
from stackvisor.errors import ApiError, NotResponding, NotRunning, UnsafePath

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The command; Ctrl-C at any moment (also while it loads) is exit 130, no traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130


def _main(argv: Sequence[str] | None) -> int:
    from stackvisor.cli.parser import build_parser

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ports"]:
        from stackvisor.cli.registry import normalise

        argv = normalise(argv)
    cmd: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, cmd = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    if hasattr(args, "cmd"):
        args.cmd = cmd or [c for c in args.cmd if c != "--"]
    elif cmd:
        parser.error("unexpected arguments after --")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, graph.GraphError) as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotRunning as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except (NotResponding, UnsafePath) as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ApiError as exc:  # a refused API call: say it, no traceback
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.status in (400, 404) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`stackvisor logs | head -1`): nothing more to say, and
        # nothing to flush at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UnicodeEncodeError as exc:  # bytes the locale could not decode, in a name or value
        bad = exc.object[exc.start : exc.end].encode("utf-8", "surrogateescape")
        print(f"stackvisor: an argument is not valid UTF-8 text (bytes {bad!r})", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:  # a broken answer (BadAnswer is a ValueError)
        print(f"stackvisor: the supervisor did not answer properly: {exc}", file=sys.stderr)
        return EXIT_FAILURE
