"""`hybridgate serve`, `mock-server` and `--version` as a person runs them: options checked before anything
listens, and "serving" said only once it is true, with the port that is really listening."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hybridgate.testing.procs import free_port, write_config

BACKENDS = [{"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}}]
SERVING = re.compile(r"hybridgate: serving (.+) on http://127\.0\.0\.1:(\d+)/v1 \((.*)\)")


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command that must end by itself; one that keeps serving past `timeout` fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "hybridgate", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`hybridgate {' '.join(args)}` was still running after {timeout}s: {e.stderr!r}")


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def wait_for_serving(p: subprocess.Popen[str], log: Path, timeout: float = 60) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = SERVING.search(log.read_text())
        if m:
            return m
        assert p.poll() is None, f"exited {p.returncode} before serving: {log.read_text()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no 'serving' line in {timeout}s: {log.read_text()[-3000:]}")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["serve", "--port", "99999"], "--port"),
        (["serve", "--port", "-1"], "--port"),
        (["serve", "--workers", "0"], "--workers"),
        (["mock-server", "--port", "99999"], "--port"),
        (["mock-server", "--port", "0"], "--port"),
    ],
)
def test_a_port_or_worker_count_out_of_range_exits_3_naming_it(
    tmp_path: Path, args: list[str], option: str
) -> None:
    config = ["--config", str(write_config({"backends": BACKENDS}, tmp_path))] if args[0] == "serve" else []
    r = run(*args, *config, cwd=tmp_path, timeout=30)
    assert r.returncode == 3, r.stderr
    assert f"Invalid value for '{option}'" in r.stderr and "hybridgate: serving" not in r.stderr
    assert not (tmp_path / ".hybridgate").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serving_names_the_port_it_really_listens_on(
    tmp_path: Path, started: list[subprocess.Popen[str]], workers: str
) -> None:
    cfg = write_config({"backends": BACKENDS}, tmp_path)
    log = tmp_path / "serve.log"
    with log.open("w") as fh:  # port 0: the system picks one, and only the bound socket knows which
        cmd = [sys.executable, "-m", "hybridgate", "serve", "--config", str(cfg), "--port", "0"]
        started.append(subprocess.Popen([*cmd, "--workers", workers], stderr=fh, text=True, cwd=tmp_path))
    m = wait_for_serving(started[0], log)
    assert m.group(1) == "mock" and f"workers: {workers}" in m.group(3)
    assert f"database: {tmp_path / '.hybridgate' / 'hybridgate.db'}" in m.group(3)
    # Said once it is true: the very next request is answered.
    assert httpx.get(f"http://127.0.0.1:{m.group(2)}/health", timeout=10).status_code == 200
    assert len(SERVING.findall(log.read_text())) == 1


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serving_is_not_said_when_the_port_is_taken(tmp_path: Path, workers: str) -> None:
    cfg = write_config({"backends": BACKENDS}, tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = run("serve", "--config", str(cfg), "--port", port, "--workers", workers, cwd=tmp_path)
    assert r.returncode != 0
    assert "hybridgate: serving" not in r.stderr and "address already in use" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serving_is_not_said_when_the_database_cannot_be_opened(tmp_path: Path, workers: str) -> None:
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    cfg = write_config({"database": unreachable, "backends": BACKENDS}, tmp_path)
    r = run("serve", "--config", str(cfg), "--port", str(free_port()), "--workers", workers, cwd=tmp_path)
    assert r.returncode != 0
    assert "hybridgate: serving" not in r.stderr and "nothing" in r.stderr, r.stderr


def test_serve_help_describes_the_default_config_with_the_local_model(tmp_path: Path) -> None:
    r = run("serve", "--help", cwd=tmp_path)
    assert r.returncode == 0
    text = " ".join(r.stdout.replace("│", " ").split())
    assert "gemma-3-270m" in text and "mock" in text and "hybridgate[local]" in text


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from hybridgate import __version__

    r = run("--version", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, f"hybridgate {__version__}\n")
