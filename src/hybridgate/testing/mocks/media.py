"""Real files for the generation mocks, made without any model: a PNG drawn deterministically from a prompt and
a seed, a short MP4 (PyAV, when installed), a valid safetensors file."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from typing import Any

import orjson


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def palette(prompt: str, seed: int, n: int = 64) -> list[bytes]:
    digest = b""
    i = 0
    while len(digest) < n * 3:
        digest += hashlib.sha256(f"{seed}:{i}:{prompt}".encode()).digest()
        i += 1
    return [digest[k * 3 : k * 3 + 3] for k in range(n)]


def png(prompt: str, seed: int, width: int, height: int) -> bytes:
    """An RGB PNG of an 8x8 grid of colours taken from sha256(seed, prompt): same inputs, same bytes."""
    colours = palette(prompt, seed)
    rows = []
    for by in range(8):
        y0, y1 = by * height // 8, (by + 1) * height // 8
        line = b"".join(colours[by * 8 + bx] * ((bx + 1) * width // 8 - bx * width // 8) for bx in range(8))
        rows.append((b"\x00" + line) * (y1 - y0))
    raw = b"".join(rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, from its header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def mp4(
    prompt: str, seed: int, seconds: float = 1.0, fps: int = 8, size: tuple[int, int] = (64, 64)
) -> bytes:
    """A short H.264 (or MPEG-4) video whose frames cycle the prompt's colours. Needs PyAV (`av`)."""
    import av  # an optional dependency: the LoRA pipeline's frame extraction needs it too

    colours = palette(prompt, seed, 16)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        try:
            stream = container.add_stream("libx264", rate=fps)
        except Exception:
            stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        w, h = size
        for i in range(max(1, int(seconds * fps))):
            frame = av.VideoFrame(w, h, "rgb24")
            plane = frame.planes[0]
            row = colours[i % len(colours)] * w
            plane.update(row.ljust(plane.line_size, b"\0") * h)
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def safetensors(tensors: dict[str, tuple[list[int], bytes]], metadata: dict[str, str]) -> bytes:
    """A valid safetensors file: 8-byte header length, JSON header (F32 tensors, offsets), the data."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    data = b""
    for name, (shape, raw) in tensors.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    h = orjson.dumps(header)
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def read_safetensors_header(data: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = orjson.loads(data[8 : 8 + n])
    return header


def lora_file(trigger_word: str, steps: int, archive_sha256: str) -> bytes:
    """A tiny LoRA in diffusers' naming: two rank-4 matrices whose values derive from the inputs."""
    seed = hashlib.sha256(f"{trigger_word}:{steps}:{archive_sha256}".encode()).digest()
    vals = [((seed[i % 32] / 255.0) - 0.5) * 0.02 for i in range(64)]
    raw = struct.pack("<64f", *vals)
    return safetensors(
        {
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": ([4, 8], raw[:128]),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": ([8, 4], raw[128:]),
        },
        {"trigger_word": trigger_word, "steps": str(steps), "training_data_sha256": archive_sha256},
    )


__all__ = ["lora_file", "mp4", "palette", "png", "png_size", "read_safetensors_header", "safetensors"]
