"""Who is calling, for the control plane: the gateway's one `Authenticator`, as FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hybridgate.auth import Authenticator, KeyCache, Principal, bearer_token
from hybridgate.protocol import AuthenticationError, PermissionDeniedError
from hybridgate.protocol._control import ErrorResponse

# Only so /docs offers "Authorize" and /openapi.json names the scheme; the header is checked below.
bearer = HTTPBearer(auto_error=False, description="An API key, or the master key (HYBRIDGATE_MASTER_KEY)")

# What `caller` answers instead of the route, for the `responses` of every router that depends on it.
UNAUTHENTICATED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"}
}


def caller(auth: Authenticator) -> Callable[..., Awaitable[Principal]]:
    """A dependency giving the request's Principal, as the hot path authenticates it (401 when not)."""

    async def principal(
        request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer)
    ) -> Principal:
        return await auth.authenticate(request.headers.get("authorization"))

    return principal


def master(auth: Authenticator, cache: KeyCache) -> Callable[..., Awaitable[None]]:
    """A dependency that admits the master key only, saying exactly what is wrong otherwise."""

    async def require_master(
        request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer)
    ) -> None:
        if not auth.has_master:
            raise PermissionDeniedError(
                "The admin API is off: it needs HYBRIDGATE_MASTER_KEY set on the gateway. "
                "Without one, manage keys on the gateway's machine with "
                "`hybridgate keys create|list|revoke --config FILE`.",
                code="admin_disabled",
            )
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise AuthenticationError(
                "Missing master key: send 'Authorization: Bearer <HYBRIDGATE_MASTER_KEY>'."
            )
        if auth.is_master(token):
            return
        if cache.lookup(token) is not None:
            raise PermissionDeniedError(
                "The admin API needs the master key; an API key cannot manage keys.", code="not_master"
            )
        raise AuthenticationError("Invalid master key.")

    return require_master


__all__ = ["UNAUTHENTICATED", "bearer", "caller", "master"]
