"""`stackvisor export FORMAT [-o DIR] [SERVICE...]`: the stack as systemd units, Kubernetes
manifests or a Compose file (`stackvisor.export`).

What an engine cannot express goes to stderr as warnings (and into the files as
comments). Without `-o` the files go to stdout, each after a `# ---- NAME ----` line
when there are several; with `-o DIR` they are written there (the folder is made; a
file is replaced, never written through a symbolic link).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from stackvisor.cli.common import EXIT_OK, EXIT_USAGE, load


def extension_images(path: Path) -> dict[str, str]:
    """`x-kubernetes: {image: ...}` of each service, read from the file itself (extension
    fields are not part of the loaded configuration)."""
    import yaml

    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    services = data.get("services") if isinstance(data, dict) else None
    found = {}
    for name, service in (services or {}).items():
        extension = service.get("x-kubernetes") if isinstance(service, dict) else None
        image = extension.get("image") if isinstance(extension, dict) else None
        if isinstance(image, str) and image.strip():
            found[str(name)] = image.strip()
    return found


def write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)


def cmd_export(args: argparse.Namespace) -> int:
    from stackvisor.export import base

    config = load(args)
    try:
        target = base.plan(
            config,
            args.services,
            image=args.image,
            user_units=args.user,
            images=extension_images(config.path),
        )
        module = importlib.import_module(f"stackvisor.export.{args.format}")
        options: dict[str, Any] = {}
        if args.format == "kubernetes":
            options["one_file"] = not args.split
        elif args.format == "systemd":  # EnvironmentFile= for them: their secrets stay out of the units
            options["env_files"] = module.read_env_files(target)
        exported = module.export(target, **options)
    except base.ExportError as exc:
        print(f"stackvisor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in exported.warnings:
        print(f"stackvisor: warning: {warning}", file=sys.stderr)
    if args.output:
        try:
            write(Path(args.output), exported.files)
        except OSError as exc:
            print(f"stackvisor: cannot write to {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        names = ", ".join(exported.files)
        print(f"wrote {names} to {args.output}", file=sys.stderr)
        return EXIT_OK
    several = len(exported.files) > 1
    for name, text in exported.files.items():
        if several:
            print(f"# ---- {name} ----")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return EXIT_OK


def grammar(command: Any) -> None:
    """The `export` command's arguments (`command` makes a subcommand, as in `parser`)."""
    from stackvisor.export.base import FORMATS

    p = command(
        "export", "write the stack as systemd units, Kubernetes manifests or a compose.yaml", cmd_export
    )
    p.add_argument("format", choices=FORMATS, metavar="FORMAT", help=" | ".join(FORMATS))
    p.add_argument("services", nargs="*", metavar="SERVICE", help="these and what they need (default: all)")
    p.add_argument("-o", "--output", metavar="DIR", help="write the files into DIR (default: stdout)")
    p.add_argument("--image", help="the image of every service without x-kubernetes: {image: ...}")
    p.add_argument("--user", action="store_true", help="systemd: user units (systemctl --user)")
    p.add_argument("--split", action="store_true", help="kubernetes: one file per object")
