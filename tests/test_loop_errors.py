"""Errors the event loop meets on its own (an accept that fails when descriptors run out,
a callback that raised) are said, but a burst of the same one is one line a minute: a
detached supervisor's output file must not fill the disk."""

from __future__ import annotations

import asyncio
import errno

from stackvisor.logsetup import LoopErrors


class Said:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def error(self, message: str) -> None:
        self.lines.append(message)


def test_a_burst_of_one_error_is_one_line_a_minute_with_a_count() -> None:
    said, now = Said(), [0.0]
    errors = LoopErrors(said, clock=lambda: now[0])

    async def burst() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(errors)
        for _ in range(10_000):
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                }
            )
        loop.call_exception_handler({"message": "Exception in callback", "exception": ValueError("x")})
        now[0] = 61.0
        loop.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": OSError(errno.EMFILE, "Too many open files"),
            }
        )

    asyncio.run(burst())
    assert len(said.lines) == 3
    assert said.lines[0].startswith("event loop: socket.accept() out of system resource: ")
    assert "Exception in callback" in said.lines[1]
    assert "(9999 more like it since)" in said.lines[2]
