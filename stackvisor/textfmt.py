"""Text for people: aligned tables, ages and sizes. Pure; used by the CLI and the port plan."""

from __future__ import annotations

from collections.abc import Sequence

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_age(seconds: float, *, parts: int = 1) -> str:
    """`3h`, `5m`, `12s`; with `parts=2` the next unit too: `2h03m`, `1m05s`."""
    whole = int(max(0.0, seconds))
    for i, (unit, size) in enumerate(_UNITS):
        if whole >= size or unit == "s":
            text = f"{whole // size}{unit}"
            if parts > 1 and unit != "s":
                sub_unit, sub_size = _UNITS[i + 1]
                text += f"{whole % size // sub_size:02d}{sub_unit}"
            return text
    raise AssertionError("unreachable: seconds is the last unit")


def format_bytes(count: int) -> str:
    """`512B`, `20K`, `41M`, `1.5G`: binary units, as `ps` and `top` count memory."""
    size = float(count)
    for unit in ("B", "K", "M"):
        if size < 1024:
            return f"{size:.0f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines, columns aligned two spaces apart; the last column is not padded."""
    if not rows:
        return []
    columns = len(rows[0])
    widths = [max(len(row[i]) for row in rows) for i in range(columns - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    ]
