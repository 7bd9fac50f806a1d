"""The pure half of ports: classification and plans from tables of plain data."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from stackvisor.config.schema import Service, Strategy
from stackvisor.ports.conflicts import Action, ConflictRecord, format_plan, plan_port, plan_services
from stackvisor.ports.levels import ConflictLevel, Policy, classify, matching_pattern
from stackvisor.ports.owners import Owner

ME = 1000
NOW = 1_700_000_000.0
SUPERVISOR, PARENT = 700, 600

POLICY = Policy(
    uid=ME,
    lineage=frozenset({SUPERVISOR, PARENT, 1}),
    reserved_ports=frozenset({5432, 8002}),
    protected=("sshd", "postgres"),
    known_children=frozenset({(4000, NOW - 50.0)}),
    now=NOW,
)

C, A, I = Strategy.CONSERVATIVE, Strategy.AGGRESSIVE, Strategy.INTELLIGENT  # noqa: E741 (the tables read C/A/I)
T, M, F, U = Action.TERMINATE, Action.MIGRATE, Action.FAIL, Action.USE


def owner(
    pid: int = 4242,
    name: str = "python3",
    cmdline: tuple[str, ...] = ("python3", "app.py"),
    uid: int = ME,
    port: int = 8000,
    readable: bool = True,
    established: int = 0,
    create_time: float = NOW - 3 * 3600,
    user: str = "dev",
    euid: int | None = None,
) -> Owner:
    return Owner(
        port=port,
        readable=readable,
        pid=pid,
        name=name,
        cmdline=cmdline,
        user=user,
        uid=uid,
        euid=uid if euid is None else euid,
        create_time=create_time,
        started=create_time,  # plain data: one clock for both, as if booted at the epoch
        pgid=pid,
        established=established,
    )


def service(port: int | str | None = 8000, alternatives: tuple[int, ...] = (), **kw) -> Service:
    return Service(name="api", command="python -m api", port=port, alternative_ports=list(alternatives), **kw)


API = service(process_patterns=["api-server"])

CLASSIFY_CASES = [
    # (what, holder, expected level)
    ("unreadable", owner(readable=False, name=None, cmdline=()), ConflictLevel.CRITICAL),
    ("pid 1", owner(pid=1, name="init"), ConflictLevel.CRITICAL),
    ("the supervisor", owner(pid=SUPERVISOR), ConflictLevel.CRITICAL),
    ("an ancestor", owner(pid=PARENT, name="bash"), ConflictLevel.CRITICAL),
    ("another user", owner(uid=0, user="root"), ConflictLevel.CRITICAL),
    ("setuid to another user", owner(euid=0), ConflictLevel.CRITICAL),
    ("protected name", owner(name="sshd", cmdline=("/usr/sbin/sshd", "-D")), ConflictLevel.CRITICAL),
    (
        "protected in argv",
        owner(name="postgres", cmdline=("/usr/lib/postgresql/16/bin/postgres",)),
        ConflictLevel.CRITICAL,
    ),
    ("reserved port", owner(port=5432), ConflictLevel.CRITICAL),
    ("stale child of another user", owner(pid=4000, create_time=NOW - 50.0, uid=0), ConflictLevel.CRITICAL),
    ("stale child", owner(pid=4000, create_time=NOW - 50.0), ConflictLevel.LOW),
    ("recycled pid of a child", owner(pid=4000, create_time=NOW - 10.0), ConflictLevel.HIGH),
    ("process_patterns", owner(cmdline=("/usr/bin/api-server", "--port", "8000")), ConflictLevel.LOW),
    (
        "process_patterns beat dev patterns",
        owner(name="node", cmdline=("node", "api-server.js")),
        ConflictLevel.LOW,
    ),
    ("node", owner(name="node", cmdline=("node", "server.js")), ConflictLevel.MEDIUM),
    ("npm run dev", owner(name="npm", cmdline=("npm", "run", "dev")), ConflictLevel.MEDIUM),
    (
        "vite via node",
        owner(name="node", cmdline=("node", "/w/node_modules/.bin/vite")),
        ConflictLevel.MEDIUM,
    ),
    ("python -m uvicorn", owner(cmdline=("python3", "-m", "uvicorn", "app:app")), ConflictLevel.MEDIUM),
    ("script named like one", owner(cmdline=("python3", "/tmp/uvicorn_dev.py")), ConflictLevel.MEDIUM),
    (
        "manage.py runserver",
        owner(cmdline=("python3", "manage.py", "runserver", "8000")),
        ConflictLevel.MEDIUM,
    ),
    ("rails server", owner(name="ruby", cmdline=("ruby", "bin/rails", "server")), ConflictLevel.MEDIUM),
    ("no partial words", owner(name="nextcloud", cmdline=("nextcloud", "--nodes", "3")), ConflictLevel.HIGH),
    ("plain process", owner(), ConflictLevel.HIGH),
    # Another stack's supervisor listens for its on-demand and proxied services: ending it
    # would end that whole stack.
    (
        "python -m stackvisor",
        owner(cmdline=("python3", "-m", "stackvisor", "up", "-d")),
        ConflictLevel.CRITICAL,
    ),
    (
        "the stackvisor command",
        owner(cmdline=("/usr/bin/python3", "/usr/local/bin/stackvisor", "up")),
        ConflictLevel.CRITICAL,
    ),
    ("stackvisor run directly", owner(name="stackvisor", cmdline=("stackvisor",)), ConflictLevel.CRITICAL),
    (
        "a server in a folder named stackvisor",
        owner(cmdline=("python3", "/src/stackvisor/tests/server.py")),
        ConflictLevel.HIGH,
    ),
    ("a server a stack runs", owner(cmdline=("python3", "server.py", "stackvisor")), ConflictLevel.HIGH),
    (
        "pytest -m stackvisor",
        owner(cmdline=("python3", "-m", "pytest", "-m", "stackvisor")),
        ConflictLevel.HIGH,
    ),
    (
        "a stale copy run from a folder named stackvisor",
        owner(cmdline=("python3", "stackvisor"), pid=4000, create_time=NOW - 50.0),
        ConflictLevel.LOW,
    ),
    (
        "process_patterns name a folder named stackvisor",
        owner(cmdline=("python3", "stackvisor", "api-server")),
        ConflictLevel.LOW,
    ),
]


@pytest.mark.parametrize(
    "holder, expected", [c[1:] for c in CLASSIFY_CASES], ids=[c[0] for c in CLASSIFY_CASES]
)
def test_classify(holder: Owner, expected: ConflictLevel) -> None:
    assert classify(holder, API, POLICY).level is expected


def test_a_root_stacks_child_started_as_another_user_is_its_own() -> None:
    """`user: postgres` under a root supervisor: the recorded child is a stale copy (low);
    to a non-root supervisor the same process can only be somebody else's (critical)."""
    child = owner(pid=4000, create_time=NOW - 50.0, uid=999, user="postgres")
    assert classify(child, API, replace(POLICY, uid=0)).level is ConflictLevel.LOW
    assert classify(child, API, POLICY).level is ConflictLevel.CRITICAL
    stranger = owner(pid=4001, create_time=NOW - 50.0, uid=999, user="postgres")
    assert classify(stranger, API, replace(POLICY, uid=0)).level is ConflictLevel.CRITICAL


def test_dev_patterns_are_overridable() -> None:
    custom = Policy(uid=ME, dev_patterns=("myserve",), now=NOW)
    assert classify(owner(name="node", cmdline=("node",)), API, custom).level is ConflictLevel.HIGH
    assert classify(owner(cmdline=("myserve", "--dev")), API, custom).level is ConflictLevel.MEDIUM


def test_matching_pattern_whole_words() -> None:
    assert matching_pattern(owner(cmdline=("python3", "-m", "http.server")), ["http.server"]) == "http.server"
    assert matching_pattern(owner(cmdline=("python3", "-m", "httpxserver")), ["http.server"]) is None
    assert matching_pattern(owner(name="x", cmdline=()), ["", "  "]) is None


# Holders by level for the strategy table; "medium+conn" has established connections.
HOLDERS = {
    "low": owner(pid=4000, create_time=NOW - 50.0),
    "medium": owner(name="node", cmdline=("node", "server.js")),
    "medium+conn": owner(name="node", cmdline=("node", "server.js"), established=3),
    "high": owner(),
    "critical": owner(uid=0, user="root"),
}

# (holder, strategy, with a free alternative?) -> action: the table in the docstring of
# stackvisor/ports/conflicts.py, row by row.
# fmt: off
STRATEGY_TABLE = [
    ("low", C, True, T), ("low", C, False, T),
    ("low", A, True, T), ("low", A, False, T),
    ("low", I, True, T), ("low", I, False, T),
    ("medium", C, True, M), ("medium", C, False, F),
    ("medium", A, True, T), ("medium", A, False, T),
    ("medium", I, True, M), ("medium", I, False, T),
    ("medium+conn", I, True, M), ("medium+conn", I, False, F),
    ("medium+conn", A, False, T),
    ("high", C, True, M), ("high", C, False, F),
    ("high", A, True, T), ("high", A, False, T),
    ("high", I, True, M), ("high", I, False, F),
    ("critical", C, True, M), ("critical", C, False, F),
    ("critical", A, True, M), ("critical", A, False, F),
    ("critical", I, True, M), ("critical", I, False, F),
]
# fmt: on


@pytest.mark.parametrize("kind, strategy, has_alternative, expected", STRATEGY_TABLE)
def test_strategy_table(kind: str, strategy: Strategy, has_alternative: bool, expected: Action) -> None:
    svc = service(alternatives=(8001,) if has_alternative else ())
    plan = plan_port(svc, strategy, [HOLDERS[kind]], busy={8000}, policy=POLICY)
    assert plan.action is expected, plan.message
    assert plan.port == {T: 8000, M: 8001, F: None}[expected]


@pytest.mark.parametrize("strategy", list(Strategy))
def test_critical_holders_are_never_terminated(strategy: Strategy) -> None:
    for holder in (
        owner(pid=1),
        owner(pid=SUPERVISOR),
        owner(readable=False),
        owner(uid=0),
        owner(name="sshd"),
        owner(port=5432, name="node", cmdline=("node",)),
    ):
        port = holder.port
        plan = plan_port(service(port=port), strategy, [holder], busy={port}, policy=POLICY)
        assert plan.action is F
        assert plan.level is ConflictLevel.CRITICAL


def test_worst_holder_decides() -> None:
    holders = [HOLDERS["low"], HOLDERS["critical"]]
    plan = plan_port(service(), A, holders, busy={8000}, policy=POLICY)
    assert plan.level is ConflictLevel.CRITICAL and plan.action is F


def test_free_port_is_used() -> None:
    plan = plan_port(service(alternatives=(8001,)), C, [], busy=set(), policy=POLICY)
    assert (plan.action, plan.port, plan.level) == (U, 8000, ConflictLevel.NONE)


def test_no_port_means_nothing_to_do() -> None:
    plan = plan_port(service(port=None), A, [], busy=set(), policy=POLICY)
    assert (plan.action, plan.port) == (U, None)


MIGRATION_CASES = [
    # (alternative_ports, port_range, busy, taken, expected target)
    ((8001, 8003), None, {8000}, set(), 8001),
    ((8001, 8003), None, {8000, 8001}, set(), 8003),
    ((8002, 8003), None, {8000}, set(), 8003),  # 8002 is reserved
    ((8001, 8003), None, {8000}, {8001}, 8003),  # 8001 belongs to another service
    ((8001,), (9000, 9002), {8000, 8001, 9000}, set(), 9001),  # then the range
    ((8001,), None, {8000, 8001}, set(), None),
]


@pytest.mark.parametrize("alternatives, port_range, busy, taken, expected", MIGRATION_CASES)
def test_migration_target(alternatives, port_range, busy, taken, expected) -> None:
    svc = service(alternatives=alternatives, port_range=port_range)
    plan = plan_port(svc, C, [HOLDERS["high"]], busy=busy, policy=POLICY, taken=taken)
    if expected is None:
        assert plan.action is F
        assert "none of api's alternative ports is free (8001 in use)" in plan.message
    else:
        assert (plan.action, plan.port) == (M, expected)


def test_auto_port() -> None:
    plan = plan_port(service(port="auto"), C, [], busy=set(), policy=POLICY)
    assert (plan.action, plan.port) == (U, "auto")
    ranged = service(port="auto", port_range=(9000, 9005))
    plan = plan_port(ranged, C, [], busy={9000}, policy=POLICY, taken={9001})
    assert (plan.action, plan.port) == (U, 9002)


def test_conservative_failure_message_names_holder_and_hint() -> None:
    holder = owner(pid=4242, name="node", cmdline=("node", "server.js"), user="dev")
    plan = plan_port(service(), C, [holder], busy={8000}, policy=POLICY)
    assert plan.message == (
        "port 8000 is held by pid 4242 (node, user dev, started 3h ago): level medium. "
        "conservative strategy keeps it; give api alternative_ports, or run with "
        "--strategy aggressive to end it."
    )


def test_critical_failure_message_does_not_suggest_aggressive() -> None:
    plan = plan_port(service(), A, [owner(uid=0, user="root")], busy={8000}, policy=POLICY)
    assert "another user (root)" in plan.message
    assert "--strategy aggressive" not in plan.message
    assert "free port 8000 yourself" in plan.message


def test_intelligent_keeps_busy_dev_server() -> None:
    plan = plan_port(service(), I, [HOLDERS["medium+conn"]], busy={8000}, policy=POLICY)
    assert "3 established connections" in plan.message


def test_two_services_asking_for_one_port() -> None:
    plan = plan_port(service(alternatives=(8001,)), C, [], busy=set(), policy=POLICY, taken={8000})
    assert (plan.action, plan.port) == (M, 8001)
    plan = plan_port(service(), C, [], busy=set(), policy=POLICY, taken={8000})
    assert plan.action is F


def test_stack_plan_targets_account_for_each_other() -> None:
    web = Service(name="web", command="x", port=3000, alternative_ports=[3001, 3002])
    api = Service(name="api", command="x", port=3000, alternative_ports=[3001, 3002])
    admin = Service(name="admin", command="x", port=3003, alternative_ports=[3001, 3002, 3004])
    worker = Service(name="worker", command="x")
    node = owner(port=3003, name="node", cmdline=("node", "admin.js"))
    holders = {3003: [node]}
    plan = plan_services(
        [("web", web, C), ("api", api, C), ("admin", admin, C), ("worker", worker, C)],
        holders,
        busy={3003},
        policy=POLICY,
    )
    assert [(a.service, a.action, a.port) for a in plan] == [
        ("web", U, 3000),
        ("api", M, 3001),
        ("admin", M, 3002),
        ("worker", U, None),
    ]


def test_stack_plan_fixed_ports_are_off_limits() -> None:
    db = Service(name="db", command="x", port=8001)
    api = Service(name="api", command="x", port=8000, alternative_ports=[8001, 8003])
    plan = plan_services([("api", api, C), ("db", db, C)], {8000: [owner()]}, {8000}, POLICY)
    assert [(a.action, a.port) for a in plan] == [(M, 8003), (U, 8001)]


def test_format_plan_and_json() -> None:
    holder = owner(pid=4242, name="node", cmdline=("node",), user="dev")
    plan = [
        plan_port(service(alternatives=(8001,)), C, [holder], {8000}, POLICY),
        plan_port(Service(name="db", command="x", port=6379), C, [], set(), POLICY),
    ]
    table = format_plan(plan)
    lines = table.splitlines()
    assert lines[0].split() == ["SERVICE", "PORT", "HOLDER", "LEVEL", "ACTION", "USES"]
    assert lines[1].split() == ["api", "8000", "4242/node/dev", "medium", "migrate", "8001"]
    assert lines[2].split() == ["db", "6379", "-", "none", "use", "6379"]
    assert "api: port 8000 is held by pid 4242" in table
    data = json.loads(json.dumps([a.as_dict() for a in plan]))
    assert data[0]["action"] == "migrate" and data[0]["holders"][0]["pid"] == 4242


def test_conflict_record_is_plain_data() -> None:
    plan = plan_port(service(alternatives=(8001,)), C, [owner()], {8000}, POLICY)
    record = ConflictRecord.of(plan, "ok", 8001)
    assert json.loads(json.dumps(record.as_dict())) == {
        "service": "api",
        "port": 8000,
        "holder_pid": 4242,
        "holder_name": "python3",
        "holder_user": "dev",
        "level": "high",
        "action": "migrate",
        "outcome": "ok",
        "new_port": 8001,
        "message": plan.message,
        "strategy": "conservative",
    }
