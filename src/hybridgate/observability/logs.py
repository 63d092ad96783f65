"""One JSON line per request, plus ordinary log records rendered the same way."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

request_log = logging.getLogger("hybridgate.request")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("hybridgate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def log_request(fields: dict[str, Any]) -> None:
    if request_log.isEnabledFor(logging.INFO):
        fields.setdefault("ts_end", round(time.time(), 3))
        request_log.info("request", extra={"fields": fields})
