"""Two `up -d` at once: one wins, the other says it lost; neither claims a supervisor that died."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
from conftest import SLEEP, end_stack

from stackvisor.config import load_config
from stackvisor.control import ops


def test_two_racing_detached_ups_one_wins_and_the_other_says_so(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(f'services:\n  a: {{command: "{SLEEP}"}}\n')
    config = load_config(path)
    results: list[ops.DetachResult] = []
    barrier = threading.Barrier(2)

    def up() -> None:
        barrier.wait()
        results.append(ops.detach(config, []))

    threads = [threading.Thread(target=up) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 2
        winners = [r for r in results if r.ok]
        losers = [r for r in results if not r.ok]
        assert len(winners) == 1 and len(losers) == 1, results
        assert losers[0].code == 1
        assert winners[0].pid == ops.supervisor_pid(config)
        assert psutil.pid_exists(winners[0].pid)
        assert losers[0].pid == winners[0].pid  # the loser names the supervisor that runs
        assert "won the race" in losers[0].message or "already running" in losers[0].message
    finally:
        end_stack(tmp_path)
    assert ops.supervisor_pid(config) is None
