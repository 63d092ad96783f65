"""The tables behind keys and the ledger, as SQLAlchemy Core (one definition for SQLite and PostgreSQL).

Times are epoch seconds (double precision): comparable and portable across both databases. The ledger also
stores the UTC day as text, so grouping by day needs no dialect-specific date functions.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

# Stable constraint names, so migrations can refer to them on every backend.
metadata = MetaData(
    naming_convention={
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    # The first characters of the secret, shown in listings so a person can tell keys apart.
    Column("prefix", String(16), nullable=False),
    # sha256 of the secret, hex; the secret itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("budget_usd", Float, nullable=True),
    Column("rpm", Integer, nullable=True),
    # JSON list of public model names the key may use; NULL means every model.
    Column("models", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    # Added by revision 0002 with the ledger: kept equal to the sum of the key's ledger costs.
    Column("spent_usd", Float, nullable=False, server_default="0"),
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")

ledger = Table(
    "ledger",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("key_name", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    Column("backend", String(200), nullable=False),
    Column("backend_model", String(200), nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    # True when the backend reported no usage and the tokens were counted or estimated here.
    Column("estimated", Boolean, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("status", Integer, nullable=True),
    Column("ok", Boolean, nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("error", Text, nullable=True),
    Column("cost_usd", Float, nullable=False),
    # Added by revision 0003: usage in units beyond tokens, and which operation the attempt ran.
    Column("operation", String(32), nullable=True),
    Column("images", Integer, nullable=False, server_default="0"),
    Column("gpu_seconds", Float, nullable=False, server_default="0"),
    Column("training_tokens", BigInteger, nullable=False, server_default="0"),
    Index("ix_ledger_key_id_ts", "key_id", "ts"),
    Index("ix_ledger_ts", "ts"),
)

__all__ = ["api_keys", "ledger", "metadata"]
