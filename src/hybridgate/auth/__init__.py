"""Who is calling: the master key, or a per-user API key checked against an in-memory view of the table."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from hybridgate.auth._keys import (
    KEY_PREFIX,
    KEY_PREFIXES,
    KeyCache,
    KeyRecord,
    KeyStore,
    KeyWatcher,
    NewKey,
    fmt_time,
    hash_secret,
    new_secret,
)
from hybridgate.auth._spec import KeyNameTaken, KeySpec, KeySpecError, parse_spec
from hybridgate.protocol import AuthenticationError


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request, with the limits its key carries (None: no limit)."""

    key_id: str | None = None
    name: str = "anonymous"
    is_master: bool = False
    # Public model names this caller may use; None or empty means all (checked by serving/).
    allowed_models: tuple[str, ...] | None = None
    budget_usd: float | None = None
    rpm: int | None = None

    @classmethod
    def of(cls, rec: KeyRecord) -> Principal:
        return cls(
            key_id=rec.id, name=rec.name, allowed_models=rec.models, budget_usd=rec.budget_usd, rpm=rec.rpm
        )


ANONYMOUS = Principal()
MASTER = Principal(key_id=None, name="master", is_master=True)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Checks the `Authorization: Bearer` header of every /v1 call, from memory only.

    Without a master key and without any API key the gateway is open (every caller is anonymous); once a
    master key is set or any key exists (even a revoked one), every call needs a valid key.
    """

    def __init__(self, master_key: str | None, keys: KeyCache | None = None) -> None:
        self._master = master_key.encode() if master_key else None
        self.keys = keys
        # Principal per key, rebuilt when a reload brings a new record: one allocation per key, not per call.
        self._principals: dict[str, tuple[KeyRecord, Principal]] = {}

    @property
    def has_master(self) -> bool:
        return self._master is not None

    @property
    def required(self) -> bool:
        return self._master is not None or (self.keys is not None and self.keys.any_keys)

    @property
    def mode(self) -> str:
        """For logs: what a caller needs."""
        keys = self.keys is not None and self.keys.any_keys
        if self._master is not None:
            return "master key + API keys" if keys else "master key"
        return "API keys" if keys else "none (open: no master key, no API key)"

    def is_master(self, token: str | None) -> bool:
        return (
            self._master is not None
            and token is not None
            and hmac.compare_digest(token.encode(), self._master)
        )

    async def authenticate(self, authorization: str | None) -> Principal:
        if not self.required:
            return ANONYMOUS
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>' (this gateway requires one; "
                "`hybridgate keys create --name NAME` makes one)."
            )
        if self.is_master(token):
            return MASTER
        rec = self.keys.lookup(token) if self.keys is not None else None
        if rec is None:
            raise AuthenticationError("Invalid API key: no key with this value exists on this gateway.")
        if rec.revoked_at is not None:
            raise AuthenticationError(
                f"API key '{rec.name}' ({rec.prefix}...) was revoked on {fmt_time(rec.revoked_at)}; "
                "ask for a new key.",
                code="key_revoked",
            )
        if rec.expires_at is not None and time.time() >= rec.expires_at:
            raise AuthenticationError(
                f"API key '{rec.name}' ({rec.prefix}...) expired on {fmt_time(rec.expires_at)}; "
                "ask for a new key.",
                code="key_expired",
            )
        cached = self._principals.get(rec.key_hash)
        if cached is None or cached[0] is not rec:
            cached = self._principals[rec.key_hash] = (rec, Principal.of(rec))
        return cached[1]


__all__ = [
    "ANONYMOUS",
    "KEY_PREFIX",
    "KEY_PREFIXES",
    "MASTER",
    "Authenticator",
    "KeyCache",
    "KeyNameTaken",
    "KeyRecord",
    "KeySpec",
    "KeySpecError",
    "KeyStore",
    "KeyWatcher",
    "NewKey",
    "Principal",
    "bearer_token",
    "fmt_time",
    "hash_secret",
    "new_secret",
    "parse_spec",
]
