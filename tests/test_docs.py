"""The README says what the code does: its event list and its architecture map follow the tree."""

from __future__ import annotations

import re
from pathlib import Path

from stackvisor.control.openapi import OPENAPI
from stackvisor.runtime.events import PAYLOADS, EventKind

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_the_readme_lists_every_event_kind_and_no_other() -> None:
    listed = re.findall(r"^\| `(\w+)` \|", section("States"), flags=re.MULTILINE)
    assert sorted(listed) == sorted(str(kind) for kind in EventKind)


def test_the_openapi_document_describes_every_event_kind() -> None:
    variants = OPENAPI["components"]["schemas"]["Event"]["oneOf"]
    assert [v["title"] for v in variants] == [str(kind) for kind in EventKind]
    for variant in variants:
        payload = PAYLOADS[EventKind(variant["title"])]
        assert variant["description"] == payload.description


def test_the_architecture_map_names_every_module() -> None:
    text = section("Architecture")
    missing = []
    for path in sorted((ROOT / "stackvisor").rglob("*.py")):
        name = path.parent.name if path.stem == "__init__" else path.stem
        if name == "__main__":
            continue
        if not re.search(rf"\b{re.escape(name)}(\.py|/|\b)", text):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []
