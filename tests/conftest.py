"""Shared fixtures: real processes on loopback ports (see hybridgate.testing.procs)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hybridgate.testing.procs import (
    Proc,
    free_port,
    start_gateway,
    start_mock_fal,
    start_mock_server,
    wait_healthy,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "plain_install: installs hybridgate without extras into a fresh virtualenv (about a minute with a "
        "warm pip cache; needs the package registry)",
    )


@pytest.fixture
def spawn() -> Iterator[dict[str, Callable[..., Proc]]]:
    """Start mock servers and gateways; every process is stopped at the end of the test."""
    procs: list[Proc] = []

    def mock(**options: Any) -> Proc:
        p = start_mock_server(**options)
        procs.append(p)
        return p

    def gateway(config: Any = None, **kw: Any) -> Proc:
        p = start_gateway(config, **kw)
        procs.append(p)
        return p

    yield {"mock": mock, "gateway": gateway}
    for p in procs:
        p.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server as its own process, one for the session (storage and LoRA tests); its URL. Tests
    make their own buckets."""
    port = free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"moto-{port}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url + "/moto-api/", 60, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def fal_process() -> Iterator[Proc]:
    """One `hybridgate mock-fal` for the session (starting one takes seconds); each module takes it with its
    own settings through `fal_with`. Its key is "mock-key"."""
    p = start_mock_fal(key="mock-key")
    yield p
    p.stop()


def fal_with(proc: Proc, **settings: Any) -> Proc:
    """Every knob of the shared mock-fal back to its default, then `settings`; the same process."""
    from hybridgate.testing.mocks.fal import FalMockOptions

    r = httpx.post(
        proc.url + "/_mock/config",
        json={**FalMockOptions().model_dump(), "key": "mock-key", **settings},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return proc
