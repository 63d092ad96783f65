"""Training checkpoints on the storage layer (`CheckpointStore`), against local files and a real
S3-compatible server (moto, its own process): a worker's folder is committed to the store, listed by its
record, fetched back into the local cache (downloaded and checked when the cache is gone or stale), saved
over atomically, and deleted; a crash before the record is written leaves no checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hybridgate.storage import Storage
from hybridgate.training._checkpoints import META, CheckpointError, CheckpointFiles, CheckpointStore
from test_storage import storage_for


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    s = storage_for(request, tmp_path, "gw", 10_000_000)
    await s.start()
    yield s
    await s.close()


def _save(files: CheckpointFiles, run: str, kind: str, name: str, blobs: dict[str, bytes]) -> Path:
    """What a worker does: write the checkpoint's files into its local folder, atomically."""
    folder = files.folder(run, kind, name)

    def fill(d: Path) -> None:
        for rel, data in blobs.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)

    files.write(folder, fill, {"run_id": run, "name": name, "base_model": "tiny", "lora": {"rank": 4}})
    return folder


def _read(folder: Path) -> dict[str, bytes]:
    return {
        f.relative_to(folder).as_posix(): f.read_bytes()
        for f in folder.rglob("*")
        if f.is_file() and f.name != META
    }


async def test_a_committed_checkpoint_lives_in_the_store_and_comes_back_whole(
    storage: Storage, tmp_path: Path
) -> None:
    files = CheckpointFiles(tmp_path / "cache")
    store = CheckpointStore(storage, files)
    blobs = {"adapter_model.safetensors": os.urandom(300_000), "adapter_config.json": b'{"r": 4}'}
    blobs["sub/optimizer.pt"] = os.urandom(1000)
    run = "3f2a:train:0"  # a Tinker run id: ':' is not a key character
    _save(files, run, "weights", "step-1", blobs)
    assert not await store.exists(run, "weights", "step-1")  # written locally, not yet stored

    size = await store.commit(run, "weights", "step-1")
    assert size == sum(len(b) for b in blobs.values())
    assert await store.exists(run, "weights", "step-1")
    meta = await store.read_meta(run, "weights", "step-1")
    assert meta["base_model"] == "tiny" and meta["lora"] == {"rank": 4}
    assert set(meta["files"]) == set(blobs)
    keys = [o.key for o in await storage.list("training/runs/")]
    assert f"training/runs/3f2a_train_0/weights/step-1/{META}" in keys
    assert f"training/runs/3f2a_train_0/weights/step-1/{meta['version']}/sub/optimizer.pt" in keys

    # The local folder is the cache of the stored version: fetched as it is
    local = await store.fetch(run, "weights", "step-1")
    assert local == files.folder(run, "weights", "step-1") and _read(local) == blobs

    # Without the cache (another machine, a wiped disk) it is downloaded from the store
    shutil.rmtree(tmp_path / "cache")
    again = await CheckpointStore(storage, CheckpointFiles(tmp_path / "cache")).fetch(
        run, "weights", "step-1"
    )
    assert _read(again) == blobs
    assert json.loads((again / META).read_text())["version"] == meta["version"]
    assert not list((tmp_path / "cache").rglob("*.tmp"))


async def test_saving_over_a_checkpoint_replaces_it_whole_and_drops_the_old_version(
    storage: Storage, tmp_path: Path
) -> None:
    files = CheckpointFiles(tmp_path / "cache")
    store = CheckpointStore(storage, files)
    _save(files, "run_a", "sampler_weights", "s", {"a.bin": b"old" * 100})
    await store.commit("run_a", "sampler_weights", "s")
    v1 = (await store.read_meta("run_a", "sampler_weights", "s"))["version"]
    # A second gateway process with its own (now stale) cache of version 1
    other = CheckpointFiles(tmp_path / "other")
    await CheckpointStore(storage, other).fetch("run_a", "sampler_weights", "s")

    _save(files, "run_a", "sampler_weights", "s", {"a.bin": b"new" * 100, "b.bin": b"more"})
    await store.commit("run_a", "sampler_weights", "s")
    meta = await store.read_meta("run_a", "sampler_weights", "s")
    assert meta["version"] != v1
    keys = [o.key for o in await storage.list("training/runs/run_a/")]
    assert not [k for k in keys if f"/{v1}/" in k], "the replaced version's objects are left behind"
    got = await CheckpointStore(storage, other).fetch("run_a", "sampler_weights", "s")
    assert _read(got) == {"a.bin": b"new" * 100, "b.bin": b"more"}  # the stale cache was refreshed


async def test_a_crash_before_the_record_leaves_no_checkpoint(storage: Storage, tmp_path: Path) -> None:
    files = CheckpointFiles(tmp_path / "cache")
    store = CheckpointStore(storage, files)
    # The files of a version uploaded, the gateway killed before it wrote the record
    await storage.put("training/runs/run_b/weights/w/0123456789abcdef/adapter_model.safetensors", b"x" * 10)
    assert not await store.exists("run_b", "weights", "w")
    with pytest.raises(CheckpointError, match="not in the store"):
        await store.fetch("run_b", "weights", "w")


async def test_a_corrupted_object_is_refused_not_loaded(storage: Storage, tmp_path: Path) -> None:
    files = CheckpointFiles(tmp_path / "cache")
    store = CheckpointStore(storage, files)
    _save(files, "run_c", "weights", "w", {"adapter_model.safetensors": b"good" * 1000})
    await store.commit("run_c", "weights", "w")
    version = (await store.read_meta("run_c", "weights", "w"))["version"]
    await storage.put(f"training/runs/run_c/weights/w/{version}/adapter_model.safetensors", b"evil" * 1000)
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(CheckpointError, match="does not match its record"):
        await store.fetch("run_c", "weights", "w")
    assert not files.folder("run_c", "weights", "w").exists()
    assert not list((tmp_path / "cache").rglob("*.tmp"))


async def test_delete_removes_the_record_the_objects_and_the_cache(storage: Storage, tmp_path: Path) -> None:
    files = CheckpointFiles(tmp_path / "cache")
    store = CheckpointStore(storage, files)
    for name in ("keep", "drop"):
        _save(files, "run_d", "weights", name, {"a.bin": name.encode()})
        await store.commit("run_d", "weights", name)
    assert await store.delete("run_d", "weights", "drop") is True
    assert not await store.exists("run_d", "weights", "drop")
    assert not files.folder("run_d", "weights", "drop").exists()
    keys = [o.key for o in await storage.list("training/runs/run_d/")]
    assert keys and all("/keep/" in k for k in keys)
    assert await store.delete("run_d", "weights", "drop") is False
    assert _read(await store.fetch("run_d", "weights", "keep")) == {"a.bin": b"keep"}


async def test_names_starting_with_a_dot_dash_or_underscore_stay_distinct(
    storage: Storage, tmp_path: Path
) -> None:
    files = CheckpointFiles(tmp_path / "cache")
    store = CheckpointStore(storage, files)
    for name in (".x", "_.x", "-x", "x"):
        _save(files, "run_e", "weights", name, {"a.bin": name.encode()})
        await store.commit("run_e", "weights", name)
    for name in (".x", "_.x", "-x", "x"):
        assert _read(await store.fetch("run_e", "weights", name)) == {"a.bin": name.encode()}
