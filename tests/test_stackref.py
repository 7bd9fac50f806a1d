"""Finding a running stack from its file (`stackref`), and the CLI's HTTP client.

The record `.stackvisor/stack.json` is written by real supervisors here; the client
talks to real unix sockets, some served by canned answers to try what aiohttp never
sends.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackvisor.control.client import BadAnswer, Client
from stackvisor.control.sockets import StackLock
from stackvisor.errors import ApiError
from stackvisor.paths import StackPaths
from stackvisor.stackref import StackRef
from tests.conftest import SLEEP, cli, cli_process, wait_for, write_stack

CUSTOM = "name: shop\nsettings: {{control: {{socket: run/c.sock}}}}\nservices:\n{services}"


def services(*names: str) -> str:
    return "".join(f"  {n}:\n    command: {SLEEP}\n" for n in names)


def test_a_broken_edit_does_not_hide_a_stack_on_a_socket_of_its_own(tmp_path: Path, detached: Any) -> None:
    stack = write_stack(tmp_path, CUSTOM.format(services=services("app")))
    assert detached(tmp_path).returncode == 0
    record = json.loads(StackPaths.at(tmp_path).record.read_text())
    assert record == {
        "file": str(stack),
        "name": "shop",
        "socket": str(tmp_path / "run" / "c.sock"),
        "logs": str(tmp_path / "logs"),
        "services": ["app"],
    }
    # Mid-edit: the YAML no longer parses, the supervisor keeps its last good file.
    stack.write_text(stack.read_text() + "  broken: [\n")
    shown = cli_process("status", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "app" in shown.stdout and "running" in shown.stdout


def test_a_reload_and_a_deleted_record_are_followed(tmp_path: Path, detached: Any) -> None:
    stack = write_stack(tmp_path, CUSTOM.format(services=services("app")))
    assert detached(tmp_path).returncode == 0
    record = StackPaths.at(tmp_path).record
    stack.write_text(CUSTOM.format(services=services("app", "extra")))
    wait_for(lambda: json.loads(record.read_text())["services"] == ["app", "extra"], timeout=15)
    record.unlink()
    wait_for(record.exists, timeout=5)
    assert json.loads(record.read_text())["services"] == ["app", "extra"]
    assert cli("logs", "extra", "-n", "1", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("tamper", ["writable", "link", "other file", "garbage", "wrong types"])
def test_a_record_that_cannot_be_trusted_is_ignored(tmp_path: Path, tamper: str) -> None:
    stack = write_stack(tmp_path, "services:\n  app:\n    command: x\n", programs=False)
    record = StackPaths.at(tmp_path).record
    record.parent.mkdir(mode=0o700)
    planted = {
        "file": str(stack),
        "name": "x",
        "socket": "/tmp/elsewhere.sock",
        "logs": "/tmp",
        "services": [],
    }
    if tamper == "other file":
        planted["file"] = str(tmp_path / "other.yaml")
    if tamper == "wrong types":
        planted["services"] = "app"
    text = "{not json" if tamper == "garbage" else json.dumps(planted)
    if tamper == "link":
        target = tmp_path / "target.json"
        target.write_text(text)
        record.symlink_to(target)
    else:
        record.write_text(text)
        record.chmod(0o666 if tamper == "writable" else 0o600)
    found = StackRef.locate(stack)
    assert found.paths == StackPaths.at(tmp_path) and found.services == ("app",)


def test_a_trusted_record_is_used_without_reading_the_yaml(tmp_path: Path) -> None:
    stack = tmp_path / "services.yaml"
    stack.write_text("services: [this is not a stack\n")
    record = StackPaths.at(tmp_path).record
    record.parent.mkdir(mode=0o700)
    data = {
        "file": str(stack),
        "name": "kept",
        "socket": "/run/x.sock",
        "logs": str(tmp_path / "l"),
        "services": ["a"],
    }
    record.write_text(json.dumps(data))
    record.chmod(0o600)
    found = StackRef.locate(stack)
    assert (found.name, found.paths.socket, found.paths.logs, found.services) == (
        "kept",
        Path("/run/x.sock"),
        tmp_path / "l",
        ("a",),
    )


# ----- the client against canned answers --------------------------------------------------


@pytest.fixture
def canned(tmp_path: Path) -> Iterator[Any]:
    """`canned(ANSWER)`: a Client of a unix socket that reads one request and writes
    ANSWER (bytes, or a list of bytes sent one by one), then closes."""
    path = tmp_path / "c.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    threads: list[threading.Thread] = []

    def serve(answer: bytes | list[bytes]) -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for piece in answer if isinstance(answer, list) else [answer]:
                conn.sendall(piece)

    def make(answer: bytes | list[bytes]) -> Client:
        thread = threading.Thread(target=serve, args=(answer,), daemon=True)
        thread.start()
        threads.append(thread)
        return Client(path, timeout=5)

    try:
        yield make
    finally:
        server.close()
        for thread in threads:
            thread.join(5)


JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"


def test_bodies_sized_chunked_or_ended_by_close_are_read_whole(canned: Any) -> None:
    assert canned(JSON + b'Content-Length: 8\r\n\r\n{"a": 1}').get("/") == {"a": 1}
    chunked = [
        JSON + b"Transfer-Encoding: chunked\r\n\r\n",
        b'3\r\n{"a\r\n',
        b'5;x=y\r\n": 2}\r\n',
        b"0\r\n\r\n",
    ]
    assert canned(chunked).get("/") == {"a": 2}
    assert canned([JSON + b"\r\n", b'{"a":', b" 3}"]).get("/") == {"a": 3}


def test_errors_and_streams(canned: Any) -> None:
    refused = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 38\r\n\r\n"
    with pytest.raises(ApiError) as err:
        canned(refused + b'{"error": "no such", "detail": "gone"}').get("/")
    assert err.value.status == 404
    lines = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    stream = [lines, b"6\r\none\ntw\r\n", b"3\r\no\nx\r\n", b"0\r\n\r\n"]
    assert list(canned(stream).stream("/")) == ["one", "two", "x"]


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "not an HTTP header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "5 bytes short"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\n", "closed before an answer"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000, "headers never end"),
    ],
)
def test_a_broken_answer_is_named_not_a_traceback(canned: Any, answer: bytes, says: str) -> None:
    with pytest.raises(BadAnswer, match=says):
        canned(answer).get("/")


def test_the_cli_reports_a_broken_answer(canned: Any, tmp_path: Path) -> None:
    write_stack(
        tmp_path, "settings: {control: {socket: c.sock}}\nservices:\n  a:\n    command: x\n", programs=False
    )
    canned(b"garbage\r\n\r\n")
    lock = StackLock(StackPaths.at(tmp_path).lock)  # this test holds the stack, as a supervisor would
    lock.acquire()
    try:
        shown = cli("status", cwd=tmp_path)
    finally:
        lock.release()
    assert shown.returncode == 1
    assert "did not answer properly: not an HTTP status line" in shown.stderr
    assert "Traceback" not in shown.stderr and os.path.exists(tmp_path / "c.sock")
