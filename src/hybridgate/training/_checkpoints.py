"""Every file a training run writes or reads: adapter weights, optimizer state, merged models, tokenizers.

All checkpoint I/O goes through this module (the worker processes call it), so moving checkpoints onto
the storage layer (local files or S3) is a change here alone. Files live under the training data
directory: `runs/<run>/<kind>/<name>/`, written to a temporary folder first and renamed into place, so a
crash never leaves a half-written checkpoint where a reader would take it for a whole one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("weights", "sampler_weights", "merged")
META = "checkpoint.json"


def _safe(part: str) -> str:
    """A run id as a folder name (`session:train:0` -> `session_train_0`)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)


class CheckpointFiles:
    """The checkpoint folders of one gateway, under `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def folder(self, run_id: str, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {kind!r}")
        return self.root / "runs" / _safe(run_id) / kind / _safe(name)

    def exists(self, run_id: str, kind: str, name: str) -> bool:
        return (self.folder(run_id, kind, name) / META).is_file()

    def write(self, final: Path, fill: Callable[[Path], None], meta: dict[str, Any]) -> int:
        """Let `fill` write a checkpoint into a fresh folder, then move it to `final`; its size in bytes."""
        self._inside(final)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
        tmp.mkdir(parents=True)
        try:
            fill(tmp)
            (tmp / META).write_text(json.dumps(meta))
            for f in tmp.rglob("*"):
                if f.is_file():
                    with f.open("rb") as fh:
                        os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.size(final)

    def read_meta(self, run_id: str, kind: str, name: str) -> dict[str, Any]:
        return self.meta_at(self.folder(run_id, kind, name))

    @staticmethod
    def meta_at(folder: Path) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((folder / META).read_text())
        return meta

    def _inside(self, path: Path) -> None:
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"{path} is outside the training data directory {self.root}")

    def delete(self, run_id: str, kind: str, name: str) -> bool:
        path = self.folder(run_id, kind, name)
        if not path.exists():
            return False
        shutil.rmtree(path)
        return True

    def delete_run(self, run_id: str) -> None:
        shutil.rmtree(self.root / "runs" / _safe(run_id), ignore_errors=True)

    @staticmethod
    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    def tokenizer_dir(self, model: str) -> Path:
        """Where a base model's tokenizer is exported for clients (the SDK loads it from a local folder)."""
        return self.root / "tokenizers" / _safe(model)


__all__ = ["KINDS", "META", "CheckpointFiles"]
