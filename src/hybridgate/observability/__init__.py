"""Structured request logs and Prometheus metrics; nothing here is awaited on the request path."""

from hybridgate.observability.logs import configure_logging, flush_logs, log_request
from hybridgate.observability.metrics import Metrics

__all__ = ["Metrics", "configure_logging", "flush_logs", "log_request"]
