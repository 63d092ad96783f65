"""What a `hybridgate check` run is asked to do, validated first, so bad input exits 3 before any request."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

SUITES = ("smoke", "contract", "canary", "load")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class CheckConfigError(Exception):
    """The check cannot start: a bad option; the message names it (exit code 3)."""


def parse_duration(text: str) -> float:
    """Seconds from `30`, `30s`, `1m30s`, `500ms` or `2h`; ValueError names the bad text."""
    s = text.strip().lower()
    try:
        value = float(s)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise ValueError(f"not a duration: {text!r} (use e.g. 30, 30s, 1m30s, 500ms)") from None
    if value < 0:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return value


def parse_suites(text: str) -> tuple[str, ...]:
    """`smoke`, `all` or a comma list like `smoke,canary`, in the canonical order."""
    names = {n.strip().lower() for n in text.split(",") if n.strip()}
    if "all" in names:
        names = set(SUITES) | (names - {"all"})
    unknown = sorted(names - set(SUITES))
    if unknown or not names:
        raise CheckConfigError(
            f"--suite: unknown suite {', '.join(map(repr, unknown)) or repr(text)}; "
            f"choose from {', '.join(SUITES)}, all (comma-separate several)"
        )
    return tuple(s for s in SUITES if s in names)


def root_url(target: str) -> str:
    """The server's root, where GET /health lives: the target without its trailing /v1."""
    t = target.rstrip("/")
    return t[: -len("/v1")] if t.endswith("/v1") else t


@dataclass(frozen=True)
class CheckOptions:
    """Everything one run needs; build with `CheckOptions.create`, which validates."""

    target: str
    suites: tuple[str, ...] = ("smoke",)
    api_key: str | None = None
    model: str | None = None
    duration_s: float = 30.0
    users: int = 4
    spawn_rate: float = 4.0
    max_p95_ms: float | None = None
    max_error_rate: float | None = None
    request_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0

    # The smoke suite's latency test needs a bound even when --max-p95-ms is not given.
    default_smoke_p95_ms: float = 5000.0

    @property
    def root(self) -> str:
        return root_url(self.target)

    @classmethod
    def create(
        cls,
        target: str,
        suite: str = "smoke",
        *,
        api_key: str | None = None,
        model: str | None = None,
        duration: str | float = "30s",
        users: int = 4,
        spawn_rate: float | None = None,
        max_p95_ms: float | None = None,
        max_error_rate: float | None = None,
        request_timeout_s: float = 60.0,
    ) -> CheckOptions:
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CheckConfigError(
                f"--target: {target!r} is not an http(s) URL; give the OpenAI base URL, e.g. http://127.0.0.1:8080/v1"
            )
        suites = parse_suites(suite)
        try:
            duration_s = parse_duration(duration) if isinstance(duration, str) else float(duration)
        except ValueError as e:
            raise CheckConfigError(f"--duration: {e}") from None
        if "load" in suites and duration_s <= 0:
            raise CheckConfigError("--duration must be more than zero for the load suite")
        if users < 1:
            raise CheckConfigError(f"--users must be at least 1 (got {users})")
        rate = float(users) if spawn_rate is None else spawn_rate
        if rate <= 0:
            raise CheckConfigError(f"--spawn-rate must be more than zero (got {spawn_rate})")
        if max_p95_ms is not None and max_p95_ms <= 0:
            raise CheckConfigError(f"--max-p95-ms must be more than zero (got {max_p95_ms})")
        if max_error_rate is not None and not 0 <= max_error_rate <= 1:
            raise CheckConfigError(f"--max-error-rate is a fraction between 0 and 1 (got {max_error_rate})")
        if request_timeout_s <= 0:
            raise CheckConfigError(f"--request-timeout must be more than zero (got {request_timeout_s})")
        if model is not None and not model.strip():
            raise CheckConfigError("--model cannot be empty")
        return cls(
            target=target.rstrip("/"),
            suites=suites,
            api_key=api_key or None,
            model=model,
            duration_s=duration_s,
            users=users,
            spawn_rate=rate,
            max_p95_ms=max_p95_ms,
            max_error_rate=max_error_rate,
            request_timeout_s=request_timeout_s,
        )
