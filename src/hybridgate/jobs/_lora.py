"""Preparing a LoRA training archive: a zip of images from a list of image URLs, or from a video's frames taken
at even intervals (PyAV). Downloads are bounded in size; frame work runs in a thread."""

from __future__ import annotations

import asyncio
import io
import mimetypes
import zipfile
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_VIDEO_BYTES = 500 * 1024 * 1024
_IMAGE_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


class PrepareError(Exception):
    """The training input cannot be used; the message says which and why (not retried)."""


async def download(client: httpx.AsyncClient, url: str, limit: int) -> tuple[bytes, str]:
    """The body and content type of `url`, refusing anything over `limit` bytes."""
    import httpx

    try:
        async with client.stream("GET", url, follow_redirects=True) as r:
            if r.status_code >= 400:
                raise PrepareError(f"downloading {url} answered HTTP {r.status_code}")
            parts, size = [], 0
            async for chunk in r.aiter_bytes(256 * 1024):
                size += len(chunk)
                if size > limit:
                    raise PrepareError(f"{url} is larger than {limit} bytes")
                parts.append(chunk)
            return b"".join(parts), r.headers.get("content-type", "").split(";")[0].strip()
    except httpx.HTTPError as e:
        raise OSError(f"downloading {url}: {type(e).__name__}: {e}") from None  # worth a retry


def _ext(url: str, content_type: str) -> str:
    if content_type in _IMAGE_TYPES:
        return _IMAGE_TYPES[content_type]
    guess = mimetypes.guess_type(url.split("?")[0])[0] or ""
    if guess in _IMAGE_TYPES:
        return _IMAGE_TYPES[guess]
    raise PrepareError(f"{url} is not a PNG, JPEG or WebP image (content type {content_type or 'unknown'!r})")


async def archive_from_urls(client: httpx.AsyncClient, urls: list[str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i, url in enumerate(urls):
            data, ctype = await download(client, url, MAX_IMAGE_BYTES)
            z.writestr(f"image_{i:03d}{_ext(url, ctype)}", data)
    return buf.getvalue()


def frames_from_video(video: bytes, count: int) -> list[bytes]:
    """`count` frames as PNGs, taken at even intervals over the video's length (the middle of each slice)."""
    import av

    try:
        container = av.open(io.BytesIO(video), mode="r")
    except Exception as e:  # av raises its own error classes per FFmpeg code
        raise PrepareError(f"the video cannot be read: {e}") from None
    with container:
        if not container.streams.video:
            raise PrepareError("the file has no video stream")
        stream = container.streams.video[0]
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        if not duration or duration <= 0:
            raise PrepareError("the video's length is unknown, so frames cannot be spread over it")
        targets = [duration * (i + 0.5) / count for i in range(count)]
        picked = []
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else 0.0
                while targets and t >= targets[0]:
                    targets.pop(0)
                    picked.append(frame.reformat(format="rgb24"))
                if not targets:
                    break
        except Exception as e:
            raise PrepareError(f"decoding the video failed: {e}") from None
    if len(picked) < min(count, 4):
        raise PrepareError(f"only {len(picked)} frames could be taken from the video; at least 4 are needed")
    out = []
    for f in picked:
        ctx = av.CodecContext.create("png", "w")
        ctx.width, ctx.height, ctx.pix_fmt = f.width, f.height, "rgb24"
        packets = list(ctx.encode(f)) + list(ctx.encode(None))
        out.append(b"".join(bytes(p) for p in packets))
    return out


async def archive_from_video(client: httpx.AsyncClient, url: str, count: int) -> bytes:
    video, _ = await download(client, url, MAX_VIDEO_BYTES)
    frames = await asyncio.to_thread(frames_from_video, video, count)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for i, png in enumerate(frames):
            z.writestr(f"frame_{i:03d}.png", png)
    return buf.getvalue()


Uploader = Callable[[bytes, str, str], Awaitable[str]]

__all__ = ["PrepareError", "archive_from_urls", "archive_from_video", "download", "frames_from_video"]
