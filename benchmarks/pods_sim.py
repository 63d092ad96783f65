"""A day of bursty traffic on cloud GPU pods, simulated: cost and waits of three scaling policies.

No cloud and no processes: a discrete-event simulation on a simulated clock, deterministic for a seed.
In the same run, on the same trace and the same cold starts:

- **hybridgate**: the REAL `Scaler.decide` of `hybridgate.cloud._autoscale`, fed the signals the pod pool
  (`backends/pod.py`) feeds it: replicas ready and on their way, calls in flight, calls waiting (the
  calls queued in the pool for a slot, a level, once a replica is ready; before that, the router's
  `demand()` calls since the last decision), and the last time a call started or ended. It decides every
  `poll_s` and at once when a call finds no free replica (the pool's `demand()` wakes its controller).
  Scaling down drains the least busy ready replicas, which stop (resumable) once their calls are done.
- **always-on**: `max_replicas` replicas up all day (no cold start ever).
- **skyserve**: a QPS autoscaler with SkyServe 0.14.1's defaults, as read in its source and written down
  in shared/research/skypilot-and-autoscaling.md section 2: target replicas = ceil(QPS over a 60 s window
  / target_qps_per_replica), the load balancer's request timestamps reach the controller every 20 s, a
  decision every 20 s (5 s while at zero replicas, and the first replica with no hysteresis: its "faster
  scale up" from zero), and any other change must persist for upscale_delay_seconds 300 or
  downscale_delay_seconds 1200. Pending replicas count toward the target (no cascade). target_qps_per_replica
  is derived as hybridgate's target_in_flight over the trace's mean service time (Little's law), so both
  autoscalers aim at the same load per replica.

The trace: a trickle of calls all day (less at night), plus bursts (sessions of minutes at a few calls
per second) mostly in working hours; each call needs a slot on a replica for a service time drawn from a
lognormal (median 4 s). Every start of a replica (launch or resume, for every policy) takes a cold start
drawn from a lognormal with a median of 5 minutes clipped to 1..16 minutes, from the measurements in the
research notes (section 2, "Cold start magnitudes"): under 1 min for a vLLM server with --enforce-eager
(Modal PR #1217), about 5 min on RunPod serverless (vLLM #44881), 966 s for an A100 vLLM workspace
including node provisioning and image pull (kaito #2325). A replica bills from the start of its cold
start to its stop, idle included.

Waits: from a call's arrival to the start of its service. Every policy lets calls wait as long as it
takes (a client retrying through SkyServe's 503s, hybridgate's bounded wait and fallbacks aside), and
the table counts the calls that waited past `--bound-s` (default 30 s, hybridgate's server.warming_wait_s:
what would have been a 503 or gone to a fallback backend).

    .venv/bin/python benchmarks/pods_sim.py                 # one day, three policies, a table
    .venv/bin/python benchmarks/pods_sim.py --json          # the same as JSON
    .venv/bin/python benchmarks/pods_sim.py --smoke         # two hours: what the test suite runs
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hybridgate.cloud._autoscale import ScalePolicy, Scaler

DAY_S = 86_400.0


# --- the trace ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Call:
    arrival: float
    service_s: float


def _trickle_qps(hour: float) -> float:
    h = hour % 24
    if 9 <= h < 19:
        return 0.01
    if 7 <= h < 9 or 19 <= h < 23:
        return 0.003
    return 0.0005


def make_trace(
    rng: random.Random, hours: float, start_hour: int = 0
) -> tuple[list[Call], list[tuple[float, float, float]]]:
    """Calls sorted by arrival, and the bursts (start, seconds, calls per second) that made most of them;
    the trace starts at `start_hour` of the day."""
    end = hours * 3600.0
    segments: list[tuple[float, float, float]] = []  # (start, end, rate)
    bursts: list[tuple[float, float, float]] = []
    for hour in range(math.ceil(hours)):
        h0 = hour * 3600.0
        h = (start_hour + hour) % 24
        segments.append((h0, min(end, h0 + 3600.0), _trickle_qps(h)))
        mean = 3.0 if 9 <= h < 19 else 0.6 if (7 <= h < 9 or 19 <= h < 23) else 0.1
        for _ in range(_poisson(rng, mean)):
            start = h0 + rng.uniform(0, 3600.0)
            length = min(3600.0, max(60.0, rng.lognormvariate(math.log(480.0), 0.7)))
            rate = min(4.0, max(0.1, rng.lognormvariate(math.log(1.0), 0.6)))
            if start < end:
                bursts.append((start, min(length, end - start), rate))
                segments.append((start, min(end, start + length), rate))
    calls: list[Call] = []
    for s, e, rate in segments:
        t = s
        while True:
            t += rng.expovariate(rate)
            if t >= e:
                break
            service = min(120.0, max(0.5, rng.lognormvariate(math.log(4.0), 0.7)))
            calls.append(Call(t, service))
    calls.sort(key=lambda c: c.arrival)
    return calls, sorted(bursts)


def _poisson(rng: random.Random, mean: float) -> int:
    n, p, limit = 0, 1.0, math.exp(-mean)
    while True:
        p *= rng.random()
        if p <= limit:
            return n
        n += 1


def cold_start_s(rng: random.Random) -> float:
    """Seconds from asking for a replica to its model answering: median 5 min, within 1..16 min."""
    return min(960.0, max(60.0, rng.lognormvariate(math.log(300.0), 0.6)))


# --- the cluster ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Replica:
    id: int
    state: str = "stopped"  # pending | ready | draining | stopped
    busy: int = 0
    billed_from: float | None = None
    billed_s: float = 0.0
    busy_slot_s: float = 0.0
    starts: int = 0


@dataclass
class Result:
    policy: str
    waits: list[float] = field(default_factory=list)
    unserved: int = 0
    gpu_s: float = 0.0
    busy_slot_s: float = 0.0
    cold_starts: int = 0
    max_up: int = 0


class Sim:
    """Calls, replicas with `slots` calls each, a FIFO queue, and a policy that asks for replicas."""

    def __init__(
        self, calls: list[Call], *, slots: int, max_replicas: int, cold_rng: random.Random, end: float
    ) -> None:
        self.calls, self.slots, self.max_replicas, self.end = calls, slots, max_replicas, end
        self.cold_rng = cold_rng
        self.replicas: list[Replica] = []
        self.queue: deque[int] = deque()
        self.events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.now = 0.0
        self.last_active = 0.0
        self.waits: list[float] = []
        self.on_wait: Callable[[bool], None] = lambda any_ready: None
        self.arrived: list[float] = []  # arrival times, for a QPS autoscaler

    def at(self, t: float, kind: str, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, payload))

    # replicas
    def active(self) -> list[Replica]:
        return [r for r in self.replicas if r.state != "stopped"]

    def launch(self) -> bool:
        if len(self.active()) >= self.max_replicas:
            return False
        r = next((r for r in self.replicas if r.state == "stopped"), None)  # resume a stopped one
        if r is None:
            r = Replica(len(self.replicas))
            self.replicas.append(r)
        r.state, r.billed_from, r.starts = "pending", self.now, r.starts + 1
        self.at(self.now + cold_start_s(self.cold_rng), "ready", r)
        return True

    def start_ready(self, n: int) -> None:
        for _ in range(n):
            r = Replica(len(self.replicas), state="ready", billed_from=0.0)
            self.replicas.append(r)

    def drain(self, r: Replica) -> None:
        if r.state == "pending":
            self._stop(r)  # cancelled before it was up: billed until now
        elif r.state == "ready":
            r.state = "draining"
            if r.busy == 0:
                self._stop(r)

    def _stop(self, r: Replica) -> None:
        assert r.billed_from is not None
        r.billed_s += self.now - r.billed_from
        r.billed_from, r.state = None, "stopped"

    # calls
    def _free(self) -> Replica | None:
        best = None
        for r in self.replicas:
            if r.state == "ready" and r.busy < self.slots and (best is None or r.busy < best.busy):
                best = r
        return best

    def _serve(self, i: int, r: Replica) -> None:
        c = self.calls[i]
        self.waits.append(self.now - c.arrival)
        r.busy += 1
        r.busy_slot_s += c.service_s
        self.last_active = self.now
        self.at(self.now + c.service_s, "end", r)

    def _dispatch(self) -> None:
        while self.queue:
            r = self._free()
            if r is None:
                return
            self._serve(self.queue.popleft(), r)

    def run(self, tick: Callable[[Sim], float], first_tick: float = 0.0) -> Result:
        for i, c in enumerate(self.calls):
            self.at(c.arrival, "arrive", i)
        self.at(first_tick, "tick")
        while self.events:
            t, _, kind, payload = heapq.heappop(self.events)
            if t > self.end:
                break
            self.now = t
            if kind == "arrive":
                self.arrived.append(t)
                r = self._free() if not self.queue else None
                if r is not None:
                    self._serve(payload, r)
                else:
                    self.queue.append(payload)
                    self.on_wait(any(x.state == "ready" for x in self.replicas))
            elif kind == "end":
                r = payload
                r.busy -= 1
                self.last_active = t
                if r.state == "draining" and r.busy == 0:
                    self._stop(r)
                self._dispatch()
            elif kind == "ready":
                r = payload
                if r.state == "pending":
                    r.state = "ready"
                    self.last_active = t
                    self._dispatch()
            elif kind == "tick":
                nxt = tick(self)
                if nxt > t:
                    self.at(nxt, "tick")
            elif kind == "wake":
                tick(self)
        self.now = self.end
        res = Result("")
        res.waits = self.waits
        res.unserved = len(self.queue)
        res.waits.extend(self.end - self.calls[i].arrival for i in self.queue)  # still waiting at the end
        for r in self.replicas:
            if r.billed_from is not None:
                r.billed_s += self.end - r.billed_from
            res.gpu_s += r.billed_s
            res.busy_slot_s += r.busy_slot_s
            res.cold_starts += r.starts
        return res


# --- the policies -------------------------------------------------------------------------------------
def run_hybridgate(sim: Sim, policy: ScalePolicy, poll_s: float, label: str = "hybridgate") -> Result:
    scaler = Scaler(policy, 0.0)
    state = {"up": 0}

    def on_wait(any_ready: bool) -> None:
        # A call that finds no free replica wakes the controller: the router's demand() when none is
        # ready, the pool's queue for a slot otherwise.
        sim.at(sim.now, "wake")

    def tick(s: Sim) -> float:
        ready = [r for r in s.replicas if r.state == "ready"]
        pending = [r for r in s.replicas if r.state == "pending"]
        # The pool counts the calls queued in it for a slot, and, while no replica is ready, the calls
        # that asked within queue_s (30 s); a call here waits until served, as a client retrying after
        # each 503 asks again, so every waiting call counts.
        waiting = len(s.queue)
        d = scaler.decide(
            s.now,
            ready=len(ready),
            pending=len(pending),
            in_flight=sum(r.busy for r in ready),
            waiting=waiting,
            last_active=s.last_active,
        )
        have = len(ready) + len(pending)
        if d.desired > have:
            for _ in range(d.desired - have):
                s.launch()
        elif d.desired < have and ready:
            for r in sorted(ready, key=lambda r: r.busy)[: have - d.desired]:
                s.drain(r)
        state["up"] = max(state["up"], len(s.active()))
        return s.now + poll_s

    sim.on_wait = on_wait
    res = sim.run(tick)
    res.policy, res.max_up = label, state["up"]
    return res


def run_always_on(sim: Sim, replicas: int) -> Result:
    sim.start_ready(replicas)
    res = sim.run(lambda s: math.inf)
    res.policy, res.max_up = f"always-on ({replicas})", replicas
    return res


# SkyServe 0.14.1 defaults (shared/research/skypilot-and-autoscaling.md section 2).
SKY_DECISION_S = 20.0
SKY_DECISION_FROM_ZERO_S = 5.0
SKY_SYNC_S = 20.0  # LB_CONTROLLER_SYNC_INTERVAL_SECONDS
SKY_QPS_WINDOW_S = 60.0
SKY_UPSCALE_DELAY_S = 300.0
SKY_DOWNSCALE_DELAY_S = 1200.0


def run_skyserve(sim: Sim, *, min_replicas: int, max_replicas: int, target_qps: float) -> Result:
    st = {"target": min_replicas, "up": 0, "down": 0, "max": 0}

    def tick(s: Sim) -> float:
        synced = math.floor(s.now / SKY_SYNC_S) * SKY_SYNC_S  # what the controller has heard of
        seen = [t for t in _window(s.arrived, synced - SKY_QPS_WINDOW_S, synced)]
        qps = len(seen) / SKY_QPS_WINDOW_S
        want = min(max_replicas, max(min_replicas, math.ceil(qps / target_qps)))
        interval = SKY_DECISION_S
        if st["target"] == 0:
            interval = SKY_DECISION_FROM_ZERO_S
            if want > 0:
                st["target"], st["up"], st["down"] = want, 0, 0
        elif want > st["target"]:
            st["up"], st["down"] = st["up"] + 1, 0
            if st["up"] * SKY_DECISION_S >= SKY_UPSCALE_DELAY_S:
                st["target"], st["up"] = want, 0
        elif want < st["target"]:
            st["down"], st["up"] = st["down"] + 1, 0
            if st["down"] * SKY_DECISION_S >= SKY_DOWNSCALE_DELAY_S:
                st["target"], st["down"] = want, 0
        else:
            st["up"] = st["down"] = 0
        alive = [r for r in s.replicas if r.state in ("pending", "ready")]
        if len(alive) < st["target"]:
            for _ in range(st["target"] - len(alive)):
                s.launch()
        elif len(alive) > st["target"]:
            # pending ones first, then the least busy
            for r in sorted(alive, key=lambda r: (r.state != "pending", r.busy))[: len(alive) - st["target"]]:
                s.drain(r)
        st["max"] = max(st["max"], len(s.active()))
        return s.now + interval

    res = sim.run(tick)
    res.policy, res.max_up = "skyserve (QPS)", st["max"]
    return res


def _window(times: list[float], lo: float, hi: float) -> list[float]:
    return times[bisect.bisect_right(times, lo) : bisect.bisect_right(times, hi)]


# --- the report ----------------------------------------------------------------------------------------
def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def summarise(res: Result, *, slots: int, price: float, bound_s: float) -> dict[str, Any]:
    w = sorted(res.waits)
    return {
        "policy": res.policy,
        "calls": len(w),
        "gpu_hours": round(res.gpu_s / 3600.0, 2),
        "cost_usd": round(res.gpu_s / 3600.0 * price, 2),
        "utilisation": round(res.busy_slot_s / (res.gpu_s * slots), 4) if res.gpu_s else 0.0,
        "cold_starts": res.cold_starts,
        "max_replicas_up": res.max_up,
        "wait_p50_s": round(_pct(w, 0.50), 1),
        "wait_p95_s": round(_pct(w, 0.95), 1),
        "wait_p99_s": round(_pct(w, 0.99), 1),
        "wait_max_s": round(w[-1] if w else 0.0, 1),
        "waited_past_bound": sum(1 for x in w if x > bound_s),
        "waited_past_bound_pct": round(100.0 * sum(1 for x in w if x > bound_s) / len(w), 2) if w else 0.0,
        "unserved_at_end": res.unserved,
    }


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    calls, bursts = make_trace(rng, args.hours, args.start_hour)
    if not calls:
        raise SystemExit("the trace has no calls: use more --hours")
    end = args.hours * 3600.0
    mean_service = sum(c.service_s for c in calls) / len(calls)
    target_qps = args.target_in_flight / mean_service
    policy = ScalePolicy(
        args.min_replicas, args.max_replicas, args.target_in_flight, args.down_delay_s, args.idle_stop_s
    )

    def sim() -> Sim:  # every policy sees the same calls and the same sequence of cold starts
        return Sim(
            calls,
            slots=args.slots,
            max_replicas=args.max_replicas,
            cold_rng=random.Random(args.seed * 7919 + 1),
            end=end,
        )

    t0 = time.perf_counter()
    results = [
        run_hybridgate(sim(), policy, args.poll_s),
        run_hybridgate(
            sim(),
            ScalePolicy(
                max(1, args.min_replicas),
                args.max_replicas,
                args.target_in_flight,
                args.down_delay_s,
                args.idle_stop_s,
            ),
            args.poll_s,
            label="hybridgate (min 1)",
        ),
        run_always_on(sim(), args.max_replicas),
        run_skyserve(
            sim(), min_replicas=args.min_replicas, max_replicas=args.max_replicas, target_qps=target_qps
        ),
    ]
    rows = [summarise(r, slots=args.slots, price=args.price_per_hour, bound_s=args.bound_s) for r in results]
    probe = random.Random(12345)
    sample = sorted(cold_start_s(probe) for _ in range(10_000))
    return {
        "meta": {
            "seed": args.seed,
            "hours": args.hours,
            "start_hour": args.start_hour,
            "calls": len(calls),
            "bursts": len(bursts),
            "mean_service_s": round(mean_service, 2),
            "slots_per_replica": args.slots,
            "max_replicas": args.max_replicas,
            "price_per_gpu_hour": args.price_per_hour,
            "bound_s": args.bound_s,
            "hybridgate": {
                "min_replicas": args.min_replicas,
                "target_in_flight": args.target_in_flight,
                "down_delay_s": args.down_delay_s,
                "idle_stop_s": args.idle_stop_s,
                "poll_s": args.poll_s,
            },
            "skyserve": {
                "target_qps_per_replica": round(target_qps, 3),
                "upscale_delay_s": SKY_UPSCALE_DELAY_S,
                "downscale_delay_s": SKY_DOWNSCALE_DELAY_S,
                "decision_interval_s": SKY_DECISION_S,
                "qps_window_s": SKY_QPS_WINDOW_S,
                "lb_sync_s": SKY_SYNC_S,
            },
            "cold_start_s": {
                "p10": round(_pct(sample, 0.10)),
                "p50": round(_pct(sample, 0.50)),
                "p90": round(_pct(sample, 0.90)),
                "min": 60,
                "max": 960,
            },
            "sim_seconds": round(time.perf_counter() - t0, 2),
        },
        "rows": rows,
    }


def table(out: dict[str, Any]) -> str:
    m = out["meta"]
    cols = [
        ("policy", "policy", "{}"),
        ("GPU-h", "gpu_hours", "{:.1f}"),
        ("cost $", "cost_usd", "{:.2f}"),
        ("util", "utilisation", "{:.0%}"),
        ("starts", "cold_starts", "{}"),
        ("max up", "max_replicas_up", "{}"),
        ("p50 wait", "wait_p50_s", "{:.1f}s"),
        ("p95 wait", "wait_p95_s", "{:.1f}s"),
        ("p99 wait", "wait_p99_s", "{:.1f}s"),
        ("max wait", "wait_max_s", "{:.0f}s"),
        (f"> {m['bound_s']:g}s", "waited_past_bound", "{}"),
        ("%", "waited_past_bound_pct", "{:.2f}"),
    ]
    lines = [
        "| " + " | ".join(c[0] for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in out["rows"]:
        lines.append("| " + " | ".join(fmt.format(r[key]) for _, key, fmt in cols) + " |")
    cs = m["cold_start_s"]
    head = (
        f"{m['hours']:g} h from {m['start_hour']}:00, seed {m['seed']}: {m['calls']} calls ({m['bursts']} bursts), mean service "
        f"{m['mean_service_s']} s, {m['slots_per_replica']} slots per replica, max {m['max_replicas']} replicas, "
        f"${m['price_per_gpu_hour']:g}/GPU-h; cold start p10/p50/p90 {cs['p10']}/{cs['p50']}/{cs['p90']} s "
        f"(1..16 min); SkyServe target {m['skyserve']['target_qps_per_replica']} QPS per replica; "
        f"simulated in {m['sim_seconds']} s"
    )
    return head + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hours", type=float, default=24.0, help="length of the trace (default a day)")
    ap.add_argument("--start-hour", type=int, default=0, help="hour of the day the trace starts at")
    ap.add_argument("--smoke", action="store_true", help="two hours of working-day traffic (the test suite)")
    ap.add_argument("--slots", type=int, default=8, help="calls one replica serves at once")
    ap.add_argument("--min-replicas", type=int, default=0)
    ap.add_argument("--max-replicas", type=int, default=4)
    ap.add_argument("--target-in-flight", type=int, default=4, help="hybridgate's (its default)")
    ap.add_argument("--down-delay-s", type=float, default=120.0, help="hybridgate's (its default)")
    ap.add_argument("--idle-stop-s", type=float, default=300.0, help="hybridgate's (its default)")
    ap.add_argument("--poll-s", type=float, default=5.0, help="hybridgate's controller period (its default)")
    ap.add_argument("--price-per-hour", type=float, default=2.0, help="USD per GPU-hour (illustrative)")
    ap.add_argument("--bound-s", type=float, default=30.0, help="count calls that waited longer than this")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    if args.smoke:
        args.hours, args.start_hour = 2.0, 10
    if args.hours <= 0 or args.slots < 1 or args.bound_s < 0 or args.price_per_hour < 0:
        ap.error("--hours and --slots must be positive, --bound-s and --price-per-hour not negative")
    try:
        ScalePolicy(args.min_replicas, args.max_replicas, args.target_in_flight)
    except ValueError as e:
        ap.error(str(e))
    out = simulate(args)
    print(json.dumps(out, indent=2) if args.json else table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
