"""Per-user API keys: generation, hashing, the table's CRUD, and the in-memory view the hot path reads.

A key is `hg-` plus 32 random bytes (256 bits, base64url); a key made for the Tinker SDK (which refuses
keys that do not start with `tml-`) has the prefix `tml-` instead, and is the same key in every other way.
Only its sha256 is stored: for secrets this
random a fast hash is enough (no dictionary to guess from), and it lets a lookup go by hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import func, insert, select, update

from hybridgate.auth._spec import KeyNameTaken, KeySpec
from hybridgate.store import Store, api_keys

log = logging.getLogger("hybridgate.auth")

KEY_PREFIX = "hg-"
# The prefixes a key may have: ours, and the one the official Tinker SDK insists on.
KEY_PREFIXES = ("hg-", "tml-")
_SHOWN = 8  # the prefix and 8 characters of the secret identify a key in listings


def new_secret(prefix: str = KEY_PREFIX) -> str:
    if prefix not in KEY_PREFIXES:
        raise ValueError(f"a key prefix is one of {', '.join(KEY_PREFIXES)}, not {prefix!r}")
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def fmt_time(ts: float | None) -> str:
    """A stored time as a UTC date. Never raises: a value no date can show (a row written before such
    values were refused) is shown as the number, so one bad row cannot break every listing."""
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return f"{ts!r} (epoch seconds, not a date)"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One row of api_keys, without the hash's secret (which was never stored)."""

    id: str
    name: str
    prefix: str
    key_hash: str
    created_at: float
    budget_usd: float | None = None
    rpm: int | None = None
    models: tuple[str, ...] | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    spent_usd: float = 0.0

    def status(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and (now or time.time()) >= self.expires_at:
            return "expired"
        return "active"

    def public(self) -> dict[str, Any]:
        """What listings show: everything but the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "status": self.status(),
            "budget": self.budget_usd,  # USD; None: no budget
            "spent": round(self.spent_usd, 8),  # USD
            "rpm": self.rpm,
            "models": list(self.models) if self.models is not None else None,
            "created_at": fmt_time(self.created_at),
            "expires_at": fmt_time(self.expires_at) if self.expires_at is not None else None,
            "revoked_at": fmt_time(self.revoked_at) if self.revoked_at is not None else None,
        }

    @classmethod
    def from_row(cls, row: Any) -> KeyRecord:
        m = row.models
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            key_hash=row.key_hash,
            created_at=row.created_at,
            budget_usd=row.budget_usd,
            rpm=row.rpm,
            models=tuple(orjson.loads(m)) if m else None,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            spent_usd=row.spent_usd or 0.0,
        )


@dataclass(frozen=True, slots=True)
class NewKey:
    """What `create` returns: the record and the secret, which is shown this once."""

    record: KeyRecord
    secret: str


class KeyStore:
    """The api_keys table. Used by the CLI, the admin API and the gateway's periodic reload."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(
        self,
        name: str,
        *,
        budget_usd: float | None = None,
        rpm: int | None = None,
        models: Iterable[str] | None = None,
        expires_at: float | None = None,
        prefix: str = KEY_PREFIX,
    ) -> NewKey:
        """Store a new key; KeyNameTaken when an active key (not revoked, not expired) has the name.

        `prefix`: "hg-" (the default) or "tml-", for the Tinker SDK."""
        secret = new_secret(prefix)
        now = time.time()
        rec = KeyRecord(
            id="key_" + secrets.token_hex(6),
            name=name,
            prefix=secret[: len(prefix) + _SHOWN],
            key_hash=hash_secret(secret),
            created_at=now,
            budget_usd=budget_usd,
            rpm=rpm,
            models=tuple(models) if models is not None else None,
            expires_at=expires_at,
        )
        async with self.store.engine.begin() as conn:
            # In the transaction that inserts; a revoked or expired key's name is free again (how a key is
            # replaced). Two creates racing on one name can both pass: no unique index backs this.
            same_name = await conn.execute(
                select(api_keys.c.id, api_keys.c.expires_at).where(
                    api_keys.c.name == name, api_keys.c.revoked_at.is_(None)
                )
            )
            for row in same_name:
                if row.expires_at is None or row.expires_at > now:
                    raise KeyNameTaken(name, row.id)
            await conn.execute(
                insert(api_keys).values(
                    id=rec.id,
                    name=rec.name,
                    prefix=rec.prefix,
                    key_hash=rec.key_hash,
                    created_at=rec.created_at,
                    budget_usd=rec.budget_usd,
                    rpm=rec.rpm,
                    models=orjson.dumps(list(rec.models)).decode() if rec.models is not None else None,
                    expires_at=rec.expires_at,
                    spent_usd=0.0,
                )
            )
        return NewKey(rec, secret)

    async def create_spec(self, spec: KeySpec) -> NewKey:
        return await self.create(
            spec.name,
            budget_usd=spec.budget_usd,
            rpm=spec.rpm,
            models=spec.models,
            expires_at=spec.expiry(),
            prefix=spec.prefix,
        )

    async def all(self) -> list[KeyRecord]:
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
        return [KeyRecord.from_row(r) for r in rows]

    async def get(self, key_id: str) -> KeyRecord | None:
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return KeyRecord.from_row(row) if row is not None else None

    async def count(self) -> int:
        async with self.store.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(api_keys))).scalar_one())

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Mark a key revoked (the row stays, for the ledger's sake); None if there is no such key."""
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return KeyRecord.from_row(row) if row is not None else None


@dataclass
class KeyCache:
    """Every key's record by hash, in memory: what authentication reads, so a request never queries.

    The gateway reloads it from the database every `ttl_s` seconds, so a key created or revoked by another
    process (the CLI, another replica) takes effect within that time; the admin API updates it at once.
    """

    ttl_s: float = 2.0
    by_hash: dict[str, KeyRecord] = field(default_factory=dict)

    @property
    def any_keys(self) -> bool:
        """Once any key exists (even a revoked one) the gateway requires a key on every /v1 call."""
        return bool(self.by_hash)

    def replace(self, records: Iterable[KeyRecord]) -> None:
        self.by_hash = {r.key_hash: r for r in records}

    def put(self, record: KeyRecord) -> None:
        self.by_hash = {**self.by_hash, record.key_hash: record}

    def lookup(self, secret: str) -> KeyRecord | None:
        digest = hash_secret(secret)
        rec = self.by_hash.get(digest)
        # The dict lookup found a candidate by hash; confirm in constant time all the same.
        if rec is None or not hmac.compare_digest(rec.key_hash, digest):
            return None
        return rec


class KeyWatcher:
    """Keeps a KeyCache equal to the table: loaded at start, then reloaded every `cache.ttl_s`."""

    def __init__(self, keys: KeyStore, cache: KeyCache) -> None:
        self.keys, self.cache = keys, cache
        self._task: asyncio.Task[None] | None = None

    async def reload(self) -> None:
        self.cache.replace(await self.keys.all())

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._loop(), name="keys:reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.cache.ttl_s)
            try:
                await self.reload()
            except Exception as e:  # keep serving from the last good view; say so once
                if not failing:
                    log.error("cannot reload API keys (serving from the last loaded view): %s", e)
                failing = True
            else:
                if failing:
                    log.info("API keys reloaded again")
                failing = False


__all__ = [
    "KEY_PREFIX",
    "KEY_PREFIXES",
    "KeyCache",
    "KeyRecord",
    "KeyStore",
    "KeyWatcher",
    "NewKey",
    "fmt_time",
    "hash_secret",
    "new_secret",
]
