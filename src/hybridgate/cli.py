"""The `hybridgate` command line. Exit codes: 0 ok, 1 failure, 2 unreachable/infrastructure, 3 bad input/config."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hybridgate.config import Config, ConfigError, load_config

EXIT_CONFIG = 3

app = typer.Typer(
    name="hybridgate",
    help="A self-hosted, OpenAI-compatible AI gateway: routing, fallback, cost accounting, cheap honest tests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option("--config", "-c", help="YAML config file (default: the embedded default: SQLite, mock backend)."),
]


def fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load_or_exit(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise fail(str(e)) from None


def _uvicorn_kwargs() -> dict[str, object]:
    kw: dict[str, object] = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 10}
    try:
        import uvloop  # noqa: F401

        kw["loop"] = "uvloop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        kw["http"] = "httptools"
    except ImportError:
        pass
    return kw


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[Optional[str], typer.Option(help="Address to bind (default from config: 127.0.0.1).")] = None,  # noqa: UP045
    port: Annotated[Optional[int], typer.Option(help="Port to bind (default from config: 8080).")] = None,  # noqa: UP045
    workers: Annotated[Optional[int], typer.Option(help="Worker processes, one event loop each.")] = None,  # noqa: UP045
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the gateway."""
    import uvicorn

    from hybridgate.api import create_app
    from hybridgate.observability import configure_logging

    cfg = load_or_exit(config)
    configure_logging(log_level)
    h = host or cfg.server.host
    p = cfg.server.port if port is None else port
    n = workers or cfg.server.workers
    try:
        gw = create_app(cfg)  # validates HYBRIDGATE_PRIORITY etc. before binding
    except ConfigError as e:
        raise fail(str(e)) from None
    typer.secho(
        f"hybridgate: serving {', '.join(gw.manager.models())} on http://{h}:{p}/v1 "
        f"(config: {cfg.source}, workers: {n})",
        err=True,
    )
    if n == 1:
        uvicorn.run(gw, host=h, port=p, **_uvicorn_kwargs())  # type: ignore[arg-type]
    else:
        # Each worker builds its own Gateway from the same file, via the import-string factory.
        if config is not None:
            os.environ["HYBRIDGATE_CONFIG"] = str(config.resolve())
        uvicorn.run("hybridgate.api.app:app_factory", factory=True, host=h, port=p, workers=n, **_uvicorn_kwargs())  # type: ignore[arg-type]


@app.command("mock-server")
def mock_server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9100,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    latency_ms: Annotated[float, typer.Option(help="Delay before every answer (ms).")] = 0.0,
    ttft_ms: Annotated[Optional[float], typer.Option(help="Time to first token for streams (ms); default: --latency-ms.")] = None,  # noqa: UP045
    tokens_per_s: Annotated[float, typer.Option(help="Generation speed; 0 means instant.")] = 0.0,
    fail_rate: Annotated[float, typer.Option(help="Fraction of requests answered with --fail-status (0..1).")] = 0.0,
    fail_status: Annotated[int, typer.Option(help="HTTP status of injected failures.")] = 500,
    drop_mid_stream: Annotated[bool, typer.Option("--drop-mid-stream", help="Cut streams halfway, without [DONE].")] = False,
    hang: Annotated[bool, typer.Option("--hang", help="Never answer (to test timeouts).")] = False,
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Model name to serve (repeatable); default: mock.")] = None,  # noqa: UP045
    api_key: Annotated[Optional[str], typer.Option(help="Require this bearer key on /v1 calls.")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="Seed of the failure-rate dice.")] = 0,
) -> None:
    """Run the mock backend as an OpenAI-compatible HTTP server (free, deterministic, faults on demand)."""
    import uvicorn

    from hybridgate.backends.mock import MockBehaviour
    from hybridgate.testing.mock_server import MockServer

    try:
        behaviour = MockBehaviour()
        behaviour.update(dict(latency_ms=latency_ms, ttft_ms=ttft_ms, tokens_per_s=tokens_per_s, fail_rate=fail_rate,
                              fail_status=fail_status, drop_mid_stream=drop_mid_stream, hang=hang, seed=seed))
    except Exception as e:
        raise fail(f"bad mock-server option: {e}") from None
    server = MockServer(behaviour, models=model, api_key=api_key)
    typer.secho(f"hybridgate mock-server: http://{host}:{port}/v1 (models: {', '.join(server.models)})", err=True)
    uvicorn.run(server, host=host, port=port, **_uvicorn_kwargs())  # type: ignore[arg-type]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
