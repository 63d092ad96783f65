"""/admin/keys: list, create and revoke API keys over HTTP, with the master key only.

GET /admin/keys, POST /admin/keys, GET /admin/keys/{id}, DELETE /admin/keys/{id} (revokes; the row stays
for the ledger), POST /admin/keys/{id}/revoke. Changes take effect in this process at once and in other
processes sharing the database within the key cache's TTL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson

from hybridgate._asgi import Receive, Scope, Send, header, read_body, send_error, send_json
from hybridgate.auth import Authenticator, KeyCache, KeySpecError, KeyStore, bearer_token, parse_spec
from hybridgate.protocol import (
    AuthenticationError,
    BadRequestError,
    GatewayError,
    NotFoundError,
    PermissionDeniedError,
)

log = logging.getLogger("hybridgate.admin")

PREFIX = "/admin/"
_MAX_BODY = 64 * 1024


class AdminAPI:
    """An ASGI handler for everything under /admin/."""

    def __init__(
        self, auth: Authenticator, keys: KeyStore, cache: KeyCache, models: Callable[[], list[str]]
    ) -> None:
        self.auth, self.keys, self.cache, self.models = auth, keys, cache, models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._check_master(header(scope, b"authorization"))
            await self._route(scope, receive, send)
        except GatewayError as e:
            await send_error(send, e)
        except Exception as e:
            log.exception("admin API error on %s %s", scope["method"], scope["path"])
            await send_error(send, GatewayError(f"Internal gateway error: {type(e).__name__}"))

    def _check_master(self, authorization: str | None) -> None:
        if not self.auth.has_master:
            raise PermissionDeniedError(
                "The admin API is off: it needs HYBRIDGATE_MASTER_KEY set on the gateway. "
                "Without one, manage keys on the gateway's machine with "
                "`hybridgate keys create|list|revoke --config FILE`.",
                code="admin_disabled",
            )
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "Missing master key: send 'Authorization: Bearer <HYBRIDGATE_MASTER_KEY>'."
            )
        if self.auth.is_master(token):
            return
        if self.cache.lookup(token) is not None:
            raise PermissionDeniedError(
                "The admin API needs the master key; an API key cannot manage keys.", code="not_master"
            )
        raise AuthenticationError("Invalid master key.")

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        parts = [p for p in scope["path"].split("/") if p]  # ["admin", "keys", id?, "revoke"?]
        if parts[:2] != ["admin", "keys"] or len(parts) > 4 or (len(parts) == 4 and parts[3] != "revoke"):
            raise NotFoundError(
                f"Unknown path {scope['path']}. "
                "The admin API serves /admin/keys and /admin/keys/{id}[/revoke]."
            )
        if len(parts) == 2:
            if method == "GET":
                await send_json(
                    send, 200, {"object": "list", "data": [r.public() for r in await self.keys.all()]}
                )
            elif method == "POST":
                await self._create(scope, receive, send)
            else:
                raise _not_allowed(method, scope["path"], "GET, POST")
            return
        key_id = parts[2]
        if len(parts) == 3 and method == "GET":
            rec = await self.keys.get(key_id)
            if rec is None:
                raise _no_key(key_id)
            await send_json(send, 200, rec.public())
        elif (len(parts) == 3 and method == "DELETE") or (len(parts) == 4 and method == "POST"):
            rec = await self.keys.revoke(key_id)
            if rec is None:
                raise _no_key(key_id)
            self.cache.put(rec)
            await send_json(send, 200, rec.public())
        else:
            raise _not_allowed(method, scope["path"], "GET, DELETE" if len(parts) == 3 else "POST")

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(scope, receive, _MAX_BODY)
        try:
            data = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as e:
            raise BadRequestError(f"The body is not valid JSON: {e}.") from None
        try:
            spec = parse_spec(data)
            spec.check_models(self.models())
            spec.expiry()
        except KeySpecError as e:
            raise BadRequestError(e.message, param=e.field) from None
        new = await self.keys.create_spec(spec)
        self.cache.put(new.record)  # usable on this gateway at once
        await send_json(send, 201, {**new.record.public(), "key": new.secret})


def _no_key(key_id: str) -> NotFoundError:
    return NotFoundError(f"No API key with id '{key_id}'; GET /admin/keys lists them.", param="id")


def _not_allowed(method: str, path: str, allowed: str) -> GatewayError:
    err = BadRequestError(
        f"Method {method} is not allowed on {path} (allowed: {allowed}).", code="method_not_allowed"
    )
    err.status = 405
    return err


__all__ = ["PREFIX", "AdminAPI"]
