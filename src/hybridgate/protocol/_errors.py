"""Errors a client sees, each rendered in OpenAI's shape: {"error": {message, type, param, code}}."""

from __future__ import annotations

from typing import Any


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class GatewayError(Exception):
    """Base of every error that becomes an HTTP answer; subclasses fix the status and type."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        b = error_body(self.message, self.type, self.param, self.code)
        b["error"].update(self.extra)
        return b


class BadRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ModelNotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeoutError(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RateLimitedError(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceededError(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class UpstreamUnavailableError(GatewayError):
    """Every candidate backend failed (503), or the forced one did (502)."""

    status = 503
    type = "server_error"
    code = "all_backends_failed"

    def __init__(self, message: str, *, status: int = 503, code: str | None = None, **kw: Any) -> None:
        super().__init__(message, code=code, **kw)
        self.status = status
        # The router's attempts (for the x-hybridgate-* headers); their summary is in the body already.
        self.attempts: list[Any] | None = None
