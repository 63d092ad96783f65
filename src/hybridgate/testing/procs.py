"""Start real hybridgate processes (gateway, mock server) on free loopback ports and wait on their health.

Used by our own tests and by the pytest plugin's fixtures; no blind sleeps: every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> float:
    """Poll `url` until it answers 2xx; the seconds waited. TimeoutError, or RuntimeError if `proc` died."""
    start = time.monotonic()
    deadline = start + timeout
    last: str = "no answer"
    delay = 0.02
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before {url} answered")
        try:
            # One attempt never outlives the deadline, so a hanging server cannot stretch the wait.
            attempt = min(2.0, max(0.05, deadline - time.monotonic()))
            with urllib.request.urlopen(url, timeout=attempt) as r:
                if 200 <= r.status < 300:
                    return time.monotonic() - start
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    raise TimeoutError(f"{url} did not become healthy within {timeout:g}s (last: {last})")


@dataclass
class Proc:
    """A running child process with its base URL; stop() ends it (SIGTERM, then SIGKILL)."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def _spawn(
    args: list[str],
    port: int,
    env: dict[str, str] | None,
    health_path: str,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
) -> Proc:
    log = Path(tempfile.mkstemp(prefix="hybridgate-", suffix=".log")[1])
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "hybridgate", *args]
    with open(log, "wb") as fh:
        popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    proc = Proc(popen, port, log, cmd)
    try:
        wait_healthy(proc.url + health_path, timeout, popen)
    except Exception as e:
        proc.stop()
        raise RuntimeError(f"{' '.join(cmd)} did not start: {e}\n--- log ---\n{proc.log()[-4000:]}") from None
    return proc


def start_mock_server(*, port: int | None = None, timeout: float = 30.0, **options: Any) -> Proc:
    """`hybridgate mock-server` with options as keyword arguments (latency_ms=50, model=["a"], ...)."""
    port = port or free_port()
    return _spawn(["mock-server", "--port", str(port), *_flags(options)], port, None, "/health", timeout)


def start_mock_gemini(*, port: int | None = None, timeout: float = 30.0, **options: Any) -> Proc:
    """`hybridgate mock-gemini` with options as keyword arguments (api_key="k", error_mid_stream=True, ...).

    Its `url` is what google-genai takes as `base_url`, and a gateway's gemini backend as `base_url`."""
    port = port or free_port()
    return _spawn(["mock-gemini", "--port", str(port), *_flags(options)], port, None, "/health", timeout)


def _flags(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                args.append(flag)
        elif isinstance(v, list | tuple):
            for item in v:
                args += [flag, str(item)]
        elif v is not None:
            args += [flag, str(v)]
    return args


def start_mock_fal(*, port: int | None = None, timeout: float = 30.0, **options: Any) -> Proc:
    """`hybridgate mock-fal` with options as keyword arguments (queue_s=0.1, fail_rate=1, webhooks=False...)."""
    port = port or free_port()
    args = ["mock-fal", "--port", str(port)]
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                args.append(flag)
            elif k == "webhooks":  # the one switch that is on by default
                args.append("--no-webhooks")
        elif v is not None:
            args += [flag, str(v)]
    return _spawn(args, port, None, "/health", timeout)


def start_mock_comfyui(*, port: int | None = None, timeout: float = 30.0, **options: Any) -> Proc:
    """`hybridgate mock-comfyui` with options as keyword arguments (run_s=0.2, fail_rate=1...)."""
    port = port or free_port()
    args = ["mock-comfyui", "--port", str(port)]
    for k, v in options.items():
        if v is not None:
            args += ["--" + k.replace("_", "-"), str(v)]
    return _spawn(args, port, None, "/system_stats", timeout)


def write_config(config: dict[str, Any], directory: str | os.PathLike[str] | None = None) -> Path:
    d = Path(directory or tempfile.mkdtemp(prefix="hybridgate-cfg-"))
    path = d / "hybridgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_gateway(
    config: dict[str, Any] | str | os.PathLike[str] | None = None,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    workdir: str | os.PathLike[str] | None = None,
    extra_args: list[str] | None = None,
) -> Proc:
    """`hybridgate serve` on a config (a dict is written to a temporary file; None means the embedded default).

    It runs in `workdir`, a fresh temporary directory unless given, so relative paths in the config (the
    default SQLite database `./.hybridgate/hybridgate.db`) never touch the caller's own files or keys.
    """
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="hybridgate-gw-")
    args = ["serve", "--port", str(port)]
    if isinstance(config, dict):
        args += ["--config", str(write_config(config, workdir))]
    elif config is not None:
        args += ["--config", str(Path(config).resolve())]
    args += extra_args or []
    return _spawn(args, port, env, "/health", timeout, cwd=workdir)


def wait_backend_ready(gateway_url: str, backend: str, timeout: float = 120.0) -> float:
    """Poll a gateway's /health/backends until `backend` is healthy (a local model loads in the background).

    Returns the seconds waited; TimeoutError names the backend's last state and error.
    """
    start = time.monotonic()
    deadline = start + timeout
    last: Any = "no answer"
    delay = 0.05
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(gateway_url.rstrip("/") + "/health/backends", timeout=2) as r:
                snaps = {b["name"]: b for b in orjson.loads(r.read())["backends"]}
            b = snaps.get(backend)
            if b is None:
                raise ValueError(f"the gateway has no backend {backend!r} (it has: {', '.join(snaps)})")
            if b["healthy"] and b["routable"]:
                return time.monotonic() - start
            last = {k: b.get(k) for k in ("state", "last_error")}
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise TimeoutError(f"backend {backend!r} of {gateway_url} not ready in {timeout:g}s (last: {last})")


def set_mock_behaviour(
    url: str, *, api_key: str | None = None, gemini: bool = False, **changes: Any
) -> dict[str, Any]:
    """Change a running mock server's faults (`fail_rate`, `hang`, `latency_ms`, ...) and return the result.

    `api_key`: the mock's `--api-key`, which /_mock/config requires too when the mock was given one
    (`gemini`: the server is mock-gemini, which takes its key as Google does, in x-goog-api-key).
    """
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        if gemini:
            headers["x-goog-api-key"] = api_key
        else:
            headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(
        url.rstrip("/") + "/_mock/config", data=orjson.dumps(changes), method="POST", headers=headers
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return dict(orjson.loads(r.read()))
