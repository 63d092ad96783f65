"""GET /health (liveness: no backend calls) and GET /health/backends (the router's view of each backend)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hybridgate import __version__

if TYPE_CHECKING:
    from hybridgate.api.app import Gateway


def liveness(gw: Gateway) -> dict[str, Any]:
    return {"status": "ok", "version": __version__, "uptime_s": round(time.time() - gw.started_at, 1)}


def backends(gw: Gateway) -> dict[str, Any]:
    snaps = [s.snapshot() for s in gw.manager.states.values()]
    return {
        "status": "ok" if any(s["routable"] for s in snaps) else "degraded",
        "backends": snaps,
    }
