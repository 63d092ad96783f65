"""Helpers for the training tests: a tiny offline model, a gateway that trains it, keys for it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from _accounts import cli, sqlite_url
from hybridgate.testing.procs import Proc, start_gateway, write_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TINKER_TELEMETRY", "0")
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer and a chat template, built offline once."""
    from hybridgate.training.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def training_config(work: Path, model: Path, **training: Any) -> dict[str, Any]:
    return {
        "database": sqlite_url(work),
        "backends": [{"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}}],
        "training": {
            "device": "cpu",
            "threads": 1,
            "data_dir": str(work / "training"),
            "models": {"tiny": str(model)},
            **training,
        },
    }


def make_key(work: Path, name: str, *, tinker: bool = True, budget: float | None = None) -> str:
    cfg = work / "hybridgate.yaml"
    args = ["keys", "create", "--name", name, "--config", str(cfg), "--output", "json"]
    if tinker:
        args.append("--tinker")
    if budget is not None:
        args += ["--budget-usd", str(budget)]
    r = cli(*args, env=ENV)
    assert r.code == 0, r.err
    key: str = r.json()["key"]
    return key


def start_training_gateway(work: Path, config: dict[str, Any], **kw: Any) -> Proc:
    """Write the config into `work` (the keys CLI reads it there) and serve it from `work`."""
    write_config(config, work)
    return start_gateway(work / "hybridgate.yaml", workdir=work, env=ENV, timeout=90, **kw)
