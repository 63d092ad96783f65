"""The training API through the official tinker SDK vs the same torch+peft loop run directly.

For each base model (the tiny offline Llama, and Gemma 3 270M from the packaged GGUF), in one run:

- direct: the engine that the gateway's worker runs (`hybridgate.training._engine.Engine`), called in this
  process: forward_backward + optim_step on a fixed batch, then sampling;
- API: a `hybridgate serve` process, driven by the official `tinker` SDK on loopback: the same batch,
  steps and sampling, with protobuf, futures, long-polls and the database in between.

Both are loaded at once and measured alternately, step by step, so the machine's background load hits
both alike; only one of them computes at any moment.

Printed: seconds per training step and sampled tokens per second, each side's median, and the ratio
API/direct (step: direct time / API time; sampling: API tokens/s / direct tokens/s). The goal: >= 0.9.
Steps are timed two ways: one at a time (the loop waits for each step's results before it submits the
next: every step pays the API's round trips), and "pipelined", in blocks of `--pipelined-steps`, where
the API side submits step i+1 before it reads step i's results, as Tinker's documentation advises for
training loops (its clock-cycles example); the worker then has the next step queued when one ends.

    python benchmarks/training.py                         # tiny and gemma
    python benchmarks/training.py --models tiny --steps 10
    python benchmarks/training.py --models tiny --baseline-src ../other-checkout   # before/after

With `--baseline-src DIR`, a third side runs a gateway from another checkout's `src` (same config, same
SDK, same alternation), so a change's before and after come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TINKER_TELEMETRY", "0")

TEXTS = [
    "The gateway routes each request to a healthy backend and records what it cost.",
    "A researcher fine-tunes a small model on a laptop and serves the adapter.",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
]


def _datums(tok: Any, repeat: int) -> list[dict[str, Any]]:
    out = []
    for text in TEXTS * repeat:
        ids = tok.encode(text)
        out.append({"tokens": ids[:-1], "targets": ids[1:], "weights": [1.0] * (len(ids) - 1)})
    return out


class Direct:
    """The engine the gateway's worker runs, called in this process."""

    def __init__(self, name: str, path: str, args: argparse.Namespace, data_dir: Path, cache: str) -> None:
        from hybridgate.training._checkpoints import CheckpointFiles
        from hybridgate.training._engine import Engine

        self.eng = Engine(name, path, "cpu", CheckpointFiles(data_dir), args.threads, cache)
        lora = {"rank": args.rank, "train_attn": True, "train_mlp": True, "train_unembed": False}
        self.eng.create("run", lora, 0)
        self.data = _datums(self.eng.tok, args.repeat)
        self.prompt = self.data[0]["tokens"][:8]
        self.params = {"max_tokens": args.sample_tokens, "temperature": 1.0, "seed": 1, "stop": []}

    def step(self) -> None:
        self.eng.forward_backward("run", self.data, False)
        self.eng.optim_step("run", {"learning_rate": 1e-4})

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def sample(self) -> int:
        return int(self.eng.sample("run", self.prompt, 1, self.params, False)["sampled_tokens"])


class ViaAPI:
    """A `hybridgate serve` process on loopback, driven by the official tinker SDK."""

    def __init__(
        self, name: str, path: str, args: argparse.Namespace, work: Path, cache: str, src: str | None = None
    ) -> None:
        import subprocess

        import tinker
        from tinker import types

        from hybridgate.testing.procs import start_gateway, write_config

        self.types = types
        cfg = {
            "database": f"sqlite:///{work / 'hybridgate.db'}",
            "backends": [
                {"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}}
            ],
            "training": {
                "device": "cpu",
                "threads": args.threads,
                "data_dir": str(work / "training"),
                "cache_dir": cache,
                "models": {name: path},
            },
        }
        write_config(cfg, work)
        cmd = [sys.executable, "-m", "hybridgate", "keys", "create", "--name", "bench", "--tinker"]
        cmd += ["--config", str(work / "hybridgate.yaml"), "--output", "json"]
        env = None
        if src is not None:
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve() / "src")}
        key = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout)[
            "key"
        ]
        self.gw = start_gateway(work / "hybridgate.yaml", workdir=work, timeout=120, env=env)
        self.sc = tinker.ServiceClient(base_url=self.gw.url + "/tinker", api_key=key)
        self.tc = self.sc.create_lora_training_client(
            base_model=name, rank=args.rank, seed=0, train_unembed=False
        ).result()
        tok = self.tc.get_tokenizer()
        self.batch = [
            types.Datum(
                model_input=types.ModelInput.from_ints(d["tokens"]),
                loss_fn_inputs={"target_tokens": d["targets"], "weights": d["weights"]},
            )
            for d in _datums(tok, args.repeat)
        ]
        self.samp = self.tc.save_weights_and_get_sampling_client().result()
        self.prompt = types.ModelInput.from_ints(self.batch[0].model_input.to_ints()[:8])
        self.params = types.SamplingParams(max_tokens=args.sample_tokens, temperature=1.0, seed=1, stop=[])

    def step(self) -> None:
        fb = self.tc.forward_backward(self.batch, "cross_entropy")
        opt = self.tc.optim_step(self.types.AdamParams(learning_rate=1e-4))
        fb.result()
        opt.result()

    def steps(self, n: int) -> None:
        """n steps pipelined as Tinker's docs advise: step i+1 is submitted before step i's results are
        read, so the worker has the next step queued when one ends (the order of updates is the same)."""
        prev = None
        for _ in range(n):
            fb = self.tc.forward_backward(self.batch, "cross_entropy")
            opt = self.tc.optim_step(self.types.AdamParams(learning_rate=1e-4))
            if prev is not None:
                prev[0].result()
                prev[1].result()
            prev = (fb, opt)
        if prev is not None:
            prev[0].result()
            prev[1].result()

    def sample(self) -> int:
        return len(self.samp.sample(self.prompt, 1, self.params).result().sequences[0].tokens)

    def cpu_s(self) -> float:
        """CPU seconds the gateway process itself has used (its workers, which compute, not counted)."""
        fields = Path(f"/proc/{self.gw.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.sc.close("success")
        self.gw.stop()


def measure(sides: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Steps and samples, alternating between the sides so the machine's background load hits both."""
    steps: dict[str, list[float]] = {k: [] for k in sides}
    tps: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    cpu0 = {k: side.cpu_s() for k, side in sides.items() if hasattr(side, "cpu_s")}
    for i in range(args.warmup + args.steps):
        for k in names[i % len(names) :] + names[: i % len(names)]:  # rotated: none always follows another
            side = sides[k]
            t0 = time.perf_counter()
            side.step()
            if i >= args.warmup:
                steps[k].append(time.perf_counter() - t0)
    gateway_ms = {k: 1000 * (sides[k].cpu_s() - c) / (args.warmup + args.steps) for k, c in cpu0.items()}
    piped: dict[str, list[float]] = {k: [] for k in sides}
    for i in range(args.pipelined_blocks):
        for k in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            sides[k].steps(args.pipelined_steps)
            piped[k].append((time.perf_counter() - t0) / args.pipelined_steps)
    for i in range(args.warmup + args.samples):
        for k in names[i % len(names) :] + names[: i % len(names)]:
            side = sides[k]
            t0 = time.perf_counter()
            n = side.sample()
            if i >= args.warmup:
                tps[k].append(n / (time.perf_counter() - t0))
    return {
        k: {
            "step_s": statistics.median(steps[k]),
            "piped_step_s": statistics.median(piped[k]) if piped[k] else float("nan"),
            "sample_tps": statistics.median(tps[k]),
            "gateway_cpu_ms_per_step": gateway_ms.get(k, float("nan")),
        }
        for k in sides
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,gemma", help="comma-separated: tiny, gemma")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument(
        "--pipelined-blocks",
        type=int,
        default=3,
        help="blocks of --pipelined-steps steps per side, the API's pipelined (0: skip)",
    )
    ap.add_argument("--pipelined-steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="the batch is the 4 texts this many times")
    ap.add_argument("--sample-tokens", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "hybridgate" / "training-base"))
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--baseline-src", help="another checkout: its gateway runs as a third side, 'baseline'")
    args = ap.parse_args()

    from hybridgate.training.tiny import make_tiny_model

    results = {}
    with tempfile.TemporaryDirectory(prefix="hybridgate-bench-train-") as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            if name == "tiny":
                path = str(make_tiny_model(root / "tiny-model", hidden=256, layers=4))
            elif name == "gemma":
                from hybridgate.backends.llamacpp import packaged_model_path

                path = str(packaged_model_path())
            else:
                sys.exit(f"unknown model {name!r}: tiny or gemma")
            print(f"[{name}] loading, in this process and in a gateway ...", file=sys.stderr, flush=True)
            work = root / f"{name}-gw"
            work.mkdir()
            direct = Direct(name, path, args, root / f"{name}-direct", args.cache_dir)
            sides: dict[str, Any] = {"direct": direct, "api": ViaAPI(name, path, args, work, args.cache_dir)}
            if args.baseline_src:
                (root / f"{name}-base").mkdir()
                sides["baseline"] = ViaAPI(
                    name, path, args, root / f"{name}-base", args.cache_dir, args.baseline_src
                )
            try:
                m = measure(sides, args)
            finally:
                for k in ("api", "baseline"):
                    if k in sides:
                        sides[k].close()
            d, a = m["direct"], m["api"]
            d["tokens"] = sum(len(x["tokens"]) for x in direct.data)
            del direct
            results[name] = {
                "batch_tokens": d["tokens"],
                "direct_step_s": round(d["step_s"], 4),
                "api_step_s": round(a["step_s"], 4),
                "step_ratio": round(d["step_s"] / a["step_s"], 3),
                "api_gateway_cpu_ms_per_step": round(a["gateway_cpu_ms_per_step"], 2),
                "direct_piped_step_s": round(d["piped_step_s"], 4),
                "api_piped_step_s": round(a["piped_step_s"], 4),
                "piped_step_ratio": round(d["piped_step_s"] / a["piped_step_s"], 3),
                "direct_sample_tps": round(d["sample_tps"], 1),
                "api_sample_tps": round(a["sample_tps"], 1),
                "sample_ratio": round(a["sample_tps"] / d["sample_tps"], 3),
            }
            if "baseline" in m:
                b = m["baseline"]
                results[name] |= {
                    "baseline_step_s": round(b["step_s"], 4),
                    "baseline_step_ratio": round(d["step_s"] / b["step_s"], 3),
                    "baseline_piped_step_ratio": round(d["piped_step_s"] / b["piped_step_s"], 3),
                    "baseline_gateway_cpu_ms_per_step": round(b["gateway_cpu_ms_per_step"], 2),
                    "baseline_sample_tps": round(b["sample_tps"], 1),
                    "baseline_sample_ratio": round(b["sample_tps"] / d["sample_tps"], 3),
                }
    print(
        f"{'model':8} {'tokens':>6} {'step direct':>12} {'step API':>9} {'ratio':>6} {'pipelined':>9} "
        f"{'tok/s direct':>13} {'tok/s API':>10} {'ratio':>6} {'gateway CPU/step':>16}"
    )
    for name, r in results.items():
        print(
            f"{name:8} {r['batch_tokens']:6d} {r['direct_step_s']:11.3f}s {r['api_step_s']:8.3f}s {r['step_ratio']:6.2f} "
            f"{r['piped_step_ratio']:9.2f} {r['direct_sample_tps']:13.1f} {r['api_sample_tps']:10.1f} {r['sample_ratio']:6.2f} "
            f"{r['api_gateway_cpu_ms_per_step']:13.2f} ms"
        )
        if "baseline_step_s" in r:
            print(
                f"{'baseline':8} {'':6} {'':12} {r['baseline_step_s']:8.3f}s {r['baseline_step_ratio']:6.2f} "
                f"{r['baseline_piped_step_ratio']:9.2f} {'':13} {r['baseline_sample_tps']:10.1f} {r['baseline_sample_ratio']:6.2f} "
                f"{r['baseline_gateway_cpu_ms_per_step']:13.2f} ms"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
