"""`hybridgate check` and `hybridgate wait`: test an OpenAI-compatible server, wait for a health endpoint.

The logic lives in hybridgate.testing; these commands parse options and map outcomes to exit codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridgate.cli._common import EXIT_UNREACHABLE, TextOrJson, fail, text_or_json


def check(
    # The openai client's own variables, so the two lines `make run` prints are all a check needs too.
    target: Annotated[
        str | None,
        typer.Option(
            envvar="OPENAI_BASE_URL",
            help="OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (health: GET /health at its root). "
            "Not for --suite cloud.",
        ),
    ] = None,
    suite: Annotated[
        str,
        typer.Option(
            help="smoke, contract, canary, load, all, or a comma list; or cloud (a real instance via SkyPilot)."
        ),
    ] = "smoke",
    api_key: Annotated[
        str | None, typer.Option(envvar="OPENAI_API_KEY", help="Bearer key for /v1 calls.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model to test (default: the first /v1/models lists that is not a mock and can answer now, "
            "else the first)."
        ),
    ] = None,
    output: TextOrJson = "text",
    json_file: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
    duration: Annotated[str, typer.Option(help="Load test length: 30s, 2m, 1m30s.")] = "30s",
    users: Annotated[int, typer.Option(help="Load test: concurrent users.")] = 4,
    spawn_rate: Annotated[
        float | None, typer.Option(help="Load test: users started per second (default: all at once).")
    ] = None,
    max_p95_ms: Annotated[
        float | None, typer.Option(help="Fail when p95 latency exceeds this (load; smoke default 5000).")
    ] = None,
    max_error_rate: Annotated[
        float | None, typer.Option(help="Load test: fail above this error fraction (0..1).")
    ] = None,
    request_timeout: Annotated[float, typer.Option(help="Seconds one request may take.")] = 60.0,
    cloud: Annotated[
        str | None,
        typer.Option(help="--suite cloud: aws, gcp or azure (credentials on the SkyPilot API server)."),
    ] = None,
    budget_usd: Annotated[
        float, typer.Option(help="--suite cloud: refuse to start when the estimated cost is above this.")
    ] = 0.50,
    gpu: Annotated[
        str, typer.Option(help="--suite cloud: T4 (vLLM, a tiny model) or none (a CPU echo server, cents).")
    ] = "T4",
    max_minutes: Annotated[
        int, typer.Option(help="--suite cloud: the run's bound and the instance's dead-man autostop.")
    ] = 25,
    price_per_hour: Annotated[
        float | None, typer.Option(help="--suite cloud: the instance's USD/hour (default: a built-in table).")
    ] = None,
    api_server: Annotated[
        str | None,
        typer.Option(
            envvar="SKYPILOT_API_SERVER_ENDPOINT",
            help="--suite cloud: the SkyPilot API server (default: ~/.sky/config.yaml; never started here).",
        ),
    ] = None,
    skypilot_python: Annotated[
        str | None,
        typer.Option(
            envvar="HYBRIDGATE_SKYPILOT_PYTHON",
            help="--suite cloud: the Python of the SkyPilot environment (default: ./.venv-sky/bin/python).",
        ),
    ] = None,
    completion_timeout: Annotated[
        float | None,
        typer.Option(
            help="--suite cloud: seconds the completion may wait for the instance (default: the run's bound)."
        ),
    ] = None,
) -> None:
    """Test an OpenAI-compatible server, or (--suite cloud) a real cloud instance end to end.
    Exit 0 passed (or skipped), 1 a test failed, 2 unreachable, 3 bad arguments."""
    from hybridgate.testing.check import CheckConfigError, CheckOptions
    from hybridgate.testing.check.cli import emit, run_for_cli

    text_or_json(output)
    if suite.strip().lower() == "cloud":
        _cloud(
            output,
            json_file,
            cloud,
            budget_usd,
            gpu,
            max_minutes,
            price_per_hour,
            api_server,
            skypilot_python,
            completion_timeout,
        )
        return
    if cloud is not None:
        raise fail("--cloud: only with --suite cloud")
    if target is None:
        raise fail("--target (or OPENAI_BASE_URL) is required, e.g. --target http://127.0.0.1:8080/v1")
    try:
        opts = CheckOptions.create(
            target,
            suite,
            api_key=api_key,
            model=model,
            duration=duration,
            users=users,
            spawn_rate=spawn_rate,
            max_p95_ms=max_p95_ms,
            max_error_rate=max_error_rate,
            request_timeout_s=request_timeout,
        )
        if json_file is not None and not json_file.parent.is_dir():
            raise CheckConfigError(f"--json-file: folder {json_file.parent} does not exist")
    except CheckConfigError as e:
        raise fail(str(e)) from None
    report = run_for_cli(opts, output)
    emit(report, output, json_file)
    raise typer.Exit(report.exit_code)


def _cloud(
    output: str,
    json_file: Path | None,
    cloud: str | None,
    budget_usd: float,
    gpu: str,
    max_minutes: int,
    price_per_hour: float | None,
    api_server: str | None,
    skypilot_python: str | None,
    completion_timeout: float | None,
) -> None:
    from rich.console import Console

    from hybridgate.testing.check import CheckConfigError
    from hybridgate.testing.check._cloud import CloudCheckOptions, run_cloud_check
    from hybridgate.testing.check._report import TestResult
    from hybridgate.testing.check.cli import emit

    if cloud is None:
        raise fail("--suite cloud needs --cloud aws|gcp|azure")
    try:
        opts = CloudCheckOptions(
            cloud=cloud.lower(),
            gpu="none" if gpu.lower() == "none" else gpu.upper(),
            budget_usd=budget_usd,
            max_minutes=max_minutes,
            price_per_hour=price_per_hour,
            api_server=api_server,
            skypilot_python=skypilot_python,
            request_timeout_s=completion_timeout,
        )
        if json_file is not None and not json_file.parent.is_dir():
            raise CheckConfigError(f"--json-file: folder {json_file.parent} does not exist")
    except CheckConfigError as e:
        raise fail(str(e)) from None
    err = Console(stderr=True)

    def progress(r: TestResult) -> None:
        if output != "json":
            err.print(
                f"[dim]{r.name}: {r.status}{f' ({r.error})' if r.error and r.status != 'passed' else ''}[/]"
            )

    report = run_cloud_check(opts, progress)
    emit(report, output, json_file)
    raise typer.Exit(report.exit_code)


def wait(
    url: Annotated[str, typer.Option(help="Health endpoint to poll, e.g. http://127.0.0.1:8080/health.")],
    timeout: Annotated[str, typer.Option(help="Give up after this long: 120, 30s, 2m.")] = "120",
) -> None:
    """Wait until a health endpoint answers 2xx (exit 0) or give up (exit 2)."""
    from hybridgate.testing.check import parse_duration
    from hybridgate.testing.procs import wait_healthy

    if not url.startswith(("http://", "https://")):
        raise fail(f"--url must be an http(s) URL, not {url!r}")
    try:
        seconds = parse_duration(timeout)
    except ValueError as e:
        raise fail(f"--timeout: {e}") from None
    try:
        waited = wait_healthy(url, seconds)
    except TimeoutError as e:
        raise fail(str(e), EXIT_UNREACHABLE) from None
    typer.secho(f"{url} is healthy (after {waited:.1f}s)", err=True)
