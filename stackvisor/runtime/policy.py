"""Pure restart and health decisions, driven by an explicit clock.

Nothing here spawns, sleeps or reads the time: callers pass `now` (from
`time.monotonic()` in the runtime, a fake clock in tests) and carry out what the
functions decide. That keeps "what happens when a service crashes five times" a
ten-line unit test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from stackvisor.config.schema import Backoff, RestartPolicy


def backoff_delay(attempt: int, backoff: Backoff) -> float:
    """Delay before restart number `attempt` (1-based): initial, doubling, capped."""
    if attempt < 1:
        return 0.0
    return min(backoff.max, backoff.initial * backoff.factor ** (attempt - 1))


class Verdict(StrEnum):
    RESTART = "restart"
    COMPLETED = "completed"
    EXITED = "exited"
    FAILED = "failed"


@dataclass(frozen=True)
class ExitDecision:
    verdict: Verdict
    delay: float = 0.0
    reason: str = ""


@dataclass
class RestartTracker:
    """How many restarts in a row a service has used; reset once it stays up."""

    restarts: int = 0
    started_at: float | None = None

    def started(self, now: float) -> None:
        self.started_at = now

    def decide(
        self,
        *,
        policy: RestartPolicy,
        exit_code: int | None,
        unhealthy: bool,
        max_restarts: int,
        backoff: Backoff,
        now: float,
    ) -> ExitDecision:
        """What to do after the process ended (or was found unhealthy and stopped).

        `exit_code` is the code, or -N for a signal N. A process that stayed up
        for `backoff.reset_after` earns a fresh restart budget, like supervisord's
        startsecs, and is restarted at once: a crash loop is throttled, a crash once a day
        is not.

        As in Compose, `always` and `unless-stopped` never give up (the backoff stays
        capped at `backoff.max`); `on-failure` gives up after `max_restarts` in a row,
        and `max_restarts: 0` means never.
        """
        stable = self.started_at is not None and now - self.started_at >= backoff.reset_after
        if stable:
            self.restarts = 0
        failed = unhealthy or exit_code != 0
        if policy is RestartPolicy.NO or (policy is RestartPolicy.ON_FAILURE and not failed):
            if failed:
                reason = "unhealthy" if unhealthy else f"exited with code {exit_code}"
                return ExitDecision(Verdict.EXITED, reason=reason)
            return ExitDecision(Verdict.COMPLETED, reason="exited with code 0")
        limited = policy is RestartPolicy.ON_FAILURE and max_restarts > 0
        if limited and self.restarts >= max_restarts:
            what = "unhealthy" if unhealthy else f"exited with code {exit_code}"
            return ExitDecision(Verdict.FAILED, reason=f"{what}; gave up after {self.restarts} restarts")
        self.restarts += 1
        # The backoff is for crash loops: a service that had run stably comes back at once.
        delay = 0.0 if stable else backoff_delay(self.restarts, backoff)
        what = "unhealthy" if unhealthy else f"exited with code {exit_code}"
        return ExitDecision(Verdict.RESTART, delay=delay, reason=what)


class Health(StrEnum):
    """A service's health as its checks say: `starting` until the first verdict."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass
class HealthTracker:
    """Compose's healthcheck semantics over a stream of probe results.

    Failures inside `start_period` do not count (but a success there already
    makes the service healthy); after it, `retries` failures in a row make the
    service unhealthy. Before its first success a service is probed every
    `start_interval`, much faster than `interval`; those failures count at most
    once per `interval`, so fast probing speeds up start-up without making a
    slow starter unhealthy sooner.
    """

    retries: int
    start_period: float
    started_at: float
    interval: float = 0.0
    healthy: bool | None = None
    failures: int = 0
    _counted_at: float | None = None

    def record(self, ok: bool, now: float) -> Health | None:
        """The verdict that changed with this probe result, or None when none did."""
        if ok:
            self.failures = 0
            if self.healthy is not True:
                self.healthy = True
                return Health.HEALTHY
            return None
        if now - self.started_at < self.start_period:
            return None
        if self.healthy is None:
            since = self._counted_at if self._counted_at is not None else self.started_at
            if now - since < self.interval:
                return None
            self._counted_at = now
        self.failures += 1
        if self.failures >= self.retries and self.healthy is not False:
            self.healthy = False
            return Health.UNHEALTHY
        return None
