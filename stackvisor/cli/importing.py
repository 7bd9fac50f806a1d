"""`stackvisor import FILE [-o OUT]`: a Procfile or a process-compose file as a
services.yaml (see `config.importers`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stackvisor.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def cmd_import(args: argparse.Namespace) -> int:
    from stackvisor.config.importers import NotImportable, from_process_compose, from_procfile
    from stackvisor.config.loader import MAX_FILE_BYTES
    from stackvisor.config.textfile import NotText, read_text

    source = Path(args.source)
    try:
        text = read_text(source, MAX_FILE_BYTES, "a file to import")
    except (OSError, NotText) as exc:
        print(
            f"stackvisor: {source}: cannot read it ({getattr(exc, 'strerror', None) or exc})", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        if source.name.startswith("Procfile"):
            dotenv = (source.parent / ".env").is_file()
            result = from_procfile(text, dotenv=dotenv, base_port=args.port)
        else:
            result = from_process_compose(text)
    except NotImportable as exc:
        print(f"stackvisor: {source}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.output is None:
        sys.stdout.write(result)
        return EXIT_OK
    target = Path(args.output)
    if target.exists() and not args.force:
        print(f"stackvisor: {target} exists; --force replaces it", file=sys.stderr)
        return EXIT_FAILURE
    target.write_text(result, encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return EXIT_OK
