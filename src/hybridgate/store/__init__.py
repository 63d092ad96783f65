"""The database: SQLAlchemy tables, an async engine per process, and Alembic migrations run at open."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from hybridgate.store._engine import StoreError, async_url, create_engine, sqlite_path
from hybridgate.store._migrate import current_revision, head_revision, migrate
from hybridgate.store._tables import (
    api_keys,
    job_events,
    jobs,
    ledger,
    lora_versions,
    metadata,
    webhook_deliveries,
)
from hybridgate.store._time import parse_time


class Store:
    """The database named by `database:` in the config. Built cheaply; connects on `open()`."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(self.database)
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def open(self, *, upgrade: bool = True) -> None:
        """Connect and bring the schema to the newest revision; raise StoreError when unreachable."""
        try:
            if upgrade:
                await migrate(self.engine, self.database)
            else:
                async with self.engine.connect():
                    pass
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"database {self.describe()} cannot be used: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def describe(self) -> str:
        """The URL without its password, for messages."""
        from sqlalchemy.engine import make_url

        return make_url(self.database).render_as_string(hide_password=True)


__all__ = [
    "Store",
    "StoreError",
    "api_keys",
    "async_url",
    "create_engine",
    "current_revision",
    "head_revision",
    "job_events",
    "jobs",
    "ledger",
    "lora_versions",
    "metadata",
    "migrate",
    "parse_time",
    "sqlite_path",
    "webhook_deliveries",
]
