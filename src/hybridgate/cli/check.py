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
        str,
        typer.Option(
            envvar="OPENAI_BASE_URL",
            help="OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (health: GET /health at its root).",
        ),
    ],
    suite: Annotated[
        str, typer.Option(help="smoke, contract, canary, load, all, or a comma list.")
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
) -> None:
    """Test an OpenAI-compatible server. Exit 0 passed, 1 a test failed, 2 unreachable, 3 bad arguments."""
    from hybridgate.testing.check import CheckConfigError, CheckOptions
    from hybridgate.testing.check.cli import emit, run_for_cli

    text_or_json(output)
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
