"""GET /v1/files/{key}: download an artifact by a signed, expiring link (the signature is the permission)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Query
from starlette.responses import StreamingResponse

from hybridgate.protocol import BadRequestError, NotFoundError, PermissionDeniedError
from hybridgate.protocol._control import ErrorResponse
from hybridgate.storage import InvalidKeyError, LinkError, Signer, Storage


def router(storage: Callable[[], Storage], signer: Callable[[], Signer]) -> APIRouter:
    r = APIRouter(tags=["files"])

    @r.get(
        "/v1/files/{key:path}",
        summary="Download a stored artifact through a signed link (as given in a job's artifacts)",
        response_class=StreamingResponse,
        responses={
            200: {"description": "The object's bytes, with its content type", "content": {"*/*": {}}},
            400: {"model": ErrorResponse, "description": "Malformed key"},
            403: {"model": ErrorResponse, "description": "Expired, altered or unsigned link"},
            404: {"model": ErrorResponse, "description": "No such object"},
        },
    )
    async def download(
        key: str,
        expires: str | None = Query(None, description="Expiry (epoch seconds) the link was signed with"),
        sig: str | None = Query(None, description="HMAC-SHA256 signature of the key and expiry"),
    ) -> StreamingResponse:
        try:
            signer().verify(key, expires, sig)
        except LinkError as e:
            raise PermissionDeniedError(str(e), param="sig", code="invalid_download_link") from None
        except InvalidKeyError as e:
            raise BadRequestError(str(e), param="key", code="invalid_key") from None
        store = storage()
        try:
            info = await store.stat(key)
        except InvalidKeyError as e:
            raise BadRequestError(str(e), param="key", code="invalid_key") from None
        if info is None:
            raise NotFoundError(
                f"No stored object '{key}' (it was deleted, or the link is for another store)."
            )

        async def body() -> AsyncIterator[bytes]:
            async for chunk in store.stream(key):
                yield chunk

        name = key.rsplit("/", 1)[-1]
        headers = {
            "Content-Length": str(info.size),
            "Content-Disposition": f'inline; filename="{name}"',
            "Cache-Control": "private, max-age=60",
        }
        if info.sha256:
            headers["ETag"] = f'"{info.sha256}"'
        return StreamingResponse(body(), media_type=info.content_type, headers=headers)

    return r


__all__ = ["router"]
