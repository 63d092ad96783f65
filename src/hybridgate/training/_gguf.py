"""A GGUF base model as a transformers model folder, fast: the packaged Gemma 3 270M in seconds, not minutes.

transformers can load a GGUF itself, but its loader parses the file's metadata with `gguf.GGUFReader`, one
numpy view per element of every array: Gemma's 262,144-token vocabulary made that about 60 s per parse on
a 2-core machine, and loading the model parsed it twice (and the tokenizer once more). Here the metadata is
read with `struct` straight from a memory map (under a second), each tensor is dequantized with gguf-py's
numpy kernels (llama.cpp's reference package, the ones transformers calls), renamed to transformers'
names and written as safetensors; the tokenizer is built by transformers' own GGUF tokenizer converter.

Architectures covered: `gemma3` (the packaged model). Any other GGUF goes through transformers' loader.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GGUF_MAGIC = b"GGUF"

# Metadata value types (gguf spec): fixed-size ones as struct formats; 8 is a string, 9 an array.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {
    0: "u1",
    1: "i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}

# ggml tensor types: (elements per block, bytes per block)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
_BLOCK = {
    F32: (1, 4),
    F16: (1, 2),
    BF16: (1, 2),
    Q4_0: (32, 18),
    Q4_1: (32, 20),
    Q5_0: (32, 22),
    Q5_1: (32, 24),
    Q8_0: (32, 34),
    Q4_K: (256, 144),
    Q5_K: (256, 176),
    Q6_K: (256, 210),
}


class GgufError(ValueError):
    """The file is not a GGUF this module can read (bad magic, version, or a tensor type it lacks)."""


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]  # torch order (the file lists dimensions fastest-moving first)
    ggml_type: int
    offset: int  # absolute, in the file
    nbytes: int


@dataclass(frozen=True)
class GgufFile:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, Tensor]

    @property
    def arch(self) -> str:
        return str(self.meta.get("general.architecture", ""))

    def raw(self, name: str) -> np.ndarray:
        """A tensor's bytes (a read-only memory map view)."""
        t = self.tensors[name]
        return np.memmap(self.path, mode="r", dtype=np.uint8, offset=t.offset, shape=(t.nbytes,))

    def array(self, name: str) -> np.ndarray:
        """A tensor dequantized to float32, in torch order."""
        t = self.tensors[name]
        return dequantize(self.raw(name), t.ggml_type).reshape(t.shape)


def read_gguf(path: str | Path) -> GgufFile:
    """The metadata (string arrays as lists, numeric arrays as numpy) and tensor table of a GGUF file;
    GgufError saying what is wrong when it is not one this module reads."""
    path = Path(path)
    with path.open("rb") as fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            raise GgufError(f"{path} is not a GGUF file (it is empty)") from None
    try:
        with memoryview(mm) as buf:
            return _parse(path, buf)
    except (struct.error, IndexError, UnicodeDecodeError, OverflowError) as e:
        raise GgufError(f"{path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    finally:
        mm.close()


def _parse(path: Path, buf: memoryview) -> GgufFile:
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise GgufError(f"{path} is not a GGUF file (no GGUF magic bytes)")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise GgufError(f"{path} is GGUF version {version}; versions 2 and 3 are read")
    pos = 24

    def string(pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, pos)
        if pos + 8 + n > len(buf):
            raise IndexError("a string runs past the end of the file")
        return str(buf[pos + 8 : pos + 8 + n], "utf-8"), pos + 8 + n

    def value(vtype: int, pos: int) -> tuple[Any, int]:
        if vtype in _SCALAR:
            fmt = "<" + _SCALAR[vtype]
            return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
        if vtype == 8:
            return string(pos)
        if vtype == 9:
            etype, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if etype in _NUMPY:
                arr = np.frombuffer(buf, dtype=_NUMPY[etype], count=count, offset=pos).copy()
                return arr, pos + arr.nbytes
            items = []
            for _ in range(count):
                item, pos = value(etype, pos)
                items.append(item)
            return items, pos
        raise GgufError(f"{path}: unknown metadata value type {vtype}")

    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        meta[key], pos = value(vtype, pos + 4)
    infos = []
    for _ in range(n_tensors):
        name, pos = string(pos)
        (ndim,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{ndim}Q", buf, pos + 4)
        gtype, off = struct.unpack_from("<IQ", buf, pos + 4 + 8 * ndim)
        pos += 4 + 8 * ndim + 12
        infos.append((name, tuple(int(d) for d in reversed(dims)), int(gtype), int(off)))
    align = int(meta.get("general.alignment", 32))
    data_start = (pos + align - 1) // align * align
    tensors = {}
    for name, shape, gtype, off in infos:
        if gtype not in _BLOCK:
            raise GgufError(
                f"{path}: tensor {name} has ggml type {gtype}, which this reader does not dequantize"
            )
        per, size = _BLOCK[gtype]
        n = int(np.prod(shape)) if shape else 1
        t = Tensor(name, shape, gtype, data_start + off, n // per * size)
        if t.offset + t.nbytes > len(buf):
            raise GgufError(f"{path} is truncated: tensor {name} runs past the end of the file")
        tensors[name] = t
    return GgufFile(path, meta, tensors)


def dequantize(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """A flat float32 array from a tensor's bytes (gguf-py's numpy kernels, llama.cpp's reference)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    data = np.asarray(raw)
    if ggml_type == F32:
        return data.view(np.float32).copy()
    if ggml_type == F16:
        return data.view(np.float16).astype(np.float32)
    if ggml_type == BF16:
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    out: np.ndarray = gguf_dequantize(data, GGMLQuantizationType(ggml_type))
    return out.astype(np.float32, copy=False).reshape(-1)


# --- Gemma 3 ----------------------------------------------------------------------------------------
_GEMMA3_LAYER = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _gemma3_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    if base == "token_embd":
        return f"model.embed_tokens.{suffix}"
    if base == "output_norm":
        return f"model.norm.{suffix}"
    if base == "output":
        return f"lm_head.{suffix}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GEMMA3_LAYER:
        return f"model.layers.{int(parts[1])}.{_GEMMA3_LAYER[parts[2]]}.{suffix}"
    raise GgufError(f"unexpected tensor {gguf_name} in a gemma3 GGUF")


def _gemma3_config(g: GgufFile) -> dict[str, Any]:
    m = g.meta
    tokens = m.get("tokenizer.ggml.tokens") or []
    vocab = g.tensors["token_embd.weight"].shape[0]
    cfg: dict[str, Any] = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": int(vocab or len(tokens)),
        "hidden_size": int(m["gemma3.embedding_length"]),
        "intermediate_size": int(m["gemma3.feed_forward_length"]),
        "num_hidden_layers": int(m["gemma3.block_count"]),
        "num_attention_heads": int(m["gemma3.attention.head_count"]),
        "num_key_value_heads": int(m["gemma3.attention.head_count_kv"]),
        "head_dim": int(m["gemma3.attention.key_length"]),
        "rms_norm_eps": float(m["gemma3.attention.layer_norm_rms_epsilon"]),
        "max_position_embeddings": int(m["gemma3.context_length"]),
        "sliding_window": int(m["gemma3.attention.sliding_window"]),
        "tie_word_embeddings": "output.weight" not in g.tensors,
    }
    # The file stores the global rope base; the local (sliding) base is Gemma 3's 10,000 either way.
    if "gemma3.rope.freq_base" in m:
        cfg["rope_parameters"] = {
            "full_attention": {"rope_type": "default", "rope_theta": float(m["gemma3.rope.freq_base"])},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        }
    for key, name in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
        ("unknown_token_id", "unk_token_id"),
    ):
        if f"tokenizer.ggml.{key}" in m:
            cfg[name] = int(m[f"tokenizer.ggml.{key}"])
    return cfg


def gemma3_state_dict(g: GgufFile) -> dict[str, Any]:
    """transformers' Gemma3ForCausalLM weights (float32 torch tensors) from the file's tensors.

    llama.cpp writes a Gemma RMSNorm weight as `w + 1` (its norm multiplies by the weight, Gemma's by
    `1 + w`); transformers' Gemma expects `w`, so 1 is taken off again, in float32."""
    import torch

    out = {}
    for name in g.tensors:
        arr = g.array(name)
        if name.endswith("norm.weight"):
            arr = arr - np.float32(1.0)
        out[_gemma3_name(name)] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return out


CONVERTERS = {"gemma3": (_gemma3_config, gemma3_state_dict, "GemmaTokenizer")}


def convert_gguf(path: str | Path, folder: str | Path) -> bool:
    """Write `path` as a transformers model folder at `folder` (atomically); False when its architecture
    is not one covered here (the caller then uses transformers' own GGUF loader)."""
    import transformers
    from safetensors.torch import save_file

    g = read_gguf(path)
    conv = CONVERTERS.get(g.arch)
    if conv is None:
        return False
    make_config, make_state, tok_class = conv
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # transformers' own GGUF tokenizer conversion, called on the class directly: through
        # AutoTokenizer it would first parse the file's config with the slow reader.
        tok = getattr(transformers, tok_class).from_pretrained(
            str(Path(path).parent), gguf_file=Path(path).name, local_files_only=True
        )
        tok.save_pretrained(str(tmp))
        (tmp / "config.json").write_text(json.dumps(make_config(g), indent=2))
        state = make_state(g)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del state
        if folder.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


__all__ = ["GgufError", "GgufFile", "Tensor", "convert_gguf", "dequantize", "gemma3_state_dict", "read_gguf"]
