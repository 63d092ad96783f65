"""Who is calling: the master key now; per-user keys plug in behind the same `Authenticator`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from hybridgate.protocol import AuthenticationError


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    key_id: str | None = None
    name: str = "anonymous"
    is_master: bool = False


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
    """Checks the `Authorization: Bearer` header of every /v1 call."""

    def __init__(self, master_key: str | None) -> None:
        self._master = master_key.encode() if master_key else None

    @property
    def required(self) -> bool:
        return self._master is not None

    def is_master(self, token: str | None) -> bool:
        return self._master is not None and token is not None and hmac.compare_digest(token.encode(), self._master)

    async def authenticate(self, authorization: str | None) -> Principal:
        if self._master is None:
            return ANONYMOUS
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>' (this gateway has HYBRIDGATE_MASTER_KEY set)."
            )
        if self.is_master(token):
            return MASTER
        raise AuthenticationError("Invalid API key.")


__all__ = ["ANONYMOUS", "MASTER", "Authenticator", "Principal", "bearer_token"]
