"""Shared fixtures: real processes on loopback ports (see hybridgate.testing.procs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hybridgate.testing.procs import Proc, start_gateway, start_mock_server


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
