"""The client the CLI uses: plain HTTP/1.1 over the stack's unix socket.

Synchronous and built on `socket` alone on purpose: a CLI command should not pay for
an event loop and aiohttp to ask one question, nor for `http.client`, whose imports
(email, ssl) cost a `stackvisor status` more than its own work. It speaks only to our
own server: one request per connection (`Connection: close`), and a body sized by
`Content-Length`, sent in chunks, or ended by the server closing.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stackvisor.control import sockets
from stackvisor.errors import ApiError, NotResponding, NotRunning
from stackvisor.system import procfs

_MAX_HEAD = 64 * 1024


class BadAnswer(ValueError):
    """The server's answer is not the HTTP we expect."""


class _Response:
    """Status, headers and the body of one answer, read from `sock` as it comes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        head = self._read_head()
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise BadAnswer(f"not an HTTP status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadAnswer(f"not an HTTP header: {line[:80]!r}")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise BadAnswer(f"bad Content-Length: {length[:40]!r}")
        self._left = int(length) if length is not None and not self._chunked else None

    def _recv(self) -> bytes:
        return self._sock.recv(65536)

    def _read_head(self) -> bytes:
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > _MAX_HEAD:
                raise BadAnswer("the answer's headers never end")
            data = self._recv()
            if not data:
                raise BadAnswer("the connection closed before an answer")
            self._buf += data
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        return head

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            data = self._recv()
            if not data:
                raise BadAnswer("the connection closed inside a chunk header")
            self._buf += data
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self._recv()
            if not data:
                raise BadAnswer(f"the connection closed {n - len(self._buf)} bytes short")
            self._buf += data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def pieces(self) -> Iterator[bytes]:
        """The body, piece by piece as it arrives, until its end."""
        if self._chunked:
            while True:
                size_text = self._line().split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BadAnswer(f"bad chunk size: {size_text[:20]!r}") from None
                if size == 0:
                    return
                yield self._exactly(size)
                self._exactly(2)
        elif self._left is not None:
            yield self._exactly(self._left)
        else:
            if self._buf:
                yield self._buf
                self._buf = b""
            while data := self._recv():
                yield data

    def read(self) -> bytes:
        return b"".join(self.pieces())

    def lines(self) -> Iterator[str]:
        rest = b""
        for piece in self.pieces():
            rest += piece
            *done, rest = rest.split(b"\n")
            for line in done:
                yield line.decode("utf-8", "replace")
        if rest:
            yield rest.decode("utf-8", "replace")


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

    def _open(
        self, method: str, url: str, body: Any = None, timeout: float | None = 0.0
    ) -> tuple[socket.socket, _Response]:
        """`timeout` 0 means the client's default, None no timeout at all."""
        timeout = self.timeout if timeout == 0.0 else timeout
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        try:
            sock = sockets.connect_unix(self.path, 5.0)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(f"the stack is not running ({exc})") from None
        except TimeoutError:
            raise self.not_responding(5.0) from None
        try:
            sock.settimeout(timeout)
            sock.sendall(head.encode("latin-1") + b"\r\n" + data)
            return sock, _Response(sock)
        except TimeoutError:
            sock.close()
            raise self.not_responding(timeout) from None
        except BaseException:
            sock.close()
            raise

    def request(self, method: str, url: str, body: Any = None, timeout: float | None = 0.0) -> Any:
        sock, resp = self._open(method, url, body, timeout)
        try:
            raw = resp.read()
        except TimeoutError:
            raise self.not_responding(sock.gettimeout()) from None
        finally:
            sock.close()
        kind = resp.headers.get("content-type", "")
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
        sock, resp = self._open("GET", url, None, None)
        try:
            if resp.status >= 400:
                body = resp.read()
                raise ApiError.from_body(resp.status, json.loads(body) if body else {})
            yield from resp.lines()
        finally:
            sock.close()

    def alive(self) -> bool:
        try:
            self.get("/v1/status")
            return True
        except (NotRunning, NotResponding, OSError, ApiError, BadAnswer):
            return False


_STATES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "Z": "zombie", "I": "idle"}


def _process_state(pid: int) -> str:
    """How a process is, in words: `stopped: kill -CONT 42 resumes it`, `running`..."""
    letter = procfs.state(pid)
    if letter is None:
        return "gone"
    if letter in ("T", "t"):
        return f"stopped: kill -CONT {pid} resumes it"
    return _STATES.get(letter, letter)
