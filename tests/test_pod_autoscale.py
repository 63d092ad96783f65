"""The replica-count decision on a deterministic load with a fake clock: fast up, slow down, pending
replicas counted (no cascade), never past max, down to min when idle."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hybridgate.cloud._autoscale import ScalePolicy, Scaler


def test_burst_scales_up_at_once_to_what_the_load_needs_never_past_max() -> None:
    s = Scaler(ScalePolicy(0, 3, target_in_flight=4), now=0.0)
    d = s.decide(1.0, ready=0, pending=0, in_flight=0, waiting=9)  # ceil(9 / 4) = 3
    assert d.desired == 3
    d = s.decide(2.0, ready=0, pending=0, in_flight=0, waiting=40)
    assert d.desired == 3  # max_replicas


def test_pending_replicas_count_as_capacity_no_cascade() -> None:
    """While two replicas warm for minutes, the same load must not ask for 4, then 8."""
    s = Scaler(ScalePolicy(0, 16, target_in_flight=4), now=0.0)
    assert s.decide(0.0, ready=0, pending=0, in_flight=0, waiting=8).desired == 2
    for t in range(1, 600):  # ten minutes of cold start, the same load waiting every second
        assert s.decide(float(t), ready=0, pending=2, in_flight=0, waiting=8).desired == 2
    # more load while they warm asks only for the difference
    assert s.decide(600.0, ready=0, pending=2, in_flight=0, waiting=12).desired == 3


def test_a_dip_while_replicas_are_pending_does_not_cancel_them() -> None:
    s = Scaler(ScalePolicy(0, 4, target_in_flight=1, down_delay_s=10), now=0.0)
    assert s.decide(0.0, ready=0, pending=0, in_flight=0, waiting=3).desired == 3
    assert s.decide(1.0, ready=1, pending=2, in_flight=1, waiting=0).desired == 3


def test_slow_down_one_at_a_time_after_a_full_delay() -> None:
    s = Scaler(ScalePolicy(1, 4, target_in_flight=2, down_delay_s=60, idle_stop_s=300), now=0.0)
    assert s.decide(0.0, ready=4, pending=0, in_flight=8, waiting=0).desired == 4
    # the load drops to what one replica carries
    assert s.decide(10.0, ready=4, pending=0, in_flight=2, waiting=0).desired == 4
    assert s.decide(69.0, ready=4, pending=0, in_flight=2, waiting=0).desired == 4
    assert s.decide(70.0, ready=4, pending=0, in_flight=2, waiting=0).desired == 3
    assert s.decide(100.0, ready=3, pending=0, in_flight=2, waiting=0).desired == 3  # a full delay again
    assert s.decide(130.0, ready=3, pending=0, in_flight=2, waiting=0).desired == 2
    # a burst in between resets the clock: fast up
    assert s.decide(131.0, ready=2, pending=0, in_flight=8, waiting=0).desired == 4


def test_idle_goes_to_min_replicas_and_short_calls_between_decisions_count() -> None:
    s = Scaler(ScalePolicy(0, 2, idle_stop_s=30), now=0.0)
    assert s.decide(1.0, ready=1, pending=0, in_flight=1, waiting=0).desired == 1
    assert s.decide(2.0, ready=1, pending=0, in_flight=0, waiting=0).desired == 1
    # a call started and ended between two decisions at t=20: idle counts from then
    assert s.decide(35.0, ready=1, pending=0, in_flight=0, waiting=0, last_active=20.0).desired == 1
    assert s.decide(49.0, ready=1, pending=0, in_flight=0, waiting=0, last_active=20.0).desired == 1
    assert s.decide(50.0, ready=1, pending=0, in_flight=0, waiting=0, last_active=20.0).desired == 0


def test_min_replicas_are_kept_and_started() -> None:
    s = Scaler(ScalePolicy(2, 4, idle_stop_s=1), now=0.0)
    assert s.decide(0.0, ready=0, pending=0, in_flight=0, waiting=0).desired == 2
    assert s.decide(100.0, ready=2, pending=0, in_flight=0, waiting=0).desired == 2


def test_a_day_of_load_stays_within_bounds() -> None:
    """0 -> N -> 0 on a deterministic trace: never above max, never below min, ends at 0 when idle."""
    s = Scaler(ScalePolicy(0, 5, target_in_flight=4, down_delay_s=30, idle_stop_s=120), now=0.0)
    replicas, pending_until, seen = 0, [], []
    trace = [0] * 10 + [3] * 20 + [30] * 60 + [10] * 60 + [0] * 400
    for t, load in enumerate(trace):
        now = float(t)
        ready = sum(1 for u in pending_until if u <= now)
        pending = len(pending_until) - ready
        d = s.decide(
            now,
            ready=ready,
            pending=pending,
            in_flight=min(load, ready * 4),
            waiting=max(0, load - ready * 4),
        )
        if d.desired > len(pending_until):
            pending_until += [now + 45.0] * (d.desired - len(pending_until))  # 45 s cold start
        elif d.desired < len(pending_until):
            pending_until = sorted(pending_until)[: d.desired]
        replicas = len(pending_until)
        seen.append(replicas)
    assert max(seen) == 5 and min(seen) == 0 and seen[-1] == 0
    assert seen[15] == 1  # the first small load: one replica
    assert all(0 <= n <= 5 for n in seen)


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        ScalePolicy(3, 2)
    with pytest.raises(ValueError, match="target_in_flight"):
        ScalePolicy(0, 1, target_in_flight=0)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"options": {"image": "img"}}, "options.gpu_types: Field required"),
        ({"options": {"gpu_types": [], "image": "img"}}, "options.gpu_types"),
        (
            {"options": {"gpu_types": ["L4"], "image": "img", "min_replicas": 3, "max_replicas": 2}},
            "min_replicas (3)",
        ),
        ({"options": {"gpu_types": ["L4"], "image": "img", "provider": "aws"}}, "options.provider"),
        ({"options": {"gpu_types": ["L4"], "image": "img", "idle_stop": 5}}, "options.idle_stop"),
        ({"options": {"gpu_types": ["L4"], "image": "img"}, "price": {"per_hour": 1.0}}, "price_per_hour"),
    ],
)
def test_a_bad_pod_backend_is_refused_naming_the_field(config: dict[str, Any], message: str) -> None:
    from hybridgate.backends import build_backend
    from hybridgate.config import BackendConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        build_backend(BackendConfig(name="gpu", kind="pod", models={"m": "m"}, **config))
