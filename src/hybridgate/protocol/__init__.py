"""OpenAI wire shapes shared by every layer: request models, response builders and error types."""

from hybridgate.protocol._errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    GatewayError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTimeoutError,
    UpstreamUnavailableError,
    error_body,
)
from hybridgate.protocol._openai import (
    ChatCompletionRequest,
    CompletionRequest,
    chunk_body,
    completion_id,
    parse_request,
    prompt_text,
    response_body,
    usage_chunk,
)
from hybridgate.protocol._operations import Endpoint, Operation, Usage

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "Endpoint",
    "GatewayError",
    "ModelNotFoundError",
    "NotFoundError",
    "Operation",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestTimeoutError",
    "UpstreamUnavailableError",
    "Usage",
    "chunk_body",
    "completion_id",
    "error_body",
    "parse_request",
    "prompt_text",
    "response_body",
    "usage_chunk",
]
