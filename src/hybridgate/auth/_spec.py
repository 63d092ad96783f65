"""What a new key may carry, validated the same way for the CLI and the admin API."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from hybridgate.store import parse_time
from hybridgate.store._time import check_time

# Bounds on what a key may carry. Past them a value is a typo (or an attack), and it must be refused before
# anything is written: a stored value that cannot be used breaks every later listing of keys.
MAX_BUDGET_USD = 1e9
MAX_RPM = 2**31 - 1  # an INTEGER column, on PostgreSQL too


class KeySpecError(ValueError):
    """A bad field in a key request; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class KeyNameTaken(KeySpecError):
    """An active key already has this name: two keys one name cannot be told apart in listings and reports."""

    def __init__(self, name: str, key_id: str) -> None:
        super().__init__(
            "name",
            f"an active key named '{name}' already exists ({key_id}); revoke it first, or choose another name",
        )
        self.key_id = key_id


class KeySpec(BaseModel):
    """A key to create. `expires_at`: a date, datetime, epoch seconds or a duration from now (30d)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    # strict: `true` is not a budget of $1 nor a limit of 1 rpm, and "5" is not a number
    budget_usd: float | None = Field(
        None,
        ge=0,
        le=MAX_BUDGET_USD,
        strict=True,
        allow_inf_nan=False,
        validation_alias=AliasChoices("budget_usd", "budget"),
    )
    rpm: int | None = Field(None, ge=1, le=MAX_RPM, strict=True)
    models: list[str] | None = None
    expires_at: str | float | None = None
    # "tml-" makes a key the official Tinker SDK accepts (it refuses any other prefix)
    prefix: Literal["hg-", "tml-"] = "hg-"

    @field_validator("expires_at", mode="before")
    @classmethod
    def _expires_at(cls, v: object) -> object:
        if v is not None and (isinstance(v, bool) or not isinstance(v, str | int | float)):
            shown = str(v).lower() if isinstance(v, bool) else repr(v)  # as JSON writes true and false
            raise ValueError(f"give a date, a datetime, epoch seconds or a duration such as 30d, not {shown}")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        out = list(dict.fromkeys(m.strip() for m in v if m.strip()))
        if not out:
            raise ValueError("give at least one model name, or leave models out to allow every model")
        return out

    def expiry(self, now: float | None = None) -> float | None:
        """The expiry as epoch seconds; a time in the past is a mistake, not a dead key."""
        if self.expires_at is None or self.expires_at == "":
            return None
        now = time.time() if now is None else now
        try:
            ts = (
                check_time(float(self.expires_at), self.expires_at)
                if isinstance(self.expires_at, int | float)
                else parse_time(self.expires_at, now=now, future=True)
            )
        except ValueError as e:
            raise KeySpecError("expires_at", str(e)) from None
        if ts <= now:
            raise KeySpecError("expires_at", f"'{self.expires_at}' is in the past")
        return ts

    def check_models(self, known: Sequence[str]) -> None:
        """Refuse model names this gateway does not serve (a typo would make a key that can do nothing)."""
        for m in self.models or ():
            if m not in known:
                raise KeySpecError(
                    "models", f"'{m}' is not a model of this gateway (it serves: {', '.join(known)})"
                )


def parse_spec(data: object) -> KeySpec:
    """Validate a JSON body or CLI options into a KeySpec, or raise KeySpecError naming the field."""
    try:
        return KeySpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise KeySpecError(field, err["msg"].removeprefix("Value error, ")) from None


__all__ = ["MAX_BUDGET_USD", "MAX_RPM", "KeyNameTaken", "KeySpec", "KeySpecError", "parse_spec"]
