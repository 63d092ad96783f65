"""S3-compatible storage (AWS S3, MinIO, R2, Ceph...) through boto3, its calls run in threads.

boto3 rather than aiobotocore: aiobotocore pins exact botocore versions, which fights every other package
that needs boto; a boto3 client is thread-safe, and running each call with `asyncio.to_thread` keeps the
event loop free. A put is spooled to a temporary file first (hashed and bounded as it arrives), then sent
with `upload_fileobj`, which switches to multipart uploads for large objects. The sha256 travels as the
object's `x-amz-meta-sha256`.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

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

_SPOOL_IN_MEMORY = 8 * 1024 * 1024


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/"); ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"storage url {url!r}: an S3 location is written s3://bucket or s3://bucket/prefix")
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
        prefix += "/"
    return parts.netloc, prefix


class S3Storage(Storage):
    kind = "s3"

    def __init__(
        self,
        url: str,
        max_bytes: int,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        super().__init__(max_bytes)
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url
        self._client_kw: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
        }
        self._client: Any = None

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    async def start(self) -> None:
        if self._client is not None:
            return
        try:
            import boto3
            from botocore.config import Config as BotoConfig
        except ImportError:  # pragma: no cover - boto3 is a dependency
            raise StorageError("storage: S3 needs boto3 (pip install boto3)") from None
        cfg = BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60)

        def make() -> Any:
            client = boto3.session.Session().client("s3", config=cfg, **self._client_kw)
            client.head_bucket(Bucket=self.bucket)
            return client

        try:
            self._client = await asyncio.to_thread(make)
        except Exception as e:
            raise StorageError(f"storage: cannot use {self._where()}: {_why(e)}") from None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{check_key(key)}"

    async def _call(self, what: str, fn: Any, **kw: Any) -> Any:
        if self._client is None:
            await self.start()
        try:
            return await asyncio.to_thread(fn, **kw)
        except Exception as e:
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFoundError(f"storage: no object {what!r} in {self._where()}") from None
            raise StorageError(f"storage: {what} in {self._where()} failed: {_why(e)}") from None

    async def put(self, key: str, data: Source, content_type: str = "application/octet-stream") -> ObjectInfo:
        check_key(key)
        if self._client is None:
            await self.start()
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        try:
            digest = hashlib.sha256()
            size = 0
            async for chunk in chunks_of(data):
                size += len(chunk)
                if size > self.max_bytes:
                    raise ObjectTooLargeError(
                        f"storage: object {key!r} is larger than the limit of {self.max_bytes} bytes "
                        "(storage.max_object_bytes)"
                    )
                digest.update(chunk)
                await asyncio.to_thread(spool.write, chunk)
            spool.seek(0)
            sha = digest.hexdigest()
            await self._call(
                key,
                self._client.upload_fileobj,
                Fileobj=spool,
                Bucket=self.bucket,
                Key=self.prefix + key,
                ExtraArgs={"ContentType": content_type, "Metadata": {"sha256": sha}},
            )
        finally:
            spool.close()
        info = await self.stat(key)
        if info is None:
            raise StorageError(f"storage: {key!r} was uploaded to {self._where()} but cannot be found")
        return info

    async def stat(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            head = await self._call(
                key, self._client_fn("head_object"), Bucket=self.bucket, Key=self.prefix + key
            )
        except ObjectNotFoundError:
            return None
        return ObjectInfo(
            key,
            int(head["ContentLength"]),
            head.get("ContentType") or "application/octet-stream",
            (head.get("Metadata") or {}).get("sha256", ""),
            head["LastModified"].timestamp(),
        )

    def _client_fn(self, name: str) -> Any:
        def call(**kw: Any) -> Any:
            return getattr(self._client, name)(**kw)

        return call

    async def stream(self, key: str, chunk_size: int = DEFAULT_CHUNK) -> AsyncIterator[bytes]:
        check_key(key)
        obj = await self._call(key, self._client_fn("get_object"), Bucket=self.bucket, Key=self.prefix + key)
        body = obj["Body"]
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(body.read, chunk_size)
                except Exception as e:
                    raise StorageError(f"storage: reading {key!r} from {self._where()}: {_why(e)}") from None
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> bool:
        if await self.stat(key) is None:
            return False
        await self._call(key, self._client_fn("delete_object"), Bucket=self.bucket, Key=self.prefix + key)
        return True

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        check_prefix(prefix)

        def keys() -> list[str]:
            out = []
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                out += [o["Key"][len(self.prefix) :] for o in page.get("Contents", ())]
            return out

        found = await self._call(prefix or "(all)", keys)
        infos = [await self.stat(k) for k in sorted(found)]
        return [i for i in infos if i is not None]


def _code(e: Exception) -> str:
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        return str(resp.get("Error", {}).get("Code", ""))
    return ""


def _why(e: Exception) -> str:
    code = _code(e)
    return f"{type(e).__name__}{f' ({code})' if code else ''}: {e}"


__all__ = ["S3Storage", "parse_s3_url"]
