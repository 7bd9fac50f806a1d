"""The client the CLI uses: plain HTTP/1.1 over the stack's unix socket.

Synchronous and built on the standard library on purpose: a CLI command should not
pay for starting an event loop and importing aiohttp to ask one question.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stackvisor.control import sockets
from stackvisor.errors import ApiError, NotResponding, NotRunning


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = sockets.connect_unix(self.unix_path, 5.0)
        self.sock.settimeout(self.timeout)


class Client:
    """`timeout` bounds a question (GET); an action (POST) lasts as long as the services
    take, unless given one. `supervisor_pid`, when known, names the supervisor in the
    error when it does not answer."""

    def __init__(self, path: Path, timeout: float = 30.0, supervisor_pid: int | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.supervisor_pid = supervisor_pid

    def not_responding(self, waited: float | str | None) -> NotResponding:
        """The error for a supervisor that did not answer (`waited`: seconds, or a word)."""
        pid = self.supervisor_pid
        who = f"the supervisor (pid {pid}, {_process_state(pid)})" if pid else "the supervisor"
        within = f"within {waited:g}s" if isinstance(waited, (int, float)) else "now"
        return NotResponding(f"{who} will not answer {within}")

    def _open(self, method: str, url: str, body: Any = None, timeout: float | None = 0.0) -> Any:
        """`timeout` 0 means the client's default, None no timeout at all."""
        conn = _UnixConnection(self.path, self.timeout if timeout == 0.0 else timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, url, body=data, headers=headers)
            return conn, conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise NotRunning(f"the stack is not running ({exc})") from None
        except TimeoutError:
            conn.close()
            raise self.not_responding(conn.timeout) from None
        except OSError:
            conn.close()
            raise

    def request(self, method: str, url: str, body: Any = None, timeout: float | None = 0.0) -> Any:
        conn, resp = self._open(method, url, body, timeout)
        try:
            raw = resp.read()
        except TimeoutError:
            raise self.not_responding(conn.timeout) from None
        finally:
            conn.close()
        kind = resp.getheader("Content-Type", "")
        data: Any = json.loads(raw) if "json" in kind and raw else raw.decode("utf-8", "replace")
        if resp.status >= 400:
            raise ApiError.from_body(resp.status, data)
        return data

    def get(self, url: str) -> Any:
        return self.request("GET", url)

    def post(self, url: str, body: Any = None, timeout: float | None = None) -> Any:
        """Actions last as long as the services take to stop: no timeout unless given."""
        return self.request("POST", url, body if body is not None else {}, timeout=timeout)

    def stream(self, url: str) -> Iterator[str]:
        """Lines of a streamed response until the server ends it."""
        conn, resp = self._open("GET", url, timeout=None)
        try:
            if resp.status >= 400:
                body = resp.read()
                raise ApiError.from_body(resp.status, json.loads(body) if body else {})
            while True:
                line = resp.readline()
                if not line:
                    return
                yield line.decode("utf-8", "replace").rstrip("\n")
        finally:
            conn.close()

    def alive(self) -> bool:
        try:
            self.get("/v1/status")
            return True
        except (NotRunning, NotResponding, OSError, ApiError):
            return False


def _process_state(pid: int) -> str:
    """How a process is, in words: `stopped (kill -CONT 42 resumes it)`, `running`..."""
    import psutil

    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return "gone"
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return f"stopped: kill -CONT {pid} resumes it"
    return str(status)
