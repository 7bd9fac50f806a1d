"""The control API fuzzed from its own OpenAPI document: no 5xx, the supervisor stays up."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from conftest import alive, cli, client, end_stack, free_ports, supervisor_pid, write_stack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(300)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def value_for(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    kind = schema.get("type")
    wild = st.text(max_size=12)
    if kind == "integer":
        return st.integers(-(10**6), 10**7).map(str) | wild
    if kind == "number":
        return st.floats(allow_nan=True, allow_infinity=True).map(str) | wild
    if kind == "boolean":
        return st.sampled_from(["true", "false", "1", "0"]) | wild
    return wild


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root: Path = tmp_path_factory.mktemp("fuzz")
    (port,) = free_ports(1)
    write_stack(
        root,
        f"""
        services:
          api:
            command: python3 server.py
            port: {port}
            stop_timeout: 2s
            healthcheck: {{tcp: "${{PORT}}"}}
          job:
            command: python3 -c "print('done')"
          worker:
            command: python3 -c "import time; time.sleep(300)"
            stop_timeout: 1s
            depends_on: [api]
        """,
    )
    up = cli("up", "-d", "--wait", cwd=root)
    pid = supervisor_pid(root)
    try:
        assert up.returncode == 0, up.stderr
        api = client(root)
        yield api, api.get("/openapi.json"), pid
    finally:
        end_stack(root, pid)


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            if path == "/v1/stop":
                continue  # ends the stack: called once, last
            out.append((path, method.upper(), op))
    return out


@st.composite
def requests(draw: st.DrawFn, doc: dict[str, Any], names: list[str]) -> tuple[str, str, Any]:
    path, method, op = draw(st.sampled_from(operations(doc)))
    method = draw(st.sampled_from([method, method, method, "GET", "POST", "PUT", "DELETE", "PATCH"]))
    query = {}
    for param in op.get("parameters", []):
        if param["in"] == "path":
            value = draw(st.sampled_from(names) | st.text(min_size=1, max_size=12))
            path = path.replace("{" + param["name"] + "}", urllib.parse.quote(value, safe=""))
        elif draw(st.booleans()):
            query[param["name"]] = draw(value_for(param.get("schema", {})))
    if path.endswith("/logs") and query.get("follow") in ("true", "1"):
        query["follow"] = "false"  # a follow never ends by itself; streams are checked below
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    body = draw(st.none() | JSON) if method == "POST" else None
    return method, url, body


def test_streams_answer_with_their_headers(api: Any) -> None:
    client, _, _ = api
    for url in ("/v1/events?since=0", "/v1/services/api/logs?follow=true&tail=5"):
        conn, resp = client._open("GET", url, timeout=10)
        try:
            assert resp.status == 200
            assert next(resp.lines())
        finally:
            conn.close()
    conn, resp = client._open("GET", "/v1/ws", timeout=10)
    try:
        assert 400 <= resp.status < 500  # not an upgrade request
    finally:
        conn.close()


def test_fuzzed_requests_never_get_a_5xx(api: Any) -> None:
    client, doc, pid = api
    names = ["api", "job", "worker"]
    seen: dict[int, int] = {}

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(requests(doc, names))
    def check(request: tuple[str, str, Any]) -> None:
        method, url, body = request
        conn, resp = client._open(method, url, body, timeout=30)
        try:
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                status = resp.status
            else:
                status = resp.status
                raw = resp.read()
                if status >= 400:
                    error = json.loads(raw)
                    assert set(error) == {"error", "detail"}, (method, url, error)
        finally:
            conn.close()
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (method, url, body, status)

    check()
    assert alive(pid)
    assert client.get("/v1/status")["pid"] == pid
    assert any(code >= 400 for code in seen) and any(code < 300 for code in seen)
    stop = client.post("/v1/stop")
    assert stop["stopping"] is True
