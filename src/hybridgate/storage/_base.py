"""The storage interface every artifact store implements, and the checks every implementation shares.

A key is a relative path of safe segments (`loras/k1/style/v1/model.safetensors`): no empty segment, no `.`
or `..`, no leading slash, no backslash or control character. Every put computes the object's sha256 and
size while writing, and refuses to keep anything larger than the store's `max_bytes`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_CHUNK = 256 * 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@=+,-]*$")
MAX_KEY_CHARS = 900  # S3 allows 1024 bytes with the prefix

# What `put` accepts: the bytes, a local file, or an async stream of chunks (a download being mirrored).
Source = bytes | Path | AsyncIterable[bytes]


class StorageError(Exception):
    """The store failed (unreachable, denied); the message says which store and what happened."""


class InvalidKeyError(StorageError, ValueError):
    """A key that is not a safe relative path."""


class ObjectNotFoundError(StorageError, KeyError):
    def __str__(self) -> str:  # KeyError's repr-quoting makes messages ugly
        return str(self.args[0]) if self.args else "object not found"


class ObjectTooLargeError(StorageError):
    """An object over the store's size bound; nothing was kept."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    sha256: str
    modified: float  # epoch seconds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_key(key: str) -> str:
    """`key` when it is a safe relative path; InvalidKeyError saying what is wrong otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("a storage key must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidKeyError(f"a storage key may have at most {MAX_KEY_CHARS} characters")
    for seg in key.split("/"):
        if seg in ("", ".", "..") or not _SEGMENT.match(seg):
            raise InvalidKeyError(
                f"storage key {key!r}: each '/'-separated part must be non-empty, not '.' or '..', start "
                "with a letter, digit or '_', and hold only letters, digits and _ . @ = + , -"
            )
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key's leading part (its last segment may be partial)."""
    if prefix == "":
        return prefix
    return check_key(prefix.rstrip("/") or "_") and prefix


class Storage(ABC):
    """Put, get, stream, stat, delete and list objects by key; each object keeps its content type and sha256."""

    #: "local" or "s3"
    kind: str = ""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def start(self) -> None:
        """Open clients, create folders or check the bucket; StorageError when unusable."""

    async def close(self) -> None:
        """Release clients."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where the object lives, for records (`file:///...`, `s3://bucket/prefix/key`)."""

    @abstractmethod
    async def put(self, key: str, data: Source, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store `data` under `key` (replacing what was there, atomically); its ObjectInfo."""

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when there is none."""

    @abstractmethod
    def stream(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> AsyncIterator[bytes]:
        """The object's bytes in chunks (never whole in memory); ObjectNotFoundError when missing."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove the object; False when there was none."""

    @abstractmethod
    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    async def get(self, key: str) -> bytes:
        """The whole object; for small ones (use `stream` for the rest)."""
        parts = [chunk async for chunk in self.stream(key)]
        return b"".join(parts)


async def chunks_of(data: Source, chunk_size: int = DEFAULT_CHUNK) -> AsyncIterator[bytes]:
    """Any Source as an async stream of chunks (a file is read a chunk at a time, in a thread)."""
    import asyncio

    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for i in range(0, len(view), chunk_size):
            yield bytes(view[i : i + chunk_size])
        return
    if isinstance(data, Path):
        fh = await asyncio.to_thread(open, data, "rb")
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()
        return
    async for chunk in data:
        if chunk:
            yield bytes(chunk)


__all__ = [
    "DEFAULT_CHUNK",
    "InvalidKeyError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectTooLargeError",
    "Source",
    "Storage",
    "StorageError",
    "check_key",
    "check_prefix",
    "chunks_of",
]
