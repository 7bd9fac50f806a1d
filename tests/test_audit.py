"""`stackvisor audit`: every rule and the score over plain data (`ports.audit`), then the
scan against real listeners, real programs and real users (`ports.audit_scan`), the
command's output and exit statuses, and `GET /v1/audit` of a running stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOLDER, SLEEP, Start, _read_ready, cli, client, free_ports, write_stack
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from stackvisor.config import load_config
from stackvisor.config.schema import Settings, StackConfig
from stackvisor.ports.audit import (
    RULES,
    DeclaredPorts,
    Endpoint,
    Finding,
    PortSpan,
    Report,
    Rule,
    Scope,
    audit,
    declared_ports,
    score,
)
from stackvisor.ports.audit_scan import audit_report, executable, in_writable_folder

ME = 1000
OTHER = 1001
SCOPE = Scope(
    declared=[
        DeclaredPorts("api", ports=(8000, 8001), ranges=(PortSpan(9000, 9009, "port_range"),)),
        DeclaredPorts("db", ranges=(PortSpan(5400, 5499, "type database"),)),
    ],
    stack_pids=frozenset({10, 11}),
    uid=ME,
    suspicious=[(4444, 4444), (6666, 6669)],
)


def endpoint(port: int = 7000, **facts: Any) -> Endpoint:
    base: dict[str, Any] = {"protocol": "tcp", "address": "127.0.0.1", "uid": ME, "user": "me", "pid": 99}
    return Endpoint(port=port, **{**base, **facts})


def fired(e: Endpoint, scope: Scope = SCOPE) -> list[str]:
    return [str(f.rule) for f in audit([e], scope).findings]


# ----- the rules, one by one ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "flagged"),
    [("0.0.0.0", True), ("::", True), ("127.0.0.1", False), ("::1", False), ("192.168.1.5", False)],
)
def test_all_interfaces_is_the_wildcard_address_only(address: str, flagged: bool) -> None:
    assert fired(endpoint(address=address)) == (["all_interfaces"] if flagged else [])
    assert fired(endpoint(address=address, protocol="udp")) == (["all_interfaces"] if flagged else [])


@pytest.mark.parametrize(
    ("port", "flagged"), [(4444, True), (4443, False), (6666, True), (6669, True), (6670, False)]
)
def test_suspicious_ports_are_single_ports_and_ranges(port: int, flagged: bool) -> None:
    assert fired(endpoint(port)) == (["suspicious_port"] if flagged else [])


def test_a_deleted_executable_is_flagged_and_an_unknown_one_is_not() -> None:
    assert fired(endpoint(exe="/usr/bin/x", exe_deleted=True)) == ["deleted_executable"]
    assert fired(endpoint(exe="/usr/bin/x")) == []
    assert fired(endpoint(exe=None)) == []


def test_an_executable_in_a_writable_folder_is_flagged_and_an_unknown_one_is_not() -> None:
    assert fired(endpoint(exe="/tmp/x", exe_in_writable_folder=True)) == ["writable_folder"]
    assert fired(endpoint(exe=None, exe_in_writable_folder=True)) == []


@pytest.mark.parametrize("port", [8000, 8001, 9000, 9009, 5450])
def test_another_users_listener_on_a_declared_port_or_range_is_flagged(port: int) -> None:
    assert "other_user" in fired(endpoint(port, uid=OTHER, user="eve"))
    finding = next(f for f in audit([endpoint(port, uid=OTHER, user="eve")], SCOPE).findings)
    assert "user eve (uid 1001)" in finding.detail


@pytest.mark.parametrize(
    "facts",
    [
        {"uid": ME},  # ours
        {"uid": OTHER, "pid": 10},  # the stack's own, run as another user
        {"uid": None},  # unknown
    ],
)
def test_other_user_needs_another_user_outside_the_stack(facts: dict[str, Any]) -> None:
    assert "other_user" not in fired(endpoint(8000, **facts))


def test_another_users_listener_elsewhere_is_not_the_stacks_business() -> None:
    assert fired(endpoint(7000, uid=OTHER)) == []


@pytest.mark.parametrize(("port", "pid", "flagged"), [(9005, 99, True), (9005, None, True), (5400, 99, True)])
def test_a_listener_in_a_service_range_that_no_service_holds_is_flagged(
    port: int, pid: Any, flagged: bool
) -> None:
    assert ("unowned_in_range" in fired(endpoint(port, pid=pid))) is flagged


def test_the_stacks_own_listener_in_its_range_and_a_fixed_port_are_not_unowned() -> None:
    assert fired(endpoint(9005, pid=11)) == []
    assert fired(endpoint(8000, pid=99)) == []  # a fixed port is no range


def test_rules_can_fire_together_each_with_its_weight() -> None:
    e = endpoint(
        9001, address="::", uid=OTHER, exe="/dev/shm/x", exe_deleted=True, exe_in_writable_folder=True
    )
    report = audit([e], SCOPE)
    assert [(str(f.rule), f.weight) for f in report.findings] == [
        ("all_interfaces", 1),
        ("deleted_executable", 5),
        ("writable_folder", 5),
        ("other_user", 3),
        ("unowned_in_range", 2),
    ]
    assert report.flags(e) == [str(f.rule) for f in report.findings]


def test_declared_ports_read_ports_ranges_and_type_ranges() -> None:
    config = StackConfig.model_validate(
        {
            "settings": {"port_types": {"mine": "7100-7199"}},
            "services": {
                "api": {"command": "x", "port": 8000, "alternative_ports": [8001], "port_range": "9000-9009"},
                "db": {"command": "x", "port": "auto", "type": "database"},
                "web": {"command": "x", "port": 3000, "type": "mine"},
                "any": {"command": "x", "port": 4000, "type": "custom"},
            },
        }
    )
    assert declared_ports(config) == [
        DeclaredPorts("api", (8000, 8001), (PortSpan(9000, 9009, "port_range"),)),
        DeclaredPorts("db", (), (PortSpan(5400, 5499, "port_range"),)),  # auto: the type's range
        DeclaredPorts("web", (3000,), (PortSpan(7100, 7199, "type mine"),)),
        DeclaredPorts("any", (4000,), ()),
    ]


# ----- the score ------------------------------------------------------------------------------


def finding(rule: Rule, port: int = 7000, pid: int | None = 99) -> Finding:
    return Finding(rule, endpoint(port, pid=pid), RULES[rule].weight, "")


def test_no_findings_score_zero_and_one_finding_scores_its_weight() -> None:
    assert score([]) == 0.0
    for rule, info in RULES.items():
        assert score([finding(rule)]) == info.weight


def test_the_score_is_the_top_weight_plus_a_quarter_of_the_rest() -> None:
    found = [finding(Rule.SUSPICIOUS_PORT), finding(Rule.ALL_INTERFACES), finding(Rule.OTHER_USER, 8000)]
    assert score(found) == 4 + (1 + 3) / 4


def test_the_score_stops_at_ten() -> None:
    near = [finding(Rule.DELETED_EXECUTABLE, pid=p) for p in range(1, 5)]  # 5 + 3 * 1.25 = 8.75
    assert score(near) == 8.8
    assert score([*near, finding(Rule.DELETED_EXECUTABLE, pid=5)]) == 10.0
    assert score([finding(Rule.DELETED_EXECUTABLE, pid=p) for p in range(1, 50)]) == 10.0


def test_a_process_rule_counts_once_per_process() -> None:
    two_sockets = [finding(Rule.DELETED_EXECUTABLE, 7000), finding(Rule.DELETED_EXECUTABLE, 7001)]
    assert score(two_sockets) == 5.0
    two_processes = [finding(Rule.DELETED_EXECUTABLE, 7000, 1), finding(Rule.DELETED_EXECUTABLE, 7001, 2)]
    assert score(two_processes) == 6.2


@given(st.lists(st.sampled_from(list(Rule)), max_size=12), st.sampled_from(list(Rule)), st.integers(1, 9999))
def test_a_further_finding_never_lowers_the_score(rules: list[Rule], extra: Rule, port: int) -> None:
    found = [finding(rule, 7000 + i, pid=i) for i, rule in enumerate(rules)]
    before = score(found)
    after = score([*found, finding(extra, port, pid=None)])
    assert 0 <= before <= after <= 10


def test_the_document_has_every_rule_with_its_weight_and_the_flags_per_listener() -> None:
    quiet, loud = endpoint(7000), endpoint(4444, address="0.0.0.0")
    doc = audit([loud, quiet], SCOPE, {"stack": "demo"}).as_dict()
    assert doc["stack"] == "demo"
    assert {r["rule"]: r["weight"] for r in doc["rules"]} == {str(r): i.weight for r, i in RULES.items()}
    assert [(entry["port"], entry["flags"]) for entry in doc["listeners"]] == [
        (4444, ["all_interfaces", "suspicious_port"]),
        (7000, []),
    ]
    assert doc["score"] == 4.2
    assert json.loads(json.dumps(doc)) == doc


# ----- settings ---------------------------------------------------------------------------------


def test_suspicious_ports_have_a_default_and_take_ports_and_ranges() -> None:
    assert (4444, 4444) in Settings().audit.suspicious_ports
    assert (6666, 6669) in Settings().audit.suspicious_ports
    given_ports = Settings.model_validate({"audit": {"suspicious_ports": [4444, "6666-6669", "81"]}})
    assert given_ports.audit.suspicious_ports == [(4444, 4444), (6666, 6669), (81, 81)]


@pytest.mark.parametrize(
    "audit_settings",
    [{"suspicious_ports": [0]}, {"suspicious_ports": ["9-3"]}, {"suspicious_ports": ["any"]}, {"ports": [1]}],
)
def test_bad_audit_settings_are_refused(audit_settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({"audit": audit_settings})


# ----- the scan: real listeners, real programs --------------------------------------------------


def test_a_folder_with_the_o_w_bit_is_writable_and_a_private_one_is_not(tmp_path: Path) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # whatever the umask took away
    private.mkdir(mode=0o755)
    assert in_writable_folder(str(shared / "prog"), roots=())
    assert not in_writable_folder(str(private / "prog"), roots=())
    assert in_writable_folder(str(private / "prog"), roots=(str(tmp_path),))


def test_the_executable_of_a_process_we_cannot_find_is_unknown() -> None:
    assert executable(os.getpid())[0] == os.path.realpath(sys.executable)
    assert executable(2**22 + 1) == (None, False, False)  # above pid_max: never a process


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    """A stack file declaring nothing, for listeners the stack has no say about."""
    return write_stack(tmp_path, f'services:\n  idle:\n    command: "{SLEEP}"\n', programs=False)


def findings_of(report: Report, pid: int, port: int, protocol: str = "tcp") -> list[str]:
    mine = [e for e in report.endpoints if e.pid == pid and e.port == port and e.protocol == protocol]
    assert mine, f"{protocol} {port} of pid {pid} not in the scan"
    return sorted({rule for e in mine for rule in report.flags(e)})


def test_a_listener_on_every_interface_is_flagged_and_one_on_loopback_is_not(spawn: Any, stack: Path) -> None:
    everywhere, loopback = spawn("0.0.0.0"), spawn("127.0.0.1")
    report = audit_report(load_config(stack), None)
    assert findings_of(report, everywhere.pid, everywhere.port) == ["all_interfaces"]
    assert findings_of(report, loopback.pid, loopback.port) == []
    seen = next(e for e in report.endpoints if e.pid == loopback.pid)
    assert (seen.uid, seen.exe, seen.exe_deleted) == (os.getuid(), os.path.realpath(sys.executable), False)


UDP_HOLDER = """
import os, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(("127.0.0.1", 9))
print("ready", s.getsockname()[1], os.getpid(), c.getsockname()[1], flush=True)
time.sleep(300)
"""


def test_a_udp_socket_bound_to_every_interface_is_a_listener_and_a_connected_one_is_not(
    start: Start, stack: Path
) -> None:
    proc = start([sys.executable, "-c", UDP_HOLDER], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    _, port, pid, connected = map(int, proc.stdout.readline().replace("ready", "0").split())
    report = audit_report(load_config(stack), None)
    assert findings_of(report, pid, port, "udp") == ["all_interfaces"]
    assert not [e for e in report.endpoints if e.pid == pid and e.port == connected]


@pytest.fixture
def python_copy() -> Iterator[Path]:
    """A copy of this Python in a fresh folder every user may write to."""
    folder = Path(tempfile.mkdtemp(prefix="stackvisor-audit-"))
    folder.chmod(0o777)
    copy = folder / "python"
    shutil.copy2(os.path.realpath(sys.executable), copy)
    try:
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def hold_with(start: Start, program: Path) -> tuple[int, int]:
    """Run the port holder with `program` as its interpreter; its (port, pid) once it listens."""
    env = {**os.environ, "PYTHONHOME": f"{sys.base_prefix}:{sys.base_exec_prefix}"}
    proc = start(
        [str(program), "-c", HOLDER, "127.0.0.1", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    return _read_ready(proc, 10.0)


def test_a_program_run_from_a_world_writable_folder_is_flagged(
    start: Start, python_copy: Path, stack: Path
) -> None:
    port, pid = hold_with(start, python_copy)
    report = audit_report(load_config(stack), None)
    assert findings_of(report, pid, port) == ["writable_folder"]
    assert next(e.exe for e in report.endpoints if e.pid == pid) == str(python_copy)


def test_a_program_deleted_after_its_start_is_flagged(start: Start, python_copy: Path, stack: Path) -> None:
    port, pid = hold_with(start, python_copy)
    python_copy.unlink()
    report = audit_report(load_config(stack), None)
    assert "deleted_executable" in findings_of(report, pid, port)
    seen = next(e for e in report.endpoints if e.pid == pid)
    assert (seen.exe, seen.exe_deleted) == (str(python_copy), True)


def test_a_listener_on_a_configured_suspicious_port_is_flagged(spawn: Any, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    path = write_stack(
        tmp_path,
        f"""
        settings:
          audit:
            suspicious_ports: ["{port}-{port}"]
        services:
          idle:
            command: "{SLEEP}"
        """,
        programs=False,
    )
    holder = spawn("127.0.0.1", port)
    assert findings_of(audit_report(load_config(path), None), holder.pid, port) == ["suspicious_port"]


def ranged_stack(folder: Path, low: int, high: int) -> Path:
    return write_stack(
        folder,
        f'services:\n  pool:\n    command: "{SLEEP}"\n    port_range: "{low}-{high}"\n',
        programs=False,
    )


def test_a_listener_in_a_services_range_that_belongs_to_no_service_is_flagged(
    spawn: Any, tmp_path: Path
) -> None:
    holder = spawn("127.0.0.1")
    path = ranged_stack(tmp_path, holder.port, holder.port)
    report = audit_report(load_config(path), None)
    assert findings_of(report, holder.pid, holder.port) == ["unowned_in_range"]
    finding = next(f for f in report.findings if f.endpoint.pid == holder.pid)
    assert finding.detail == f"in port_range {holder.port} of service pool, held by no process of the stack"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser")
def test_another_users_listener_in_the_stacks_range_is_flagged(spawn: Any, tmp_path: Path) -> None:
    holder = spawn("127.0.0.1", 0, user="nobody")
    path = ranged_stack(tmp_path, holder.port, holder.port)
    report = audit_report(load_config(path), None)
    assert findings_of(report, holder.pid, holder.port) == ["other_user", "unowned_in_range"]
    seen = next(e for e in report.endpoints if e.pid == holder.pid)
    assert (seen.user, seen.uid) == ("nobody", 65534)


# ----- the command --------------------------------------------------------------------------------


def test_the_table_names_each_listener_its_owner_and_the_rules_it_fired(spawn: Any, tmp_path: Path) -> None:
    holder = spawn("0.0.0.0")
    ranged_stack(tmp_path, holder.port, holder.port)
    result = cli("audit", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if f" {holder.pid} " in line)
    assert row.split()[:3] == ["tcp", "0.0.0.0", str(holder.port)]
    assert row.split()[-1] == "all_interfaces,unowned_in_range"
    assert f"tcp 0.0.0.0:{holder.port} (pid {holder.pid} " in result.stdout
    assert "risk score " in result.stdout.splitlines()[-1]


def test_fail_over_exits_1_at_or_above_the_score_and_0_below(spawn: Any, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    write_stack(
        tmp_path,
        f'settings:\n  audit:\n    suspicious_ports: [{port}]\nservices:\n  idle:\n    command: "{SLEEP}"\n',
        programs=False,
    )
    spawn("127.0.0.1", port)
    over = cli("audit", "--json", "--fail-over", "4", cwd=tmp_path)
    assert over.returncode == 1, over.stderr
    assert json.loads(over.stdout)["score"] >= 4
    # The machine's other listeners count too: the exit status follows the score printed.
    top = cli("audit", "--json", "--fail-over", "10", cwd=tmp_path)
    assert top.returncode == (1 if json.loads(top.stdout)["score"] >= 10 else 0)
    assert cli("audit", "--fail-over", "0", cwd=tmp_path).returncode == 1


@pytest.mark.parametrize("value", ["abc", "-1", "10.5", "nan"])
def test_a_bad_fail_over_is_a_usage_error(stack: Path, value: str) -> None:
    result = cli("audit", "--fail-over", value, cwd=stack.parent)
    assert result.returncode == 2
    assert "expected a score from 0 to 10" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_stack_file_is_a_usage_error(tmp_path: Path) -> None:
    write_stack(tmp_path, "settings:\n  audit:\n    suspicious_ports: [0]\nservices: {}\n", programs=False)
    result = cli("audit", cwd=tmp_path)
    assert result.returncode == 2
    assert "services.yaml:3:" in result.stderr and "suspicious_ports" in result.stderr
    assert "Traceback" not in result.stderr


# ----- a running stack ---------------------------------------------------------------------------


def test_get_v1_audit_knows_the_stacks_own_processes(detached: Any, spawn: Any, tmp_path: Path) -> None:
    stranger = spawn("127.0.0.1")
    (port,) = free_ports(1)
    write_stack(
        tmp_path,
        f"""
        services:
          api:
            command: python3 server.py
            port: {port}
            port_range: "{port}-{port}"
            healthcheck: {{tcp: "127.0.0.1:${{PORT}}"}}
          pool:
            command: "{SLEEP}"
            port_range: "{stranger.port}-{stranger.port}"
        """,
    )
    up = detached(tmp_path)
    assert up.returncode == 0, up.stderr
    doc = client(tmp_path).get("/v1/audit")
    by_port = {(e["protocol"], e["port"]): e for e in doc["listeners"]}
    assert by_port["tcp", port]["flags"] == []  # in api's range, and api's own
    assert by_port["tcp", stranger.port]["flags"] == ["unowned_in_range"]
    assert by_port["tcp", stranger.port]["pid"] == stranger.pid
    assert doc["supervisor_pid"] is not None and doc["stack"] == tmp_path.name
    assert {r["rule"] for r in doc["rules"]} == {str(rule) for rule in Rule}
    assert 0 <= doc["score"] <= 10
    # The command finds the same supervisor through the stack's lock.
    from_cli = json.loads(cli("audit", "--json", cwd=tmp_path).stdout)
    assert from_cli["supervisor_pid"] == doc["supervisor_pid"]
    assert {
        (e["port"], tuple(e["flags"])) for e in from_cli["listeners"] if e["port"] in (port, stranger.port)
    } == {
        (port, ()),
        (stranger.port, ("unowned_in_range",)),
    }


def test_the_openapi_document_describes_v1_audit(detached: Any, stack: Path) -> None:
    up = detached(stack.parent)
    assert up.returncode == 0, up.stderr
    api = client(stack.parent)
    spec = api.get("/openapi.json")
    schema = spec["components"]["schemas"]["Audit"]
    doc = api.get("/v1/audit")
    assert "/v1/audit" in spec["paths"]
    assert set(schema["required"]) <= set(doc)
    listener = spec["components"]["schemas"]["AuditListener"]
    assert all(set(listener["required"]) == set(e) for e in doc["listeners"])
