"""`stackvisor import`: a Procfile (foreman, honcho) or a process-compose file, written
as a services.yaml that runs the same processes.

Pure: text in, text out. Every field that has no equivalent is kept as a comment
beside the service it belonged to, so nothing is dropped silently. Values are written
in YAML's flow style (JSON is YAML), which needs no escaping rules of our own. A `$` in
a command or a value is written `$$`: there the shell expands it when the process
starts, with the process's environment, as foreman and process-compose do; stackvisor
would otherwise expand it when it reads the file.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass, field
from typing import Any

import yaml

# foreman's and honcho's rule: the first process type gets 5000, each next one 100 more.
BASE_PORT = 5000
PORT_STEP = 100

_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+?)\s*$")


class NotImportable(ValueError):
    """The file cannot be read as what it claims to be; the message says where."""


@dataclass
class Draft:
    """One service as it will be written: its fields in order, and notes."""

    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def from_procfile(text: str, *, dotenv: bool, base_port: int = BASE_PORT) -> str:
    """A Procfile's processes as services; PORT as foreman sets it (from `base_port`,
    foreman's and honcho's `--port`). `dotenv`: a `.env` sits beside it (foreman and
    honcho put it in every process's environment)."""
    drafts: dict[str, Draft] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _PROCFILE_LINE.match(line)
        if match is None:
            raise NotImportable(f"Procfile:{number}: expected `name: command` (got {line.strip()[:40]!r})")
        name, command = match.groups()
        port = base_port + PORT_STEP * len(drafts)
        draft = Draft({"command": _shell(command)})
        if "PORT" in command:
            draft.fields["port"] = port  # checked before start, and given as $PORT
        else:
            draft.fields["env"] = {"PORT": str(port)}  # foreman sets it for every process
        if dotenv:
            draft.fields["env_file"] = [{"path": ".env", "required": False}]
        drafts[name] = draft
    if not drafts:
        raise NotImportable("Procfile: no processes (expected lines like `web: command`)")
    head = [
        f"# Imported from a Procfile (foreman, honcho). PORT follows foreman's rule: {base_port} for",
        "# the first process, 100 more for each next one; a process whose command names it",
        "# gets `port:` (checked before it starts, moved if taken), the others PORT in env.",
    ]
    return _render(head, drafts)


def from_process_compose(text: str) -> str:
    """A process-compose file's processes as services (see `_process`)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NotImportable(f"not YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("processes"), dict):
        raise NotImportable("expected a process-compose file: a mapping with `processes:`")
    common = _environment(data.get("environment"))
    processes: dict[str, Any] = data["processes"]
    log_ready = {
        dep
        for spec in processes.values()
        if isinstance(spec, dict)
        for dep, how in (spec.get("depends_on") or {}).items()
        if isinstance(how, dict) and how.get("condition") == "process_log_ready"
    }
    drafts = {name: _process(spec or {}, common, name in log_ready) for name, spec in processes.items()}
    ignored = sorted(set(data) - {"processes", "environment", "version"})
    top = [
        f"# {key}: {json.dumps(data[key], default=str)} (process-compose; no equivalent here)"
        for key in ignored
    ]
    head = ["# Imported from a process-compose file.", *top]
    return _render(head, drafts)


_CONDITIONS = {
    "process_started": "service_started",
    "process_healthy": "service_healthy",
    "process_log_ready": "service_healthy",
    "process_completed_successfully": "service_completed_successfully",
    "process_completed": "service_completed_successfully",
}
_RESTART = {"always": "always", "on_failure": "on-failure", "no": "no", "exit_on_failure": "no"}
_KNOWN = {
    "command", "depends_on", "readiness_probe", "liveness_probe", "availability", "environment",
    "working_dir", "shutdown", "is_daemon", "ready_log_line", "disabled", "namespace", "schedule",
    "replicas",
}  # fmt: skip


def _process(spec: dict[str, Any], common: dict[str, str], log_ready: bool) -> Draft:
    draft = Draft({"command": _shell(str(spec.get("command", "true")))})
    notes = draft.notes
    env = {k: _shell(v) for k, v in {**common, **_environment(spec.get("environment"))}.items()}
    if env:
        draft.fields["env"] = env
    if spec.get("working_dir"):
        draft.fields["working_dir"] = str(spec["working_dir"])
    depends: dict[str, Any] = {}
    for dep, how in (spec.get("depends_on") or {}).items():
        condition = how.get("condition", "process_started") if isinstance(how, dict) else "process_started"
        depends[dep] = {"condition": _CONDITIONS.get(condition, "service_started")}
        if condition == "process_completed":
            notes.append(f"depends_on.{dep}: process_completed (any exit) is read as a successful completion")
    if depends:
        draft.fields["depends_on"] = depends
    probe = spec.get("readiness_probe") or spec.get("liveness_probe")
    if log_ready and spec.get("ready_log_line"):
        draft.fields["healthcheck"] = {"log": _literally(str(spec["ready_log_line"]))}
    elif isinstance(probe, dict) and (check := _healthcheck(probe)):
        draft.fields["healthcheck"] = check
    if spec.get("readiness_probe") and spec.get("liveness_probe"):
        notes.append("liveness_probe: one health check here; the readiness_probe was kept")
    _availability(spec.get("availability"), draft)
    _shutdown(spec.get("shutdown"), draft)
    _schedule(spec.get("schedule"), draft)
    if spec.get("is_daemon"):
        draft.fields["daemon"] = True
    if spec.get("disabled"):
        draft.fields["disabled"] = True
    if isinstance(spec.get("namespace"), str) and spec["namespace"] != "default":
        draft.fields["namespace"] = spec["namespace"]
    _replicas(spec, draft)
    notes.extend(
        f"{key}: {json.dumps(spec[key], default=str)} (no equivalent)" for key in sorted(set(spec) - _KNOWN)
    )
    return draft


def _replicas(spec: dict[str, Any], draft: Draft) -> None:
    """process-compose's `replicas` is ours; its copies' index, PC_REPLICA_NUM, is REPLICA."""
    count = spec.get("replicas")
    if count is None:
        return
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        draft.notes.append(f"replicas: {json.dumps(count, default=str)} (expected a number, 0 or more)")
        return
    if count != 1:
        draft.fields["replicas"] = count
    if "PC_REPLICA_NUM" in json.dumps([spec.get("command"), spec.get("environment")], default=str):
        draft.notes.append("PC_REPLICA_NUM: each copy's index is REPLICA here")


def _healthcheck(probe: dict[str, Any]) -> dict[str, Any] | None:
    check: dict[str, Any] = {}
    http = probe.get("http_get")
    if isinstance(http, dict):
        scheme, host = http.get("scheme", "http"), http.get("host", "127.0.0.1")
        path = str(http.get("path", "/"))
        check["http"] = (
            f"{scheme}://{host}:{http.get('port', 80)}{path if path.startswith('/') else '/' + path}"
        )
    elif isinstance(probe.get("exec"), dict) and probe["exec"].get("command"):
        check["exec"] = _shell(str(probe["exec"]["command"]))
    else:
        return None
    for theirs, ours in (
        ("period_seconds", "interval"),
        ("timeout_seconds", "timeout"),
        ("initial_delay_seconds", "start_period"),
    ):
        if probe.get(theirs) is not None:
            check[ours] = f"{probe[theirs]}s"
    if probe.get("failure_threshold") is not None:
        check["retries"] = int(probe["failure_threshold"])
    return check


def _availability(value: Any, draft: Draft) -> None:
    if not isinstance(value, dict):
        return
    restart = str(value.get("restart", "no"))
    draft.fields["restart"] = _RESTART.get(restart, "no")
    if restart == "exit_on_failure":
        draft.notes.append("availability.restart: exit_on_failure (the whole stack stops) has no equivalent")
    if value.get("backoff_seconds") is not None:
        draft.fields["backoff"] = {"initial": f"{value['backoff_seconds']}s"}
    if value.get("max_restarts") is not None:
        draft.fields["max_restarts"] = int(value["max_restarts"])


def _shutdown(value: Any, draft: Draft) -> None:
    if not isinstance(value, dict):
        return
    number = value.get("signal")
    if isinstance(number, int) and number in {s.value for s in signal.Signals}:
        draft.fields["stop_signal"] = signal.Signals(number).name
    if value.get("timeout_seconds") is not None:
        draft.fields["stop_timeout"] = f"{value['timeout_seconds']}s"
    if value.get("command"):
        draft.fields["shutdown"] = {"command": _shell(str(value["command"]))}
        if value.get("timeout_seconds") is not None:
            draft.fields["shutdown"]["timeout"] = f"{value['timeout_seconds']}s"


def _schedule(value: Any, draft: Draft) -> None:
    """process-compose's `schedule` has our field names; its `Local` zone is our default."""
    if not isinstance(value, dict):
        return
    out: dict[str, Any] = {}
    if value.get("cron"):
        out["cron"] = str(value["cron"])
        if value.get("interval"):
            draft.notes.append(f"schedule.interval: {json.dumps(value['interval'])} (cron takes precedence)")
        if value.get("timezone") and str(value["timezone"]) != "Local":
            out["timezone"] = str(value["timezone"])
    elif value.get("interval"):
        out["interval"] = str(value["interval"])
    else:
        return
    if value.get("run_on_start"):
        out["run_on_start"] = True
    if isinstance(value.get("max_concurrent"), int) and value["max_concurrent"] > 1:
        out["max_concurrent"] = value["max_concurrent"]
    if draft.fields.get("restart") == "always":  # a run must end for the next one
        draft.notes.append("availability.restart: always (a scheduled run restarts on failure at most)")
        draft.fields["restart"] = "on-failure"
    draft.fields["schedule"] = out


def _environment(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return dict(str(item).partition("=")[::2] for item in value)
    return {}


def _literally(text: str) -> str:
    """A regular expression matching `text` itself (only what regexes treat specially is escaped)."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text)


def _shell(text: str) -> str:
    return text.replace("$", "$$")


def _render(head: list[str], drafts: dict[str, Draft]) -> str:
    lines = [*head, "services:"]
    for name, draft in drafts.items():
        lines.append(f"  {json.dumps(name)}:")
        lines.extend(f"    # {note}" for note in draft.notes)
        lines.extend(f"    {key}: {json.dumps(value)}" for key, value in draft.fields.items())
    return "\n".join(lines) + "\n"
