"""Inference without HTTP: validate, authorise the model, build the router's Call, shape the answer.

The API layer binds this to ASGI and only writes JSON or SSE; tests and other front ends (a job worker,
a training run's sampler) call it directly.
"""

from hybridgate.serving._context import RequestContext
from hybridgate.serving._inference import InferenceService, Prepared, attempt_headers, request_id

__all__ = ["InferenceService", "Prepared", "RequestContext", "attempt_headers", "request_id"]
