"""One owner of a pod pool's decisions across gateway processes: a lease row in the shared database.

Every process runs the same pool; only the holder of the pool's lease launches, stops and scales pods.
The others follow the provider's list (the holder's pods become their replicas too) and leave their
signals in the row: `wanted_at` (a call of theirs found no ready pod) and `active_at` (they had calls in
flight), which the holder counts as its own demand and activity. A lease not renewed within `ttl_s`
(its holder crashed) is taken over by the next process to ask.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("hybridgate.pods")

pod_leases = Table(
    "pod_leases",
    MetaData(),
    Column("name", String(200), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("wanted_at", Float, nullable=False, server_default="0"),
    Column("active_at", Float, nullable=False, server_default="0"),
)


class Lease:
    """The lease of one pool (`name`) for one process (`owner`)."""

    def __init__(
        self,
        engine: Callable[[], AsyncEngine],
        name: str,
        owner: str,
        *,
        ttl_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self.name, self.owner, self.ttl_s, self.clock = name, owner, ttl_s, clock
        self.wanted_at = 0.0
        self.active_at = 0.0

    async def acquire(self) -> bool:
        """Take or renew the lease; True when this process holds it now. Reads the others' signals."""
        t = pod_leases
        now = self.clock()
        engine = self._engine()
        async with engine.begin() as conn:
            res = await conn.execute(
                update(t)
                .where(t.c.name == self.name, or_(t.c.owner == self.owner, t.c.expires_at < now))
                .values(owner=self.owner, expires_at=now + self.ttl_s)
            )
            row = (
                await conn.execute(select(t.c.wanted_at, t.c.active_at).where(t.c.name == self.name))
            ).first()
        if row is not None:
            self.wanted_at, self.active_at = float(row[0]), float(row[1])
        if res.rowcount == 1:
            return True
        if row is not None:
            return False
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(t).values(name=self.name, owner=self.owner, expires_at=now + self.ttl_s)
                )
            return True
        except IntegrityError:
            return False  # another process inserted it first

    async def signal(self, *, wanted: bool, active: bool) -> None:
        """A follower's demand and activity, for the holder to count."""
        if not (wanted or active):
            return
        t = pod_leases
        now = self.clock()
        values: dict[str, Any] = {}
        if wanted:
            values["wanted_at"] = now
        if active:
            values["active_at"] = now
        async with self._engine().begin() as conn:
            await conn.execute(update(t).where(t.c.name == self.name).values(**values))

    async def release(self) -> None:
        t = pod_leases
        async with self._engine().begin() as conn:
            await conn.execute(
                update(t).where(t.c.name == self.name, t.c.owner == self.owner).values(expires_at=0.0)
            )


__all__ = ["Lease", "pod_leases"]
