"""Signed, expiring download links served by the gateway itself: `/v1/files/<key>?expires=<t>&sig=<hmac>`.

The signature is HMAC-SHA256 over the key and the expiry time, so a link names one object until one moment
and cannot be altered to reach another. The secret comes from `storage.signing_secret`, or else a random
one kept (mode 0600) in the data folder, created once and shared by every process of this machine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from hybridgate.storage._base import check_key

FILES_PATH = "/v1/files/"


class LinkError(ValueError):
    """A download link that is malformed, expired or not signed by this gateway."""


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The signing key: the configured one, or the data folder's (created on first use, race-free)."""
    if configured:
        return configured.encode()
    path = data_dir / "storage-signing-key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it this very moment
            key = path.read_bytes().strip()
            if len(key) >= 32:
                return key
            time.sleep(0.01)
        raise RuntimeError(f"storage: the signing key file {path} is empty or too short; delete it") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_hex(32).encode())
        fh.flush()
        os.fsync(fh.fileno())
    return path.read_bytes().strip()


class Signer:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def derive(self, label: str) -> bytes:
        """A secret of its own for another purpose (e.g. signing webhooks), derived from the signing key."""
        return hmac.new(self._secret, f"derive:{label}".encode(), hashlib.sha256).digest()

    def _sig(self, key: str, expires: int) -> str:
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def path(self, key: str, ttl_s: int | None = None, now: float | None = None) -> str:
        """The link's path and query (prefix it with the gateway's address)."""
        check_key(key)
        expires = int((now or time.time()) + (ttl_s or self.ttl_s))
        return f"{FILES_PATH}{quote(key)}?expires={expires}&sig={self._sig(key, expires)}"

    def verify(self, key: str, expires: str | None, sig: str | None, now: float | None = None) -> None:
        """Return when the link is valid; LinkError saying why not."""
        if not expires or not sig:
            raise LinkError("a download link needs its 'expires' and 'sig' parameters; ask for a fresh link")
        try:
            when = int(expires)
        except ValueError:
            raise LinkError("'expires' must be whole epoch seconds") from None
        if not hmac.compare_digest(self._sig(key, when), sig):
            raise LinkError("this download link's signature does not match; it was altered or is not ours")
        if when < (now or time.time()):
            raise LinkError("this download link has expired; fetch the job again for a fresh one")


__all__ = ["FILES_PATH", "LinkError", "Signer", "load_secret"]
