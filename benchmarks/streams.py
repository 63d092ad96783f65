"""Thousands of concurrent long streams, side by side: the upstream direct, two bare proxies and hybridgate.

Real LLM traffic is long streams, each holding a connection for seconds. This drives N closed-loop
clients (each on its own keep-alive connection, a new stream as soon as the last ended) against every
target in one run, in front of the same paced upstream (`_paced_upstream.py`: 200 ms to the first token,
then 20 tokens/s, 40 events: about 2 s a stream), and measures, per target and N, over a window that
starts once every client has had its first answer:

- CPU per stream: user + system time of the target's process tree over the window / streams completed;
- time to first token p50/p99, and what the target adds to the direct upstream's in the same round;
- errors: non-200 answers, error events, dropped connections, connect failures, stalls;
- new upstream connections the target opened during the window (the upstream counts its accepts);
- resident memory per stream (the tree's RSS under load minus before it, / N) and what is left a few
  seconds after the load ended ("given back" when close to what it was before);
- the clients' first wait: from a client's connect to the first event of its first answer (clients arrive
  spread over `--ramp-s`), and how many waited more than 30 s.

Targets: `direct` (the upstream), `bare-aiohttp` and `bare-ours` (benchmarks/_bare_proxy.py on aiohttp and
on hybridgate's own client), `hybridgate` (every feature of the request path on, as in overhead.py: a key
with a budget and an rpm limit, the ledger, metrics, the request log), and with `--baseline-src DIR`
`baseline` (hybridgate from another checkout, configured the same). Rounds rotate the targets' order.

    python benchmarks/streams.py                                 # 100, 500, 1000 streams, 1 round
    python benchmarks/streams.py --clients 2000 --rounds 3 --baseline-src ../before
    python benchmarks/streams.py --smoke                         # a few seconds: what `make test` runs

The load generator runs in its own process; all of it shares the machine, so only ratios from one run mean
anything. The file-descriptor limit is raised to its hard limit and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from overhead import (  # noqa: E402
    MODEL,
    Server,
    Servers,
    machine,
    start_hybridgate,
    tree_cpu_s,
    tree_rss_mb,
)

from hybridgate.testing.procs import free_port  # noqa: E402

TARGETS = ("direct", "bare-aiohttp", "bare-ours", "hybridgate", "baseline")
DEFAULT_JSON = HERE / "results" / "streams.json"


def raise_nofile() -> tuple[int, int]:
    """Raise this process's (and so its children's) open-file limit to the hard limit; (soft, hard)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def start_upstream(servers: Servers, args: argparse.Namespace) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        str(HERE / "_paced_upstream.py"),
        "--port",
        str(port),
        "--ttft-ms",
        str(args.ttft_ms),
        "--tokens-per-s",
        str(args.tokens_per_s),
        "--events",
        str(args.events),
    ]
    srv = servers.start("direct", cmd, port, "/health")
    srv.url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return srv


def start_bare(servers: Servers, upstream: Server, client: str, name: str) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        str(HERE / "_bare_proxy.py"),
        "--port",
        str(port),
        "--upstream",
        f"http://127.0.0.1:{upstream.port}",
        "--client",
        client,
    ]
    srv = servers.start(name, cmd, port, "/health")
    srv.url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return srv


def upstream_stats(upstream: Server) -> dict[str, int] | None:
    """The upstream's counters; None when it is too busy to answer them in time (then not reported)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{upstream.port}/_stats", timeout=30) as r:
            return dict(orjson.loads(r.read()))
    except OSError:
        return None


def measure(srv: Server, upstream: Server, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """One cell: `clients` streams against `srv` through a window; the load generator's numbers and ours."""
    pid = srv.popen.pid
    rss_before = tree_rss_mb(pid) or 0.0
    cmd = [
        sys.executable,
        str(HERE / "_streams_load.py"),
        "--port",
        str(srv.port),
        "--model",
        MODEL,
        "--clients",
        str(clients),
        "--ramp-s",
        str(args.ramp_s),
        "--warmup-s",
        str(args.warmup_s),
        "--window-s",
        str(args.window_s),
        "--ready-timeout-s",
        str(args.ready_timeout_s),
    ]
    for k, v in srv.headers.items():
        cmd += ["--header", f"{k}: {v}"]
    cell: dict[str, Any] = {"target": srv.name, "clients": clients}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    cpu0 = up0 = None
    result: dict[str, Any] = {}
    t_ready = time.monotonic()
    for line in proc.stdout:
        line = line.strip()
        if line == "ready":
            cell["ready_after_s"] = round(time.monotonic() - t_ready, 2)
        elif line == "window_start":
            cpu0, up0 = tree_cpu_s(pid), upstream_stats(upstream)
            cell["load_avg"] = round(os.getloadavg()[0], 2)
        elif line == "window_end":
            cpu1, up1 = tree_cpu_s(pid), upstream_stats(upstream)
            rss_load = tree_rss_mb(pid) or 0.0
            if cpu0 is not None and cpu1 is not None:
                cell["cpu_s"] = cpu1 - cpu0
            if up0 is not None and up1 is not None:
                # less the connection that read these numbers at the end (each read is a new connection)
                cell["new_upstream_connections"] = up1["connections"] - up0["connections"] - 1
            cell["rss_before_mb"] = round(rss_before, 1)
            cell["rss_load_mb"] = round(rss_load, 1)
        elif line.startswith("{"):
            result = orjson.loads(line)
    proc.wait(timeout=60)
    if proc.returncode != 0 or not result:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")  # type: ignore[union-attr]
    time.sleep(args.settle_s)
    rss_after = tree_rss_mb(pid) or 0.0
    cell.update(result)
    ok = result["streams_ok"]
    cell["cpu_ms_per_stream"] = round(cell["cpu_s"] * 1000 / ok, 3) if ok and "cpu_s" in cell else None
    cell["streams_per_s"] = round(ok / args.window_s, 1)
    rss_load = cell.get("rss_load_mb", 0.0)
    cell["rss_kb_per_stream"] = round((rss_load - rss_before) * 1000 / clients, 1)
    cell["rss_after_mb"] = round(rss_after, 1)
    # How much of what the load took is still held settle_s after it ended (0: all given back).
    grown = rss_load - rss_before
    cell["rss_kept_fraction"] = round((rss_after - rss_before) / grown, 2) if grown > 1 else 0.0
    return cell


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


def summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (N, target): the median over rounds; added TTFT against the direct upstream of the same round."""
    direct = {(c["clients"], c["round"]): c for c in cells if c["target"] == "direct"}
    for c in cells:
        d = direct.get((c["clients"], c["round"]))
        for q in ("p50", "p99"):
            v, dv = c.get(f"ttft_{q}_s"), d.get(f"ttft_{q}_s") if d else None
            c[f"added_ttft_{q}_ms"] = None if v is None or dv is None else round((v - dv) * 1000, 1)
    rows = []
    keys = sorted({(c["clients"], c["target"]) for c in cells}, key=lambda k: (k[0], TARGETS.index(k[1])))
    for n, t in keys:
        group = [c for c in cells if c["clients"] == n and c["target"] == t]

        def med(field: str, group: list[dict[str, Any]] = group) -> float | None:
            vals = [c[field] for c in group if c.get(field) is not None]
            return round(statistics.median(vals), 3) if vals else None

        rows.append(
            {
                "clients": n,
                "target": t,
                "rounds": len(group),
                "streams_per_s": med("streams_per_s"),
                "cpu_ms_per_stream": med("cpu_ms_per_stream"),
                "ttft_p50_ms": _ms(med("ttft_p50_s")),
                "ttft_p99_ms": _ms(med("ttft_p99_s")),
                "added_ttft_p50_ms": med("added_ttft_p50_ms"),
                "added_ttft_p99_ms": med("added_ttft_p99_ms"),
                "errors": sum(c["errors_total"] for c in group),
                "first_waits_over_30s": sum(c["first_waits_over_30s"] for c in group),
                "first_wait_max_s": round(max((c["first_wait_max_s"] or 0) for c in group), 2),
                "new_upstream_connections": med("new_upstream_connections"),
                "rss_kb_per_stream": med("rss_kb_per_stream"),
                "rss_kept_fraction": med("rss_kept_fraction"),
                "rss_mb": "/".join(str(med(f)) for f in ("rss_before_mb", "rss_load_mb", "rss_after_mb")),
                "load_avg": med("load_avg"),
            }
        )
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, per N, for hybridgate (and baseline): its number over the yardstick's."""
    out = []
    by = {(r["clients"], r["target"]): r for r in rows}
    for n in sorted({r["clients"] for r in rows}):
        ours, aio = by.get((n, "bare-ours")), by.get((n, "bare-aiohttp"))
        for t in ("hybridgate", "baseline"):
            r = by.get((n, t))
            if r is None:
                continue

            def over(a: float | None, b: float | None) -> float | None:
                return round(a / b, 2) if a is not None and b else None

            out.append(
                {
                    "clients": n,
                    "target": t,
                    "cpu_per_stream_vs_bare_ours": over(
                        r["cpu_ms_per_stream"], ours and ours["cpu_ms_per_stream"]
                    ),
                    "added_p99_minus_bare_aiohttp_ms": (
                        None
                        if aio is None or r["added_ttft_p99_ms"] is None or aio["added_ttft_p99_ms"] is None
                        else round(r["added_ttft_p99_ms"] - aio["added_ttft_p99_ms"], 1)
                    ),
                    "rss_per_stream_vs_bare_ours": over(
                        r["rss_kb_per_stream"], ours and ours["rss_kb_per_stream"]
                    ),
                    "new_upstream_connections": r["new_upstream_connections"],
                    "new_upstream_connections_aiohttp": aio and aio["new_upstream_connections"],
                    "errors": r["errors"],
                }
            )
    return out


def print_table(rows: list[dict[str, Any]], rat: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    cols = [
        ("clients", "N"),
        ("target", "target"),
        ("streams_per_s", "streams/s"),
        ("cpu_ms_per_stream", "CPU ms/stream"),
        ("ttft_p50_ms", "TTFT p50"),
        ("ttft_p99_ms", "TTFT p99"),
        ("added_ttft_p50_ms", "+p50 ms"),
        ("added_ttft_p99_ms", "+p99 ms"),
        ("errors", "errors"),
        ("first_wait_max_s", "first wait max s"),
        ("new_upstream_connections", "new upstream conns"),
        ("rss_kb_per_stream", "RSS KB/stream"),
        ("rss_kept_fraction", "RSS kept"),
        ("rss_mb", "RSS MB before/load/after"),
        ("load_avg", "load"),
    ]
    print()
    print(
        f"machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; open files: {meta['nofile']}; "
        f"window {meta['args']['window_s']} s, {meta['args']['rounds']} round(s); upstream "
        f"{meta['args']['ttft_ms']:g} ms to first token, {meta['args']['tokens_per_s']:g} tokens/s, "
        f"{meta['args']['events']} events"
    )
    print("| " + " | ".join(h for _, h in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("" if r.get(k) is None else str(r[k]) for k, _ in cols) + " |")
    if rat:
        print()
        for x in rat:
            print(
                f"N={x['clients']} {x['target']}: CPU/stream {x['cpu_per_stream_vs_bare_ours']} x bare-ours; "
                f"+p99 TTFT minus bare-aiohttp's {x['added_p99_minus_bare_aiohttp_ms']} ms; "
                f"RSS/stream {x['rss_per_stream_vs_bare_ours']} x bare-ours; new upstream connections "
                f"{x['new_upstream_connections']} (aiohttp {x['new_upstream_connections_aiohttp']}); "
                f"errors {x['errors']}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few streams per target, seconds (for the tests)")
    ap.add_argument("--clients", default="100,500,1000", help="concurrent streams (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, order rotated (default: %(default)s)")
    ap.add_argument("--window-s", type=float, default=10.0, help="measured seconds (default: %(default)s)")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="after every client's first answer")
    ap.add_argument(
        "--ramp-s", type=float, default=2.5, help="clients arrive over this (default: %(default)s)"
    )
    ap.add_argument("--ready-timeout-s", type=float, default=90.0, help="most the ramp may take")
    ap.add_argument(
        "--settle-s",
        type=float,
        default=3.0,
        help="after a load, before memory left is read (default: %(default)s)",
    )
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--tokens-per-s", type=float, default=20.0)
    ap.add_argument("--events", type=int, default=40)
    ap.add_argument("--workers", type=int, default=1, help="hybridgate's (and baseline's) workers")
    ap.add_argument("--targets", default=",".join(TARGETS[:4]), help="subset (default: %(default)s)")
    ap.add_argument("--baseline-src", type=Path, help="also run hybridgate from this checkout, as 'baseline'")
    ap.add_argument("--json-file", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.clients, args.rounds, args.window_s, args.warmup_s, args.ramp_s = "8", 1, 1.0, 0.2, 0.1
        args.settle_s = 0.3
        args.ttft_ms, args.tokens_per_s, args.events = 20.0, 100.0, 12
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.baseline_src is not None and "baseline" not in wanted:
        wanted.append("baseline")
    unknown = set(wanted) - set(TARGETS)
    if unknown or ("baseline" in wanted and args.baseline_src is None):
        ap.error(f"unknown targets {sorted(unknown)}, or 'baseline' without --baseline-src")
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    nofile = raise_nofile()
    print(f"open-file limit: {nofile[0]} (hard {nofile[1]})", flush=True)
    if max(levels) * 2 + 100 > nofile[0]:
        print(f"warning: {max(levels)} streams need about {max(levels) * 2} descriptors", file=sys.stderr)
    meta: dict[str, Any] = {
        "machine": machine(),
        "nofile": nofile[0],
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    workdir = Path(tempfile.mkdtemp(prefix="hybridgate-streams-"))
    servers = Servers(workdir)
    cells: list[dict[str, Any]] = []
    done = False
    try:
        up = start_upstream(servers, args)
        started: dict[str, Server] = {"direct": up}
        if "bare-aiohttp" in wanted:
            started["bare-aiohttp"] = start_bare(servers, up, "aiohttp", "bare-aiohttp")
        if "bare-ours" in wanted:
            started["bare-ours"] = start_bare(servers, up, "hybridgate", "bare-ours")
        if "hybridgate" in wanted:
            started["hybridgate"] = start_hybridgate(servers, up, workdir, args.workers, "uvicorn")
        if "baseline" in wanted:
            started["baseline"] = start_hybridgate(
                servers, up, workdir, args.workers, "uvicorn", name="baseline", src=args.baseline_src
            )
        order = [t for t in TARGETS if t in started and (t in wanted or t == "direct")]
        print(f"servers up in {workdir}: {', '.join(order)}", flush=True)
        for n in levels:
            for r in range(args.rounds):
                k = r % len(order)
                for t in order[k:] + order[:k]:
                    cell = measure(started[t], up, n, args)
                    cell["round"] = r
                    cells.append(cell)
                    args.json_file.parent.mkdir(parents=True, exist_ok=True)
                    args.json_file.write_bytes(orjson.dumps({"meta": meta, "cells": cells}))  # so far
                    print(
                        f"N={n} round {r + 1} {t}: {cell['streams_ok']} streams, "
                        f"CPU {cell['cpu_ms_per_stream']} ms/stream, TTFT p99 {_ms(cell['ttft_p99_s'])} ms, "
                        f"errors {cell['errors_total']}, new upstream conns "
                        f"{cell.get('new_upstream_connections')}, load {cell.get('load_avg')}",
                        flush=True,
                    )
        done = True
    except KeyboardInterrupt:
        print("interrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        servers.stop_all()
        if done and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"server logs kept in {workdir}", file=sys.stderr)
    rows = summarise(cells)
    rat = ratios(rows)
    meta["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {"meta": meta, "cells": cells, "rows": rows, "ratios": rat}
    args.json_file.parent.mkdir(parents=True, exist_ok=True)
    args.json_file.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print_table(rows, rat, meta)
    print(f"\nwritten: {args.json_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
