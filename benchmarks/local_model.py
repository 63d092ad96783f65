"""The local model through the gateway vs the same model driven directly through llama-cpp-python.

One run loads the packaged Gemma 3 270M twice (here, directly, and in a `hybridgate serve` process), then
interleaves the two (so the machine's background load hits both alike) and prints:
generation tokens/s, non-streamed and streamed, and their gateway/direct ratio (the goal is >= 0.9);
time to first token at 1 and 4 concurrent clients; the gateway's resident memory. Not a timed test.

    python benchmarks/local_model.py                 # about 2 minutes on 2 cores
    python benchmarks/local_model.py --tokens 64 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai

from hybridgate.backends.llamacpp import DEFAULT_TEMPLATE, packaged_model_path
from hybridgate.testing.procs import Proc, start_gateway

MODEL = "gemma-3-270m"
# A base model keeps counting from here without an end-of-text token: a generation of any length.
COUNTING = "1, 2, 3, 4, 5,"
CANARY = [{"role": "user", "content": "In one word, can you provide me the capital of France?"}]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(gw: Proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = {x["name"]: x for x in httpx.get(gw.url + "/health/backends").json()["backends"]}["local"]
        if b["state"] == "ready":
            return
        if b["state"] == "failed":
            sys.exit(f"the local backend failed: {b['last_error']}")
        time.sleep(0.2)
    sys.exit(f"the local backend was not ready after {timeout}s")


def timed(fn: Callable[[], int]) -> float:
    """Tokens per second of one generation (`fn` returns its completion tokens)."""
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=96, help="tokens generated per request")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (medians are reported)")
    ap.add_argument("--n-threads", type=int, default=None, help="llama.cpp threads (default: its own choice)")
    args = ap.parse_args()

    from llama_cpp import Llama

    path = packaged_model_path()
    options: dict[str, Any] = {"model_path": str(path)}
    if args.n_threads:
        options["n_threads"] = args.n_threads
    print(f"model: {path}; load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    direct = Llama(model_path=str(path), n_ctx=4096, n_threads=args.n_threads, verbose=False)
    local = {"name": "local", "kind": "llamacpp", "models": {MODEL: MODEL}, "options": options}
    gw = start_gateway({"backends": [local]})
    try:
        wait_ready(gw)
        resident_ready = rss_mb(gw.popen.pid)
        c = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=300)
        n = args.tokens

        # The gateway evaluates every prompt from scratch (only its chat template's prefix stays cached, for
        # reproducible seeds); the direct runs do the same work, so the ratio measures the gateway alone.
        def direct_whole() -> int:
            direct.reset()
            r = direct.create_completion(COUNTING, max_tokens=n, temperature=0)
            return int(r["usage"]["completion_tokens"])

        def direct_stream() -> int:
            direct.reset()
            chunks = direct.create_completion(COUNTING, max_tokens=n, temperature=0, stream=True)
            return sum(1 for ch in chunks if ch["choices"][0]["text"])

        def gw_whole() -> int:
            r = c.completions.create(model=MODEL, prompt=COUNTING, max_tokens=n, temperature=0)
            assert r.choices[0].finish_reason == "length"
            return r.usage.completion_tokens

        def gw_stream() -> int:
            s = c.completions.create(
                model=MODEL, prompt=COUNTING, max_tokens=n, temperature=0, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            usage = [ch.usage for ch in s if ch.usage]
            return usage[-1].completion_tokens

        pairs = {"non-streamed": (direct_whole, gw_whole), "streamed": (direct_stream, gw_stream)}
        tps: dict[str, list[tuple[float, float]]] = {k: [] for k in pairs}
        for d, g in pairs.values():  # warm both
            d(), g()
        for r in range(args.rounds):
            for kind, (d, g) in pairs.items():
                # Alternate which goes first, so a load change on the machine favours neither.
                if r % 2:
                    gt, dt = timed(g), timed(d)
                else:
                    dt, gt = timed(d), timed(g)
                tps[kind].append((dt, gt))
            print(
                f"round {r + 1}: "
                + "; ".join(
                    f"{k} direct {v[-1][0]:.1f} gateway {v[-1][1]:.1f} tok/s" for k, v in tps.items()
                ),
                flush=True,
            )

        def ttft_once() -> float:
            t0 = time.perf_counter()
            s = c.chat.completions.create(
                model=MODEL, messages=CANARY, temperature=0, max_tokens=16, stream=True
            )
            for ch in s:
                if ch.choices and ch.choices[0].delta.content:
                    took = time.perf_counter() - t0
                    s.close()
                    return took
            raise RuntimeError("no content")

        def ttft_concurrent(k: int) -> list[float]:
            out: list[float] = []
            barrier = threading.Barrier(k)

            def one() -> None:
                barrier.wait()
                out.append(ttft_once())

            threads = [threading.Thread(target=one) for _ in range(k)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sorted(out)

        # Direct, in the state the gateway keeps: the template's fixed prefix evaluated, the question not.
        prompt = DEFAULT_TEMPLATE.render(CANARY)
        prefix = direct.tokenize(DEFAULT_TEMPLATE.prefix().encode(), add_bos=True, special=False)

        def direct_ttft() -> float:
            direct.reset()
            direct.eval(prefix)
            t0 = time.perf_counter()
            for ch in direct.create_completion(prompt, max_tokens=16, temperature=0, stream=True):
                if ch["choices"][0]["text"].strip():
                    return time.perf_counter() - t0
            raise RuntimeError("no content")

        one, d_one = [], []
        for _ in range(args.rounds * 2):
            one.append(ttft_once())
            d_one.append(direct_ttft())
        four = [ttft_concurrent(4) for _ in range(args.rounds)]
        resident_after = rss_mb(gw.popen.pid)
        loaded = [line for line in gw.log().splitlines() if "model ready in" in line]
    finally:
        gw.stop()

    print()
    print(f"Generation, {n} tokens a request, median of {args.rounds} interleaved rounds (tokens/s):")
    for kind, v in tps.items():
        ratio = statistics.median(g / d for d, g in v)
        d_med, g_med = statistics.median(d for d, _ in v), statistics.median(g for _, g in v)
        print(f"  {kind:13s} direct {d_med:5.1f}  gateway {g_med:5.1f}  ratio {ratio:.2f} (median of rounds)")
    print("Time to first token, chat canary, streamed (ms, median):")
    g1, d1 = statistics.median(one), statistics.median(d_one)
    print(f"  1 client:  gateway {g1 * 1000:.0f}, direct {d1 * 1000:.0f}")
    every = [x for r in four for x in r]
    first, last = statistics.median(r[0] for r in four), statistics.median(r[-1] for r in four)
    print(
        f"  4 clients: gateway {statistics.median(every) * 1000:.0f} "
        f"(first served {first * 1000:.0f}, last served {last * 1000:.0f}: one generation at a time, FIFO)"
    )
    print(
        f"Gateway resident memory: {resident_ready:.0f} MB when ready, {resident_after:.0f} MB after the run"
    )
    if loaded:
        print(f"  its log: {loaded[-1]}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
