"""Drive the SkyPilot SDK for hybridgate: one JSON command on stdin, one JSON result on stdout.

This file runs in a separate Python environment that has `skypilot` installed (`make .venv-sky`), never
in the gateway's (SkyPilot pins older `uvicorn` and `click` than the gateway's hot path uses). It imports
only the standard library and `sky`; the gateway runs it as `<skypilot python> _sky_driver.py`.

Result: `{"ok": true, "result": ...}` or `{"ok": false, "error": {"type": <SkyPilot exception class>,
"message": ...}}`; the caller maps the type to its own named errors. Anything the SDK prints goes to
stderr, so stdout carries exactly the one result line.

It never starts a SkyPilot API server (SKYPILOT_DISABLE_LOCAL_API_SERVER=1): the endpoint comes from
SKYPILOT_API_SERVER_ENDPOINT or ~/.sky/config.yaml. Usage collection is off.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

os.environ.setdefault("SKYPILOT_DISABLE_LOCAL_API_SERVER", "1")
os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")

PINNED = "0.14.1"


def _sdk() -> Any:
    from sky.client import sdk

    return sdk


def _wait_for(name: str | None) -> Any:
    from sky.skylet import autostop_lib

    return autostop_lib.AutostopWaitFor(name) if name else None


def _is_spot(record: Any) -> bool | None:
    handle = record.get("handle")
    launched = getattr(handle, "launched_resources", None)
    if launched is not None:
        return bool(getattr(launched, "use_spot", False))
    text = (record.get("resources_str_full") or record.get("resources_str") or "").lower()
    return "[spot]" in text if text else None


def _price(record: Any) -> float | None:
    """USD per hour from the catalog, when the handle and the catalog are at hand (needs the internet)."""
    handle = record.get("handle")
    launched = getattr(handle, "launched_resources", None)
    if launched is None:
        return None
    try:
        nodes = int(record.get("nodes") or 1)
        return float(launched.get_cost(3600)) * nodes
    except Exception:
        return None


def op_info(cmd: dict[str, Any]) -> Any:
    import sky
    from sky.server import constants

    info = _sdk().api_info()
    return {
        "server_status": str(getattr(info.status, "value", info.status)),
        "server_api_version": info.api_version,
        "server_version": info.version,
        "server_commit": info.commit,
        "client_version": sky.__version__,
        "client_api_version": constants.API_VERSION,
        "pinned": PINNED,
    }


def op_enabled_clouds(cmd: dict[str, Any]) -> Any:
    sdk = _sdk()
    return [str(c) for c in sdk.get(sdk.enabled_clouds())]


def op_launch(cmd: dict[str, Any]) -> Any:
    import sky

    task = sky.Task.from_yaml_config(cmd["task"])
    rid = _sdk().launch(
        task,
        cluster_name=cmd["name"],
        idle_minutes_to_autostop=cmd.get("idle_minutes"),
        wait_for=_wait_for(cmd.get("wait_for")),
        down=bool(cmd.get("down", False)),
        retry_until_up=False,
    )
    out: dict[str, Any] = {"request_id": str(rid)}
    if cmd.get("wait"):
        job_id, _handle = _sdk().get(rid)[:2]
        out["job_id"] = job_id
    return out


def _request_states(rids: list[str]) -> dict[str, Any]:
    """The state of each launch/start request; a failed one carries its error (re-raised by get)."""
    sdk = _sdk()
    out: dict[str, Any] = {}
    if not rids:
        return out
    found = {p.request_id: p for p in sdk.api_status(rids)}
    for rid in rids:
        p = found.get(rid)
        if p is None:
            out[rid] = {"status": "UNKNOWN"}
            continue
        state: dict[str, Any] = {"status": p.status}
        if p.status in ("FAILED", "CANCELLED"):
            try:
                sdk.get(rid)
            except BaseException as e:  # the request's own error, typed
                state["error"] = {"type": type(e).__name__, "message": str(e)[:2000]}
        out[rid] = state
    return out


def op_status(cmd: dict[str, Any]) -> Any:
    sdk = _sdk()
    names = cmd.get("names")
    port = cmd.get("port")
    requests = _request_states(list(cmd.get("request_ids") or []))
    records = sdk.get(sdk.status(names or None, all_users=False))
    clusters = []
    for r in records:
        status = getattr(r["status"], "value", r["status"])
        c: dict[str, Any] = {
            "name": r["name"],
            "status": status,
            "autostop": r.get("autostop"),
            "to_down": r.get("to_down"),
            "spot": _is_spot(r),
            "resources": r.get("resources_str_full") or r.get("resources_str"),
            "cloud": r.get("cloud"),
            "region": r.get("region"),
            "accelerators": r.get("accelerators"),
            "price_per_hour": _price(r),
            "launched_at": r.get("launched_at"),
            "endpoint": None,
        }
        if status == "UP" and port:
            try:
                ends = sdk.get(sdk.endpoints(r["name"], int(port)))
                c["endpoint"] = ends.get(int(port))
            except Exception as e:  # the cluster went away between the two calls, or no port yet
                c["endpoint_error"] = f"{type(e).__name__}: {e}"[:500]
        clusters.append(c)
    return {"clusters": clusters, "requests": requests}


def op_stop(cmd: dict[str, Any]) -> Any:
    sdk = _sdk()
    sdk.get(sdk.stop(cmd["name"]))
    return None


def op_down(cmd: dict[str, Any]) -> Any:
    sdk = _sdk()
    sdk.get(sdk.down(cmd["name"]))
    return None


def op_start(cmd: dict[str, Any]) -> Any:
    from sky import exceptions

    sdk = _sdk()
    # The start request itself only fails once it runs (minutes for a real cluster): say at once when
    # there is nothing to start (a spot cluster is torn down, not stopped).
    if not sdk.get(sdk.status([cmd["name"]], all_users=False)):
        raise exceptions.ClusterDoesNotExist(f"Cluster {cmd['name']!r} does not exist.")
    rid = sdk.start(
        cmd["name"],
        idle_minutes_to_autostop=cmd.get("idle_minutes"),
        wait_for=_wait_for(cmd.get("wait_for")),
        down=bool(cmd.get("down", False)),
    )
    return {"request_id": str(rid)}


def op_autostop(cmd: dict[str, Any]) -> Any:
    """Set (or re-arm) autostop. `rearm`: cancel first, so the idle timer starts again from now."""
    sdk = _sdk()
    if cmd.get("rearm"):
        sdk.get(sdk.autostop(cmd["name"], -1))
    sdk.get(
        sdk.autostop(
            cmd["name"],
            int(cmd["idle_minutes"]),
            wait_for=_wait_for(cmd.get("wait_for")),
            down=bool(cmd.get("down", False)),
        )
    )
    return None


def op_cancel(cmd: dict[str, Any]) -> Any:
    sdk = _sdk()
    return sdk.get(sdk.api_cancel(list(cmd["request_ids"]), silent=True))


def op_get(cmd: dict[str, Any]) -> Any:
    """Wait for a request (e.g. a launch a restarted gateway follows) and return its JSON-able result."""
    value = _sdk().get(cmd["request_id"])
    if isinstance(value, tuple):  # launch: (job_id, handle)
        return {"job_id": value[0]}
    return value if isinstance(value, str | int | float | bool | list | dict | type(None)) else repr(value)


OPS = {
    "info": op_info,
    "enabled_clouds": op_enabled_clouds,
    "launch": op_launch,
    "status": op_status,
    "stop": op_stop,
    "down": op_down,
    "start": op_start,
    "autostop": op_autostop,
    "cancel": op_cancel,
    "get": op_get,
}


def answer(line: str) -> dict[str, Any]:
    """One command's answer; every failure is an answer too, typed by its exception's class name."""
    try:
        cmd = json.loads(line)
        if not isinstance(cmd, dict) or cmd.get("op") not in OPS:
            raise ValueError(f"unknown command: {cmd!r:.200}")
        try:
            import sky  # noqa: F401
        except ImportError as e:
            return {
                "ok": False,
                "error": {"type": "SkyPilotNotInstalled", "message": f"{sys.executable}: {e}"},
            }
        return {"ok": True, "result": OPS[cmd["op"]](cmd)}
    except Exception as e:
        print(f"hybridgate sky driver: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
        if os.environ.get("HYBRIDGATE_SKY_DRIVER_DEBUG"):
            traceback.print_exc(file=sys.stderr)
        return {
            "ok": False,
            "error": {"type": type(e).__name__, "message": str(e)[:4000] or type(e).__name__},
        }


def main() -> int:
    """One command on stdin, one result line on stdout; with `--serve`, one per line until stdin ends
    (the provider keeps such a worker, so `import sky` is paid once, not per call)."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the SDK prints (e.g. "Running on cluster: ...") goes to stderr
    sys.stdout = sys.stderr
    lines = sys.stdin if "--serve" in sys.argv[1:] else [sys.stdin.read()]
    for line in lines:
        if not line.strip():
            continue
        out.write(json.dumps(answer(line), default=str) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
