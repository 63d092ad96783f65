"""Artifact storage: one interface (`Storage`), local files by default, S3-compatible by URL.

```python
store = open_storage(config.storage, config.database)
await store.start()
info = await store.put("images/job_1/0.png", png_bytes, "image/png")   # ObjectInfo(key, size, sha256...)
async for chunk in store.stream(info.key): ...                          # never the whole file in memory
link = signer.path(info.key)                                            # /v1/files/...?expires=&sig=
```

Anything that keeps files (generated media, LoRA weights, training checkpoints) goes through this
interface, so the same code works on a laptop and against a bucket.
"""

from __future__ import annotations

from pathlib import Path

from hybridgate.config import StorageConfig
from hybridgate.storage._base import (
    DEFAULT_CHUNK,
    InvalidKeyError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    Source,
    Storage,
    StorageError,
    check_key,
)
from hybridgate.storage._local import LocalStorage
from hybridgate.storage._s3 import S3Storage, parse_s3_url
from hybridgate.storage._signing import FILES_PATH, LinkError, Signer, load_secret
from hybridgate.store import sqlite_path


def data_dir(database: str) -> Path:
    """The folder beside the SQLite database (`./.hybridgate` for PostgreSQL): files and keys live there."""
    path = sqlite_path(database)
    return path.parent.resolve() if path is not None else Path(".hybridgate").resolve()


def open_storage(config: StorageConfig, database: str) -> Storage:
    """The store `config` names (not started); StorageError naming the setting when it is invalid."""
    url = config.url
    if url is None:
        return LocalStorage(data_dir(database) / "files", config.max_object_bytes)
    if url.startswith("s3://"):
        try:
            return S3Storage(
                url,
                config.max_object_bytes,
                endpoint_url=config.endpoint_url,
                region=config.region,
                access_key_id=config.access_key_id,
                secret_access_key=config.secret_access_key,
            )
        except ValueError as e:
            raise StorageError(str(e)) from None
    if url.startswith("file://"):
        return LocalStorage(url.removeprefix("file://"), config.max_object_bytes)
    if "://" in url:
        raise StorageError(f"storage.url {url!r}: use a folder path, file:///path, or s3://bucket/prefix")
    return LocalStorage(url, config.max_object_bytes)


def open_signer(config: StorageConfig, database: str) -> Signer:
    return Signer(load_secret(config.signing_secret, data_dir(database)), config.url_ttl_s)


__all__ = [
    "DEFAULT_CHUNK",
    "FILES_PATH",
    "InvalidKeyError",
    "LinkError",
    "LocalStorage",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectTooLargeError",
    "S3Storage",
    "Signer",
    "Source",
    "Storage",
    "StorageError",
    "check_key",
    "data_dir",
    "open_signer",
    "open_storage",
    "parse_s3_url",
]
