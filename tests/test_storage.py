"""hybridgate.storage against local files and a real S3-compatible server (moto in server mode, a process on
a loopback port), through the same tests; signed download links through the gateway's own route."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hybridgate.config import StorageConfig
from hybridgate.storage import (
    InvalidKeyError,
    LinkError,
    LocalStorage,
    ObjectNotFoundError,
    ObjectTooLargeError,
    S3Storage,
    Signer,
    Storage,
    StorageError,
    load_secret,
    open_storage,
)
from hybridgate.testing.procs import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_creds()).create_bucket(Bucket=name)


def _creds() -> dict[str, str]:
    return {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


_bucket_n = iter(range(1000))


def storage_for(request: pytest.FixtureRequest, tmp_path: Path, prefix: str, max_bytes: int) -> Storage:
    """Local files or a fresh bucket on the session's moto server (`request.param`), not started yet."""
    if request.param == "local":
        return LocalStorage(tmp_path / "files", max_bytes=max_bytes)
    endpoint = request.getfixturevalue("s3_server")
    bucket = f"bucket-{next(_bucket_n)}"
    make_bucket(endpoint, bucket)
    return S3Storage(
        f"s3://{bucket}/{prefix}",
        max_bytes,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
    )


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    s = storage_for(request, tmp_path, "some/prefix", 1_000_000)
    await s.start()
    yield s
    await s.close()


async def test_put_stat_get_stream_delete(store: Storage, tmp_path: Path) -> None:
    data = os.urandom(700_000)
    info = await store.put("images/job_1/0.png", data, "image/png")
    assert (info.size, info.content_type) == (len(data), "image/png")
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    again = await store.stat("images/job_1/0.png")
    assert again is not None and (again.sha256, again.content_type, again.size) == (
        info.sha256,
        "image/png",
        len(data),
    )
    assert await store.exists("images/job_1/0.png")
    chunks = [c async for c in store.stream("images/job_1/0.png", chunk_size=100_000)]
    assert len(chunks) >= 7 and max(len(c) for c in chunks) <= 100_000  # streamed, not whole
    assert b"".join(chunks) == data
    assert await store.get("images/job_1/0.png") == data
    # A local file and an async stream of chunks are sources too.
    f = tmp_path / "src.bin"
    f.write_bytes(b"from a file")
    assert (await store.put("a/file.bin", f)).size == 11

    async def gen() -> AsyncIterator[bytes]:
        for part in (b"one ", b"", b"two"):
            yield part

    assert (await store.put("a/stream.txt", gen(), "text/plain")).sha256 == hashlib.sha256(
        b"one two"
    ).hexdigest()
    assert await store.get("a/stream.txt") == b"one two"
    # Replacing keeps one object with the new content.
    await store.put("a/stream.txt", b"new", "text/plain")
    assert await store.get("a/stream.txt") == b"new"
    assert [i.key for i in await store.list("a/")] == ["a/file.bin", "a/stream.txt"]
    assert [i.key for i in await store.list()] == ["a/file.bin", "a/stream.txt", "images/job_1/0.png"]
    assert await store.delete("a/file.bin") is True
    assert await store.delete("a/file.bin") is False
    assert not await store.exists("a/file.bin") and await store.stat("a/file.bin") is None
    with pytest.raises(ObjectNotFoundError):
        await store.get("a/file.bin")


async def test_too_large_keeps_nothing(store: Storage) -> None:
    with pytest.raises(ObjectTooLargeError, match="max_object_bytes"):
        await store.put("big/blob", b"x" * 1_000_001)
    assert not await store.exists("big/blob")
    assert await store.list("big/") == []
    await store.put("big/blob", b"x" * 1_000_000)  # exactly the bound fits
    assert (await store.stat("big/blob")) is not None


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a/.", "sp ace", "a\\b", "\x00", "-x"])
async def test_bad_keys_refused(store: Storage, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        await store.put(key, b"x")
    with pytest.raises(InvalidKeyError):
        await store.stat(key)


async def test_local_put_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path, 100)
    await s.start()
    with pytest.raises(ObjectTooLargeError):
        await s.put("x", b"y" * 101)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert s.uri("a/b").startswith("file://") and s.uri("a/b").endswith("/objects/a/b")


async def test_s3_unreachable_or_missing_bucket_says_where(s3_server: str) -> None:
    missing = S3Storage("s3://no-such-bucket", 10, endpoint_url=s3_server, **_kw())
    with pytest.raises(StorageError, match="no-such-bucket"):
        await missing.start()
    dead = S3Storage("s3://b", 10, endpoint_url=f"http://127.0.0.1:{free_port()}", **_kw())
    with pytest.raises(StorageError, match=r"cannot use s3://b/"):
        await dead.start()


def _kw() -> dict[str, str]:
    return {"region": "us-east-1", "access_key_id": "test", "secret_access_key": "test"}


def test_open_storage_from_config(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/data/hg.db"
    local = open_storage(StorageConfig(), db)
    assert isinstance(local, LocalStorage) and local.root == (tmp_path / "data" / "files").resolve()
    s3 = open_storage(StorageConfig(url="s3://bkt/pre/fix", endpoint_url="http://127.0.0.1:1"), db)
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bkt", "pre/fix/")
    assert isinstance(open_storage(StorageConfig(url=str(tmp_path / "elsewhere")), db), LocalStorage)
    with pytest.raises(StorageError, match="s3://bucket"):
        open_storage(StorageConfig(url="gs://bucket"), db)
    with pytest.raises(StorageError, match="s3://bucket"):
        open_storage(StorageConfig(url="s3://"), db)


def test_signed_links(tmp_path: Path) -> None:
    secret = load_secret(None, tmp_path)
    assert load_secret(None, tmp_path) == secret  # kept, shared by every process of this machine
    assert oct((tmp_path / "storage-signing-key").stat().st_mode & 0o777) == "0o600"
    signer = Signer(secret, 60)
    path = signer.path("images/j/0.png", now=1000)
    assert path.startswith("/v1/files/images/j/0.png?expires=1060&sig=")
    sig = path.rsplit("sig=", 1)[1]
    signer.verify("images/j/0.png", "1060", sig, now=1059)
    with pytest.raises(LinkError, match="expired"):
        signer.verify("images/j/0.png", "1060", sig, now=1061)
    with pytest.raises(LinkError, match="signature"):
        signer.verify("images/j/1.png", "1060", sig, now=1000)  # another object
    with pytest.raises(LinkError, match="signature"):
        signer.verify("images/j/0.png", "99999", sig, now=1000)  # a later expiry
    with pytest.raises(LinkError, match="needs"):
        signer.verify("images/j/0.png", None, sig)
    with pytest.raises(LinkError, match="signature"):
        Signer(b"another-secret-of-enough-length", 60).verify("images/j/0.png", "1060", sig, now=1000)


def test_download_route_through_the_gateway(spawn: dict, tmp_path: Path) -> None:
    """A real gateway process serves a stored object by its signed link, and refuses bad links clearly."""
    import asyncio

    db = tmp_path / "gw" / "hg.db"
    cfg = {
        "database": f"sqlite:///{db}",
        "backends": [{"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}}],
        "storage": {"signing_secret": "s" * 32, "url_ttl_s": 120},
    }
    store = LocalStorage(tmp_path / "gw" / "files", 10**6)
    payload = os.urandom(300_000)
    asyncio.run(store.put("images/job_x/0.png", payload, "image/png"))
    gw = spawn["gateway"](cfg)
    signer = Signer(b"s" * 32, 120)
    r = httpx.get(gw.url + signer.path("images/job_x/0.png"))
    assert r.status_code == 200, r.text
    assert r.content == payload and r.headers["content-type"] == "image/png"
    assert r.headers["etag"] == f'"{hashlib.sha256(payload).hexdigest()}"'
    bad = httpx.get(gw.url + signer.path("images/job_x/0.png").replace("sig=", "sig=0"))
    assert bad.status_code == 403 and bad.json()["error"]["code"] == "invalid_download_link"
    old = httpx.get(gw.url + signer.path("images/job_x/0.png", now=time.time() - 500))
    assert old.status_code == 403 and "expired" in old.json()["error"]["message"]
    unsigned = httpx.get(gw.url + "/v1/files/images/job_x/0.png")
    assert unsigned.status_code == 403 and "'expires' and 'sig'" in unsigned.json()["error"]["message"]
    missing = httpx.get(gw.url + signer.path("images/job_x/1.png"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
