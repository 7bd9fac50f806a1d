"""The problems found in a stack file, and `ConfigError`, which reports them all at once.

Lives here: `ConfigError`; `Report`, which every step of loading adds its problems to,
each placed at `FILE:LINE:COL` and sorted into the order of the file; and the wording
the messages share (dotted field paths, "did you mean" hints, file names shown relative
to the current folder). Not here: finding where a field is written (`yamlpos`), and
deciding what is wrong (`loader`, `explain`, `checks`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stackvisor.config.envfiles import EnvProblem
from stackvisor.config.textfile import real
from stackvisor.config.yamlpos import Document, Loc
from stackvisor.errors import ConfigError


@dataclass
class Report:
    """Problems collected so far; each knows where it is for sorting and printing."""

    file: str
    document: Document | None = None
    problems: list[tuple[tuple[int, str, int, int], str]] = field(default_factory=list)

    def add(
        self,
        path: Loc,
        message: str,
        *,
        at: Loc | None = None,
        key: bool = False,
        position: tuple[int, int] | None = None,
    ) -> None:
        """A problem with the field at `path`, located at `at` (default: `path`) in the file."""
        if position is None:
            where = path if at is None else at
            position = self.document.locate(where, key=key) if self.document else (1, 1)
        line, column = position
        label = f"{_dotted(path)}: " if path else ""
        self.problems.append(((0, self.file, line, column), f"{self.file}:{line}:{column}: {label}{message}"))

    def add_at(self, line: int, column: int, message: str, *, file: str | None = None) -> None:
        """A problem at a known position, in this file or another one (`.env`, an env_file)."""
        name = file or self.file
        rank = 0 if name == self.file else 1
        self.problems.append(((rank, name, line, column), f"{name}:{line}:{column}: {message}"))

    def add_plain(self, message: str) -> None:
        self.problems.append(((0, self.file, 0, 0), f"{self.file}: {message}"))

    def add_env_problems(self, path: Path, problems: Iterable[EnvProblem]) -> None:
        """The problems of a dotenv file, each under that file's name."""
        name = display(path)
        for line, column, message in problems:
            self.add_at(line, column, message, file=name)

    def written(self, path: Loc) -> Any:
        """The value written at `path` in the file, before validation reshaped it."""
        value: Any = self.document.data if self.document else None
        for key in path:
            inside = (isinstance(value, dict) and key in value) or (
                isinstance(value, list) and isinstance(key, int) and key < len(value)
            )
            if not inside:
                return None
            value = value[key]
        return value

    def raise_if_any(self) -> None:
        if self.problems:
            # Sorted by place so the output reads top to bottom like the file; the sort
            # is stable, so problems at the same place keep the order they were found.
            ordered = sorted(self.problems, key=lambda item: item[0])
            raise ConfigError([text for _, text in ordered])


def display(path: Path) -> str:
    """The path relative to the current folder when it is inside it, else as given."""
    try:
        return str(real(path).relative_to(real(Path.cwd())))
    except (ValueError, OSError):
        return str(path)


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a misspelt `word`, if one is close enough."""
    matches = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _dotted(path: Loc) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
