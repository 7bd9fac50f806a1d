"""What a reload changes: the difference between two loaded stacks, and who restarts.

Pure: both inputs are validated `StackConfig`s, the output is plain data. Carrying the
diff out (stopping removed services, starting added ones, restarting the rest) is the
supervisor's job.

Services are compared by their effective configuration as loaded: `env` already holds
the contents of the `env_file`s, so editing an env file changes the service even
though `services.yaml` did not change. The rule is deliberately simple: any field that
differs makes the service changed, including `watch` and a `depends_on` entry's
`restart` or `required` flag.
A group's copies (`replicas`) are compared one by one, a dependency on a group as
written (not the copies it names now): a change of `replicas` adds or removes copies,
and changes neither the other copies nor the dependents.
A service whose own configuration is equal stays unchanged even when one of its
dependencies changed; `restart_set` adds the dependents that asked to follow
(`depends_on: {db: {restart: true}}`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stackvisor.config.replicas import fold
from stackvisor.config.schema import Settings, StackConfig


@dataclass(frozen=True)
class ReloadDiff:
    """Service names by fate (each tuple sorted), and the settings fields that differ."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    settings_changed: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        """True when a reload has nothing to do."""
        return not (self.added or self.removed or self.changed or self.settings_changed)

    def describe(self) -> list[str]:
        """One human line per kind of change, e.g. `changed: api, web`."""
        if self.is_empty():
            return ["no changes"]
        lines = []
        for label, names in (
            ("added", self.added),
            ("removed", self.removed),
            ("changed", self.changed),
            ("settings changed", self.settings_changed),
        ):
            if names:
                lines.append(f"{label}: {', '.join(names)}")
        return lines


def diff_configs(old: StackConfig, new: StackConfig) -> ReloadDiff:
    """Compare two stacks service by service, and their settings field by field."""
    # A dependency on a group names its copies: a scale changes no dependent.
    before = {name: fold(old, service).model_dump() for name, service in old.services.items()}
    after = {name: fold(new, service).model_dump() for name, service in new.services.items()}
    common = sorted(before.keys() & after.keys())
    old_settings = old.settings.model_dump()
    new_settings = new.settings.model_dump()
    return ReloadDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple(name for name in common if before[name] != after[name]),
        settings_changed=tuple(
            field for field in Settings.model_fields if old_settings[field] != new_settings[field]
        ),
    )


def restart_set(diff: ReloadDiff, new: StackConfig) -> set[str]:
    """The changed services, plus every service of `new` that follows one of them.

    A service follows a dependency when its `depends_on` entry says `restart: true`;
    following is transitive (db -> api -> web restarts web when db changes, if both
    links say so). Added services are started, not restarted, so they are left out.
    """
    return followers(new, diff.changed, skip=diff.added)


def followers(config: StackConfig, names: Iterable[str], skip: Iterable[str] = ()) -> set[str]:
    """`names` (those in `config`) plus, transitively, every service whose `depends_on`
    entry on one of them says `restart: true`; services in `skip` are never added."""
    skipped = set(skip)
    result = {name for name in names if name in config.services}
    grew = True
    while grew:
        grew = False
        for name, service in config.services.items():
            if name in result or name in skipped:
                continue
            if any(dep in result and entry.restart for dep, entry in service.depends_on.items()):
                result.add(name)
                grew = True
    return result
