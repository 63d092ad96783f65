"""Local-files storage: objects under `<root>/objects/<key>`, their content type and sha256 beside them in
`<root>/meta/<key>.json`.

A put streams into a temporary file in `<root>/tmp` (hashing as it goes), fsyncs it and renames it into
place, so a reader never sees half an object and a crash leaves at most a stray temporary file. File work
runs in threads: the event loop never waits on a disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from hybridgate.storage._base import (
    DEFAULT_CHUNK,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    Source,
    Storage,
    StorageError,
    check_key,
    check_prefix,
    chunks_of,
)


class LocalStorage(Storage):
    kind = "local"

    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.root = Path(root).resolve()
        self._objects = self.root / "objects"
        self._meta = self.root / "meta"
        self._tmp = self.root / "tmp"

    async def start(self) -> None:
        try:
            for d in (self._objects, self._meta, self._tmp):
                await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage: cannot create the folder {self.root}: {e}") from None

    def uri(self, key: str) -> str:
        return (self._objects / check_key(key)).as_uri()

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self._objects / key, self._meta / (key + ".json")

    async def put(self, key: str, data: Source, content_type: str = "application/octet-stream") -> ObjectInfo:
        path, meta = self._paths(key)
        await self.start()
        fd, tmp_name = await asyncio.to_thread(tempfile.mkstemp, dir=self._tmp, prefix="put-")
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in chunks_of(data):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ObjectTooLargeError(
                            f"storage: object {key!r} is larger than the limit of {self.max_bytes} bytes "
                            "(storage.max_object_bytes)"
                        )
                    digest.update(chunk)
                    await asyncio.to_thread(fh.write, chunk)
                await asyncio.to_thread(fh.flush)
                await asyncio.to_thread(os.fsync, fh.fileno())
            info = ObjectInfo(key, size, content_type, digest.hexdigest(), time.time())
            await asyncio.to_thread(self._commit, tmp, path, meta, info)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
        return info

    @staticmethod
    def _commit(tmp: Path, path: Path, meta: Path, info: ObjectInfo) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta_tmp = tmp.with_suffix(".meta")
        meta_tmp.write_bytes(orjson.dumps(info.as_dict()))
        os.replace(meta_tmp, meta)
        os.replace(tmp, path)

    async def stat(self, key: str) -> ObjectInfo | None:
        path, meta = self._paths(key)
        return await asyncio.to_thread(self._stat, key, path, meta)

    @staticmethod
    def _stat(key: str, path: Path, meta: Path) -> ObjectInfo | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        try:
            m = orjson.loads(meta.read_bytes())
            if m.get("size") == st.st_size:
                return ObjectInfo(key, st.st_size, m["content_type"], m["sha256"], st.st_mtime)
        except (OSError, ValueError, KeyError):
            pass
        # A file put there by hand (or its record lost): describe it from the file itself.
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(DEFAULT_CHUNK):
                digest.update(chunk)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return ObjectInfo(key, st.st_size, ctype, digest.hexdigest(), st.st_mtime)

    async def stream(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> AsyncIterator[bytes]:
        path, _ = self._paths(key)
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFoundError(f"storage: no object {key!r}") from None
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def delete(self, key: str) -> bool:
        path, meta = self._paths(key)

        def rm() -> bool:
            meta.unlink(missing_ok=True)
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(rm)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        check_prefix(prefix)

        def walk() -> list[ObjectInfo]:
            out: list[ObjectInfo] = []
            if not self._objects.exists():
                return out
            for dirpath, _, files in os.walk(self._objects):
                for f in files:
                    key = Path(dirpath, f).relative_to(self._objects).as_posix()
                    if key.startswith(prefix):
                        info = self._stat(key, self._objects / key, self._meta / (key + ".json"))
                        if info is not None:
                            out.append(info)
            return sorted(out, key=lambda i: i.key)

        return await asyncio.to_thread(walk)


__all__ = ["LocalStorage"]
