"""What a new key may carry, validated the same way for the CLI and the admin API."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from hybridgate.store import parse_time


class KeySpecError(ValueError):
    """A bad field in a key request; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class KeySpec(BaseModel):
    """A key to create. `expires_at`: a date, datetime, epoch seconds or a duration from now (30d)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    budget_usd: float | None = Field(None, ge=0, validation_alias=AliasChoices("budget_usd", "budget"))
    rpm: int | None = Field(None, ge=1)
    models: list[str] | None = None
    expires_at: str | float | None = None

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
                float(self.expires_at)
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
        raise KeySpecError(field, err["msg"]) from None


__all__ = ["KeySpec", "KeySpecError", "parse_spec"]
