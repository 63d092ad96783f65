"""One JSON line per request, plus ordinary log records rendered the same way."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

import orjson

_root = logging.getLogger("hybridgate")
request_log = logging.getLogger("hybridgate.request")

# Request lines wait at most this long before they are written, so that a busy gateway writes them
# in a few large writes instead of one system call per request.
FLUSH_S = 0.1
MAX_PENDING_CHARS = 64 * 1024


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


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """JSON lines on a stream. Request lines skip the LogRecord machinery and are written in batches.

    A request line is written at most FLUSH_S after it was logged, or at once when any other record is
    (so lines stay in order), when MAX_PENDING_CHARS are waiting, or at exit (logging.shutdown flushes).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())
        self._pending: list[str] = []
        self._pending_chars = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add_line(self, line: str) -> None:
        """Queue one ready-made line (ending in a newline) for the next batched write."""
        self._pending.append(line)
        self._pending_chars += len(line)
        if self._pending_chars >= MAX_PENDING_CHARS:
            self.write_pending()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script, a test): write now
            self.write_pending()
            return
        if self._timer is None or self._timer_loop is not loop:
            self._timer_loop = loop
            self._timer = loop.call_later(FLUSH_S, self.write_pending)

    def write_pending(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        with self.lock:  # type: ignore[union-attr]
            pending, self._pending, self._pending_chars = self._pending, [], 0
            try:
                self.stream.write("".join(pending))
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stderr must not break a request
                pass

    def emit(self, record: logging.LogRecord) -> None:
        self.write_pending()
        super().emit(record)

    def flush(self) -> None:
        self.write_pending()
        super().flush()


_handler: JsonLinesHandler | None = None


def configure_logging(level: str = "INFO") -> None:
    global _handler
    handler = JsonLinesHandler(sys.stderr)
    _root.handlers[:] = [handler]
    _root.setLevel(level.upper())
    _root.propagate = False
    _handler = handler


def flush_logs() -> None:
    """Write request lines still waiting (the app's shutdown calls this)."""
    if _handler is not None:
        _handler.write_pending()


def log_request(fields: dict[str, Any]) -> None:
    if not request_log.isEnabledFor(logging.INFO):
        return
    ts = round(time.time(), 3)
    fields.setdefault("ts_end", ts)
    h = _handler
    if h is None or request_log.handlers or h not in _root.handlers:
        # Logging was set up by someone else (a host application, a test): go through it.
        request_log.info("request", extra={"fields": fields})
        return
    line = {"ts": ts, "level": "info", "logger": "hybridgate.request", "msg": "request", **fields}
    h.add_line(orjson.dumps(line).decode() + "\n")
