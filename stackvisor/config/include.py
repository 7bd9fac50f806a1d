"""Stacks made of several files, as Compose makes them: top-level `include` and a
service's `extends`.

- `include: [backend/services.yaml, {path: ...}]`: each included file is loaded as a
  stack of its own (its `.env`, its env files and folders relative to it, its own
  checks), and its services join the including stack. Its `settings` and `name` are not
  used. A service name defined twice is an error naming both files and lines.
- `extends: {service: base, file: other.yaml}` (or `extends: base`): the service is the
  base service with its own fields on top, mappings merged key by key (`env`,
  `labels`, `healthcheck`, `depends_on`...), anything else replaced (`command`).
  Paths of a base in another file stay relative to that file.

Not here: reading one file (`loader`), the schema (`schema`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stackvisor.config.report import Report, display
from stackvisor.config.schema import EnvFile, Service, StackConfig
from stackvisor.config.textfile import NotText, read_text, real
from stackvisor.config.yamlpos import Document

Loader = Callable[[Path], StackConfig]
Reader = Callable[[Path], Document | None]

# --- include ---------------------------------------------------------------------------


def included_paths(written: Any, root: Path, report: Report) -> list[Path]:
    """The files `include` names, relative to the including file's folder."""
    entries = written if isinstance(written, list) else [written]
    paths = []
    for index, entry in enumerate(entries):
        path = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(path, str) or not path.strip():
            report.add(("include", index), "expected a file name, or {path: FILE}")
            continue
        paths.append(real(root / path))
    return paths


def include(config: StackConfig, paths: list[Path], load: Loader, report: Report) -> StackConfig:
    """`config` with the services of each included stack (loaded by `load`)."""
    services = dict(config.services)
    origin: dict[str, Path] = {}
    for path in paths:
        other = load(path)
        for name, service in other.services.items():
            if name in services:
                first = origin.get(name, config.path)
                where = f"{display(other.path)}:{_line_of(other.path, name)}"
                report.add(("services", name), f"defined twice: here and in {where}", key=True)
                if first != config.path:
                    report.add_plain(f"services.{name} is defined in {display(first)} and in {where}")
                continue
            services[name] = rebased(service, other.root, config.root)
            origin[name] = other.path
    return config.model_copy(update={"services": services})


def rebased(service: Service, own: Path, root: Path) -> Service:
    """A service of the stack in folder `own` as the stack in `root` runs it: its folder,
    env files and watched files still where its file said."""
    folder = own / service.working_dir if service.working_dir else own
    watch = [w.model_copy(update={"path": os.path.relpath(own / w.path, root)}) for w in service.watch]
    env_files = [EnvFile(path=str(own / f.path), required=f.required) for f in service.env_file]
    return service.model_copy(update={"working_dir": str(folder), "watch": watch, "env_file": env_files})


def _line_of(path: Path, name: str) -> int:
    from stackvisor.config.yamlpos import parse_yaml

    try:
        document, _ = parse_yaml(read_text(path, 10 * 1024 * 1024, "a stack file"))
    except (OSError, NotText):
        return 1
    return document.locate(("services", name), key=True)[0] if document else 1


# --- extends ---------------------------------------------------------------------------


def extend(data: dict[str, Any], root: Path, read: Reader, report: Report) -> dict[str, Any]:
    """The document with every `extends` resolved (before validation)."""
    services = data.get("services")
    if not isinstance(services, dict):
        return data
    resolved = {}
    for name, service in services.items():
        extends = isinstance(service, dict) and "extends" in service
        resolved[name] = (
            _resolve(name, service, services, root, root, read, report, ()) if extends else service
        )
    return {**data, "services": resolved}


def _resolve(
    name: str,
    service: dict[str, Any],
    siblings: dict[str, Any],
    folder: Path,
    root: Path,
    read: Reader,
    report: Report,
    chain: tuple[tuple[Path, str], ...],
) -> dict[str, Any]:
    here = ("services", name, "extends") if not chain else ("services", chain[0][1], "extends")
    written = service["extends"]
    own = {k: v for k, v in service.items() if k != "extends"}
    base_name, file = (written, None) if isinstance(written, str) else _fields(written)
    if not isinstance(base_name, str):
        report.add(here, "expected a service name, or {service: NAME, file: FILE}")
        return own
    base_folder, candidates = folder, siblings
    if file is not None:
        path = real(folder / str(file))
        document = read(path)
        if document is None or not isinstance(document.data.get("services"), dict):
            report.add(here, f"{display(path)}: no services to extend there")
            return own
        base_folder, candidates = path.parent, document.data["services"]
    link = (base_folder, base_name)
    if link in chain or (not chain and link == (folder, name)):
        report.add(here, f"extends goes round in a circle through {base_name}")
        return own
    base = candidates.get(base_name)
    if not isinstance(base, dict):
        report.add(here, f"no service {base_name} to extend")
        return own
    if "extends" in base:
        base = _resolve(
            base_name, base, candidates, base_folder, root, read, report, (*chain, (folder, name), link)
        )
    if base_folder != root:
        base = _relative_to(base, base_folder, root)
    return merged(base, own)


def _fields(written: Any) -> tuple[Any, Any]:
    if isinstance(written, dict):
        return written.get("service"), written.get("file")
    return None, None


def _relative_to(service: dict[str, Any], folder: Path, root: Path) -> dict[str, Any]:
    """A base service from another folder: its paths made to point where they did."""
    out = dict(service)
    out["working_dir"] = str(folder / service["working_dir"]) if "working_dir" in service else str(folder)
    files = service.get("env_file")
    if isinstance(files, str | list):
        items = [files] if isinstance(files, str) else files
        out["env_file"] = [
            str(folder / f) if isinstance(f, str) else {**f, "path": str(folder / str(f.get("path")))}
            for f in items
            if isinstance(f, str | dict)
        ]
    return out


def merged(base: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """Compose's rule: mappings merge key by key (own wins), anything else is replaced."""
    out = dict(base)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
