"""The replica-count decision of a pod pool: a pure function of the pool's own signals and a clock.

Signals: requests in flight on the ready replicas, requests that found no replica able to take them
(`waiting`), and replicas already on their way (`pending`: provisioning or warming).

Rules (the failure modes of the autoscalers in shared/research/skypilot-and-autoscaling.md in mind):
- **Fast up.** The moment the load needs more replicas than are ready *plus pending*, ask for the
  difference. Pending replicas count as capacity already on its way, so a burst that arrives while a pod
  warms does not ask again (no 2 -> 4 -> 8 cascade while cold starts run for minutes).
- **Slow down.** Fewer replicas are wanted only after the load has needed fewer for `down_delay_s` without
  a break, and then one replica at a time; to `min_replicas` (possibly 0) once nothing has been in flight
  or waiting for `idle_stop_s`.
- Never below `min_replicas` nor above `max_replicas`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    min_replicas: int = 0
    max_replicas: int = 1
    # Requests in flight one replica is meant to carry; above it on every replica, add one.
    target_in_flight: int = 4
    down_delay_s: float = 120.0
    idle_stop_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                f"replicas: need 0 <= min_replicas ({self.min_replicas}) <= max_replicas ({self.max_replicas}), "
                "and max_replicas >= 1"
            )
        if self.target_in_flight < 1:
            raise ValueError("target_in_flight must be at least 1")


@dataclass(slots=True)
class Decision:
    desired: int
    reason: str


class Scaler:
    """Remembers the two clocks the rules need (since when the load is low; since when it is idle)."""

    def __init__(self, policy: ScalePolicy, now: float) -> None:
        self.policy = policy
        self._low_since: float | None = None
        self._idle_since: float | None = now

    def decide(
        self,
        now: float,
        *,
        ready: int,
        pending: int,
        in_flight: int,
        waiting: int,
        last_active: float | None = None,
    ) -> Decision:
        """`last_active`: when a call last started or ended (or a replica became ready): calls that come
        and go between two decisions still count as activity."""
        p = self.policy
        load = in_flight + waiting
        have = ready + pending
        needed = min(p.max_replicas, max(p.min_replicas, math.ceil(load / p.target_in_flight)))
        if load:
            self._idle_since = None
        else:
            if self._idle_since is None:
                self._idle_since = now
            if last_active is not None and last_active > self._idle_since:
                self._idle_since = last_active
        if needed > have:
            self._low_since = None
            return Decision(
                needed, f"load {load} needs {needed} replicas; {ready} ready, {pending} on the way"
            )
        if needed == have or (needed < have and pending):
            # Equal; or fewer wanted while some are still coming: never cancel capacity that was asked for
            # a moment ago on a dip, wait until it has arrived.
            self._low_since = None if needed == have else self._low_since
            return Decision(have, "steady")
        # needed < have: slow down
        if self._idle_since is not None and now - self._idle_since >= p.idle_stop_s:
            return Decision(
                p.min_replicas, f"idle for {now - self._idle_since:.0f}s (idle_stop_s {p.idle_stop_s:g})"
            )
        if self._low_since is None:
            self._low_since = now
        if load and now - self._low_since >= p.down_delay_s:
            self._low_since = now  # the next step down waits a full delay again
            return Decision(max(needed, have - 1), f"load {load} needed {needed} for {p.down_delay_s:g}s")
        return Decision(have, "steady (waiting before scaling down)")


__all__ = ["Decision", "ScalePolicy", "Scaler"]
