"""Every command works on a plain install: hybridgate and its base dependencies only, as `make run`'s install
without the local extra, in a fresh virtualenv. The dev extra is where a missing dependency hides (httpx was
only there, and `check` crashed without it), so nothing from this test's own environment is used.

The install is the slow part: about a minute with a warm pip cache (`-m "not plain_install"` leaves it out).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from hybridgate.testing.procs import free_port, wait_healthy

pytestmark = pytest.mark.plain_install

REPO = Path(__file__).resolve().parents[1]
# The caller's own settings would change what the commands do (check reads the OpenAI variables).
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("OPENAI_", "HYBRIDGATE_", "PYTHON")) and k not in ("VIRTUAL_ENV", "REAL_API_TESTS")
}


class Plain:
    """A virtualenv holding a plain install, and a way to run its `hybridgate` as a person would."""

    def __init__(self, venv: Path, workdir: Path) -> None:
        self.venv, self.workdir = venv, workdir
        self.exe = str(venv / "bin" / "hybridgate")

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.exe, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env={**CLEAN_ENV, **(env or {})},
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        r = self.run(*args, env=env)
        assert r.returncode == 0, (
            f"hybridgate {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        )
        assert "Traceback" not in r.stderr, r.stderr
        return r

    def start(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as fh:
            return subprocess.Popen(
                [self.exe, *args], stdout=fh, stderr=subprocess.STDOUT, cwd=self.workdir, env=CLEAN_ENV
            )


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Plain:
    root = tmp_path_factory.mktemp("plain-install")
    # Installed from a copy of the sources, so the build writes nothing into the working tree.
    source = root / "source"
    shutil.copytree(
        REPO / "src" / "hybridgate",
        source / "src" / "hybridgate",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    pip = subprocess.run(
        [py, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    workdir = root / "work"
    workdir.mkdir()
    return Plain(venv, workdir)


def test_the_install_brings_no_extra_and_no_torch(plain: Plain) -> None:
    probe = "import importlib.util as u; print(*(bool(u.find_spec(m)) for m in ('torch', 'llama_cpp', 'hybridgate')))"
    r = subprocess.run(
        [str(plain.venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert r.stdout.split() == ["False", "False", "True"], r.stderr


def test_help_and_version(plain: Plain) -> None:
    assert "serve" in plain.ok("--help").stdout
    assert plain.ok("--version").stdout.startswith("hybridgate ")


def test_serve_keys_usage_db_and_check_against_it(plain: Plain) -> None:
    # What `make run` does, then what its README says next.
    port = free_port()
    log = plain.workdir / "serve.log"
    gw = plain.start("serve", "--first-key", "--port", str(port), log=log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", 60, gw)
        exports = dict(re.findall(r"export (OPENAI_API_KEY|OPENAI_BASE_URL)=(\S+)", log.read_text()))
        assert set(exports) == {"OPENAI_API_KEY", "OPENAI_BASE_URL"}, log.read_text()
        report = plain.ok("check", "--suite", "smoke,canary", "--output", "json", env=exports)
        tests = {t["name"]: t for t in orjson.loads(report.stdout)["tests"]}
        # Without the local extra the local model cannot answer, so the mock is tested, and said to be.
        assert tests["canary.capital_of_france"]["metrics"]["mock"] is True

        secret = plain.ok("keys", "create", "--name", "ci", "--budget-usd", "1").stdout.strip()
        assert secret.startswith("hg-")
        listed = orjson.loads(plain.ok("keys", "list", "--output", "json").stdout)
        assert sorted(k["name"] for k in listed) == ["ci", "local"]
        plain.ok("keys", "revoke", next(k["id"] for k in listed if k["name"] == "ci"))
        plain.ok("usage", "--by", "key")
        plain.ok("db", "upgrade")
    finally:
        stop(gw)


def test_mock_server_check_wait_and_drift(plain: Plain) -> None:
    port = free_port()
    mock = plain.start("mock-server", "--port", str(port), log=plain.workdir / "mock.log")
    try:
        plain.ok("wait", "--url", f"http://127.0.0.1:{port}/health", "--timeout", "60")
        report = plain.workdir / "mock.json"
        target = f"http://127.0.0.1:{port}/v1"
        # Every suite, the load test (locust, in a worker process) included.
        plain.ok("check", "--target", target, "--suite", "all", "--duration", "2s", "--users", "2",
                 "--output", "json", "--json-file", str(report))  # fmt: skip
    finally:
        stop(mock)
    plain.ok("drift", str(report), str(report))


def test_mock_gemini_runs_without_extras(plain: Plain) -> None:
    port = free_port()
    mock = plain.start("mock-gemini", "--port", str(port), "--api-key", "k", log=plain.workdir / "gemini.log")
    try:
        plain.ok("wait", "--url", f"http://127.0.0.1:{port}/health", "--timeout", "60")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/gemini-2.5-flash:generateContent",
            data=orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "capital of France?"}]}]}),
            headers={"x-goog-api-key": "k", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            answer = orjson.loads(r.read())
        assert answer["candidates"][0]["content"]["parts"][0]["text"] == "Paris"
    finally:
        stop(mock)
