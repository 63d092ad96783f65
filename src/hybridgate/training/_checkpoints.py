"""Every file a training run writes or reads: adapter weights, optimizer state, merged models, tokenizers.

Two halves. `CheckpointFiles` is the local side the worker processes use: a checkpoint is written into
`<data_dir>/runs/<run>/<kind>/<name>/`, first into a temporary folder renamed into place, so a crash never
leaves a half-written checkpoint where a reader would take it for a whole one; torch loads adapters from
such folders too. `CheckpointStore` is the gateway's side: it moves a finished folder onto the storage
layer (`hybridgate.storage`: local files or S3), which is where checkpoints live, and brings one back into
the local folder (a cache) when a worker needs it.

In the store a checkpoint is `training/runs/<run>/<kind>/<name>/<version>/<file>` plus
`training/runs/<run>/<kind>/<name>/checkpoint.json`, written last: it names the version and each file's
size and sha256, so it is the commit point. A crash before it leaves no checkpoint (just unreferenced
objects); saving over a checkpoint uploads a new version before the record points at it, so a reader sees
the old one whole or the new one whole, never a mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybridgate.storage import Storage

KINDS = ("weights", "sampler_weights", "merged")
META = "checkpoint.json"


def _safe(part: str) -> str:
    """A run id or name as a folder name and storage key segment (`session:train:0` -> `session_train_0`).
    A key segment must start with a letter or digit or `_`: a leading `.`, `-` or `_` gets a `_` put before
    it, so checkpoint names (letters, digits, `-_.`) stay distinct (`.x` -> `_.x`, `_.x` -> `__.x`)."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in part)
    return out if out[:1].isascii() and out[:1].isalnum() else "_" + out


class CheckpointFiles:
    """The checkpoint folders of one gateway, under `root`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def folder(self, run_id: str, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {kind!r}")
        return self.root / "runs" / _safe(run_id) / kind / _safe(name)

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

    @staticmethod
    def meta_at(folder: Path) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((folder / META).read_text())
        return meta

    def _inside(self, path: Path) -> None:
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"{path} is outside the training data directory {self.root}")

    @staticmethod
    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    def tokenizer_dir(self, model: str) -> Path:
        """Where a base model's tokenizer is exported for clients (the SDK loads it from a local folder)."""
        return self.root / "tokenizers" / _safe(model)


class CheckpointError(Exception):
    """A checkpoint is missing from the store, or what came back does not match its record."""


class CheckpointStore:
    """Checkpoints on the storage layer, with `files` (the local folders) as the workers' cache."""

    PREFIX = "training/runs"

    def __init__(self, storage: Storage, files: CheckpointFiles) -> None:
        self.storage = storage
        self.files = files

    def _key(self, run_id: str, kind: str, name: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {kind!r}")
        return f"{self.PREFIX}/{_safe(run_id)}/{kind}/{_safe(name)}"

    @property
    def local_root(self) -> Path:
        return self.files.root

    def folder(self, run_id: str, kind: str, name: str) -> Path:
        """The local folder a worker writes the checkpoint into, and loads it from."""
        return self.files.folder(run_id, kind, name)

    def uri(self, run_id: str, kind: str, name: str) -> str:
        """Where the checkpoint's record lives in the store (`file:///...`, `s3://...`)."""
        return self.storage.uri(f"{self._key(run_id, kind, name)}/{META}")

    async def commit(self, run_id: str, kind: str, name: str) -> int:
        """Upload the checkpoint a worker just wrote locally; its size in bytes once it is in the store."""
        local = self.folder(run_id, kind, name)
        base = self._key(run_id, kind, name)
        version = uuid.uuid4().hex[:16]
        meta = await asyncio.to_thread(self.files.meta_at, local)
        paths = await asyncio.to_thread(
            lambda: sorted(f for f in local.rglob("*") if f.is_file() and f.name != META)
        )
        listed: dict[str, dict[str, Any]] = {}
        for f in paths:
            rel = f.relative_to(local).as_posix()
            info = await self.storage.put(f"{base}/{version}/{rel}", f)
            listed[rel] = {"size": info.size, "sha256": info.sha256}
        old = await self._record(base)
        record = {**meta, "version": version, "files": listed}
        body = json.dumps(record).encode()
        await self.storage.put(f"{base}/{META}", body, "application/json")
        # The local folder is now this version's cache: the same record marks it.
        await asyncio.to_thread(_write_atomic, local / META, body)
        if old is not None and old.get("version") != version:
            await self._delete_version(base, str(old.get("version")))
        return sum(int(v["size"]) for v in listed.values())

    async def _record(self, base: str) -> dict[str, Any] | None:
        from hybridgate.storage import ObjectNotFoundError

        try:
            raw = await self.storage.get(f"{base}/{META}")
        except ObjectNotFoundError:
            return None
        record: dict[str, Any] = json.loads(raw)
        return record

    async def exists(self, run_id: str, kind: str, name: str) -> bool:
        return await self.storage.exists(f"{self._key(run_id, kind, name)}/{META}")

    async def read_meta(self, run_id: str, kind: str, name: str) -> dict[str, Any]:
        record = await self._record(self._key(run_id, kind, name))
        if record is None:
            raise CheckpointError(f"checkpoint {run_id}/{kind}/{name} is not in the store")
        return record

    async def fetch(self, run_id: str, kind: str, name: str) -> Path:
        """The checkpoint as a local folder a worker can load: the cached copy when it is the stored
        version, else downloaded (each file checked against its recorded sha256) and renamed into place."""
        base = self._key(run_id, kind, name)
        record = await self._record(base)
        if record is None:
            raise CheckpointError(f"checkpoint {run_id}/{kind}/{name} is not in the store")
        local = self.folder(run_id, kind, name)
        try:
            cached = await asyncio.to_thread(self.files.meta_at, local)
        except (OSError, ValueError):
            cached = None
        if cached is not None and cached.get("version") == record["version"]:
            return local
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        await asyncio.to_thread(tmp.mkdir, parents=True)
        try:
            for rel, want in record["files"].items():
                dest = tmp / rel
                await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
                digest = hashlib.sha256()
                fh = await asyncio.to_thread(dest.open, "wb")
                try:
                    async for chunk in self.storage.stream(f"{base}/{record['version']}/{rel}"):
                        digest.update(chunk)
                        await asyncio.to_thread(fh.write, chunk)
                finally:
                    fh.close()
                if digest.hexdigest() != want["sha256"]:
                    raise CheckpointError(
                        f"checkpoint {run_id}/{kind}/{name}: {rel} in the store does not match its record"
                    )
            await asyncio.to_thread(_write_atomic, tmp / META, json.dumps(record).encode())
            await asyncio.to_thread(_replace_folder, tmp, local, str(record["version"]))
        finally:
            if tmp.exists():
                await asyncio.to_thread(shutil.rmtree, tmp, True)
        return local

    async def delete(self, run_id: str, kind: str, name: str) -> bool:
        """Remove the checkpoint from the store (record first: it stops existing at once) and the cache."""
        base = self._key(run_id, kind, name)
        found = await self.storage.delete(f"{base}/{META}")
        for obj in await self.storage.list(base + "/"):
            await self.storage.delete(obj.key)
        await asyncio.to_thread(shutil.rmtree, self.folder(run_id, kind, name), True)
        return found

    async def _delete_version(self, base: str, version: str) -> None:
        for obj in await self.storage.list(f"{base}/{version}/"):
            await self.storage.delete(obj.key)


def _write_atomic(path: Path, body: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _replace_folder(tmp: Path, final: Path, version: str) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        if CheckpointFiles.meta_at(final).get("version") == version:
            return  # another fetch of the same version got there first; leave its folder be
    except (OSError, ValueError):
        pass
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


__all__ = ["KINDS", "META", "CheckpointError", "CheckpointFiles", "CheckpointStore"]
