"""`hybridgate pods`: the cloud pods of a running gateway, through its /v1/pods API (master key).

list [--status S], status ID, start --backend NAME, stop ID, resume ID, terminate ID. The slow steps
(minutes for a real pod) run on the gateway; `--wait` follows the pod's transitions until it gets there.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
import typer

from hybridgate.cli._common import EXIT_UNREACHABLE, OutputOpt, check_output, fail, print_rich

pods_app = typer.Typer(
    help="Cloud GPU pods of a running gateway: list, status, start, stop, resume, terminate.",
    no_args_is_help=True,
)

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="HYBRIDGATE_URL", help="The gateway (default http://127.0.0.1:8080)."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key", envvar="HYBRIDGATE_MASTER_KEY", help="The master key (default $HYBRIDGATE_MASTER_KEY)."
    ),
]
WaitOpt = Annotated[
    float,
    typer.Option(
        "--wait",
        min=0,
        help="Follow the pod until it gets there, at most this many seconds (0: do not wait).",
    ),
]
STATES = ("stopped", "provisioning", "warming", "ready", "draining", "failed")


def _call(method: str, url: str, key: str | None, path: str, params: dict[str, str] | None = None) -> Any:
    import httpx

    if not key:
        raise fail("the pods API needs the master key: --key or HYBRIDGATE_MASTER_KEY")
    try:
        r = httpx.request(
            method,
            url.rstrip("/") + path,
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
    except httpx.HTTPError as e:
        raise fail(f"cannot reach the gateway at {url}: {e}", EXIT_UNREACHABLE) from None
    try:
        body = r.json()
    except ValueError:
        raise fail(
            f"{url} answered HTTP {r.status_code} without JSON; is it a hybridgate gateway?", 1
        ) from None
    if r.status_code >= 400:
        msg = body.get("error", {}).get("message") if isinstance(body, dict) else None
        raise fail(f"HTTP {r.status_code}: {msg or body}", EXIT_UNREACHABLE if r.status_code >= 500 else 1)
    return body


def _show(pods: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        typer.echo(orjson.dumps(pods, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.table import Table

    t = Table("id", "backend", "lifecycle", "gpu", "$/h", "billed s", "busy", "endpoint", "last error")
    for p in pods:
        util = p.get("utilisation")
        t.add_row(
            str(p.get("id") or "-"),
            p["backend"],
            p["lifecycle"],
            str(p.get("gpu") or "-"),
            f"{p.get('cost_per_hr') or 0:g}",
            f"{p.get('billed_s') or 0:.0f}",
            "-" if util is None else f"{util:.0%}",
            str(p.get("endpoint") or "-"),
            str(p.get("last_error") or ""),
        )
    print_rich(t)


def _follow(
    url: str, key: str | None, pod: dict[str, Any], target: set[str], wait_s: float
) -> dict[str, Any]:
    """Print each transition until the pod reaches `target` (or is gone), at most `wait_s`."""
    seen = 0
    deadline = time.monotonic() + wait_s
    while True:
        for t in pod.get("transitions", [])[seen:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(t["at"]))
            typer.echo(f"{stamp} {t['state']}" + (f": {t['note']}" if t["note"] else ""), err=True)
        seen = len(pod.get("transitions", []))
        if pod["lifecycle"] in target or time.monotonic() >= deadline:
            return pod
        time.sleep(1.0)
        if pod.get("id"):
            try:
                pod = _call("GET", url, key, f"/v1/pods/{pod['id']}")
            except typer.Exit:
                if "stopped" in target:  # terminated: it is gone
                    return {**pod, "lifecycle": "stopped"}
                raise
        else:  # not created at the provider yet: find it by name
            listed = _call("GET", url, key, "/v1/pods")["data"]
            pod = next((p for p in listed if p["name"] == pod["name"]), pod)


@pods_app.command("list")
def list_pods(
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
    status: Annotated[str | None, typer.Option(help=f"Only pods in this state: {', '.join(STATES)}.")] = None,
    output: OutputOpt = "table",
) -> None:
    """Every pod of every pod backend."""
    check_output(output)
    if status is not None and status not in STATES:
        raise fail(f"--status must be one of {', '.join(STATES)}, not '{status}'")
    params = {"status": status} if status else None
    _show(_call("GET", url, key, "/v1/pods", params)["data"], output)


@pods_app.command("status")
def status_pod(
    pod_id: str, url: UrlOpt = "http://127.0.0.1:8080", key: KeyOpt = None, output: OutputOpt = "table"
) -> None:
    """One pod, with its transitions."""
    check_output(output)
    pod = _call("GET", url, key, f"/v1/pods/{pod_id}")
    _show([pod], output)
    if output == "table":
        for t in pod["transitions"]:
            typer.echo(
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t['at']))} {t['state']}  {t['note']}"
            )


@pods_app.command("start")
def start_pod(
    backend: Annotated[str, typer.Option(help="The pod backend's name.")],
    url: UrlOpt = "http://127.0.0.1:8080",
    key: KeyOpt = None,
    wait: WaitOpt = 0.0,
    output: OutputOpt = "table",
) -> None:
    """Start (or resume) one more pod of a pod backend."""
    check_output(output)
    pod = _call("POST", url, key, "/v1/pods/start", {"backend": backend})
    if wait:
        pod = _follow(url, key, pod, {"ready", "failed", "stopped"}, wait)
    _show([pod], output)
    if wait and pod["lifecycle"] != "ready":
        raise typer.Exit(1)


def _action(verb: str, target: set[str]) -> Any:
    def act(
        pod_id: str,
        url: UrlOpt = "http://127.0.0.1:8080",
        key: KeyOpt = None,
        wait: WaitOpt = 0.0,
        output: OutputOpt = "table",
    ) -> None:
        check_output(output)
        pod = _call("POST", url, key, f"/v1/pods/{pod_id}/{verb}")
        if wait:
            pod = _follow(url, key, pod, target, wait)
        _show([pod], output)
        if wait and pod["lifecycle"] not in target:
            raise typer.Exit(1)

    act.__doc__ = {
        "stop": "Drain a pod, then stop it (resumable).",
        "resume": "Resume a stopped pod (re-created if its host has no free GPU).",
        "terminate": "Drain a pod, then delete it for good.",
    }[verb]
    return act


pods_app.command("stop")(_action("stop", {"stopped", "failed"}))
pods_app.command("resume")(_action("resume", {"ready", "failed"}))
pods_app.command("terminate")(_action("terminate", {"stopped", "failed"}))
