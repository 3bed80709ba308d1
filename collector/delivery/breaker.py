"""A circuit breaker per endpoint: stop hammering a dead receiver, probe it now and then.

closed --(threshold consecutive failures)--> open --(cooldown elapsed)--> half-open
half-open --(probe succeeds)--> closed; half-open --(probe fails)--> open, cooldown doubled
"""

from __future__ import annotations

from typing import Literal

import msgspec

State = Literal["closed", "open", "half_open"]


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When a breaker opens and how long it stays open."""

    threshold: int = 5  # consecutive failures that open the breaker
    cooldown: float = 2.0  # seconds open before the first probe
    max_cooldown: float = 60.0  # cap on the doubling cooldown
    probe_wait: float = 1.0  # how long others wait while a probe is in flight


class Breaker:
    """The breaker of one endpoint; the caller passes the time in."""

    __slots__ = ("_cooldown", "_failures", "_policy", "_probing", "opens_at", "state")

    def __init__(self, policy: BreakerPolicy) -> None:
        self._policy = policy
        self._failures = 0
        self._cooldown = policy.cooldown
        self._probing = False
        self.state: State = "closed"
        self.opens_at = 0.0  # when an open breaker lets a probe through

    def allow(self, now: float) -> bool:
        """Whether a request may go now; in half-open state, only one probe at a time."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if now < self.opens_at:
                return False
            self.state = "half_open"
        if self._probing:
            return False
        self._probing = True
        return True

    def retry_time(self, now: float) -> float:
        """When a request refused by `allow` should come back."""
        if self.state == "open":
            return max(self.opens_at, now)
        return now + self._policy.probe_wait

    def succeeded(self) -> None:
        """Record a response that shows the endpoint is alive."""
        self._failures = 0
        self._probing = False
        self._cooldown = self._policy.cooldown
        self.state = "closed"

    def failed(self, now: float) -> None:
        """Record a connection failure, timeout or server error."""
        self._failures += 1
        if self.state == "half_open":
            self._probing = False
            self._cooldown = min(self._cooldown * 2, self._policy.max_cooldown)
            self._open(now)
        elif self.state == "closed" and self._failures >= self._policy.threshold:
            self._open(now)

    def released(self) -> None:
        """Record that a probe ended without telling anything (cancelled, refused)."""
        self._probing = False

    @property
    def is_closed(self) -> bool:
        """True when requests flow freely."""
        return self.state == "closed"

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opens_at = now + self._cooldown
