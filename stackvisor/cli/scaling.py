"""`stackvisor scale SERVICE N`, and the names of a replicated service's copies for the
commands that take service names (`logs api` is the logs of `api.0`, `api.1`, ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence

from stackvisor.cli.common import EXIT_OK, client, copy_of, locate


def replicas(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of copies, 0 or more (got {text!r})")
    return int(text)


def cmd_scale(args: argparse.Namespace) -> int:
    result = client(locate(args)).post(f"/v1/services/{args.service}/scale", {"replicas": args.replicas})
    changes = [
        f"{label} {', '.join(names)}"
        for label, names in (("added", result["added"]), ("removed", result["removed"]))
        if names
    ]
    print(
        f"{args.service}: {result['replicas']} copies" + (f" ({'; '.join(changes)})" if changes else ""),
        file=sys.stderr,
    )
    return EXIT_OK


def with_copies(names: Iterable[str], known: Sequence[str]) -> list[str]:
    """`names` with each one that is not a service of `known` but has copies there
    replaced by them, in order."""
    out: list[str] = []
    for name in names:
        found = [name] if name in known else [k for k in known if copy_of(k, name)] or [name]
        out += [n for n in found if n not in out]
    return out
