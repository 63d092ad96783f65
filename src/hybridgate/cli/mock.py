"""`hybridgate mock-server`: the mock backend as an OpenAI-compatible HTTP server, for tests and demos."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from hybridgate.cli._common import fail, uvicorn_kwargs


def mock_server(
    # From 1: it says its URL before it binds, so "any free port" (0) would be a URL that is not its own
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 9100,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    latency_ms: Annotated[float, typer.Option(help="Delay before every answer (ms).")] = 0.0,
    ttft_ms: Annotated[
        float | None, typer.Option(help="Time to first token for streams (ms); default: --latency-ms.")
    ] = None,
    tokens_per_s: Annotated[float, typer.Option(help="Generation speed; 0 means instant.")] = 0.0,
    fail_rate: Annotated[
        float, typer.Option(help="Fraction of requests answered with --fail-status (0..1).")
    ] = 0.0,
    fail_status: Annotated[int, typer.Option(help="HTTP status of injected failures.")] = 500,
    drop_mid_stream: Annotated[
        bool, typer.Option("--drop-mid-stream", help="Cut streams halfway, without [DONE].")
    ] = False,
    stall_mid_stream: Annotated[
        bool, typer.Option("--stall-mid-stream", help="Stop sending halfway, keep the connection open.")
    ] = False,
    hang: Annotated[bool, typer.Option("--hang", help="Never answer (to test timeouts).")] = False,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Model name to serve (repeatable); default: mock.")
    ] = None,
    api_key: Annotated[Optional[str], typer.Option(help="Require this bearer key on /v1 calls.")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="Seed of the failure-rate dice.")] = 0,
) -> None:
    """Run the mock backend as an OpenAI-compatible HTTP server (free, deterministic, faults on demand)."""
    import uvicorn

    from hybridgate.backends.mock import MockBehaviour
    from hybridgate.testing.mocks.openai import MockServer

    try:
        behaviour = MockBehaviour()
        behaviour.update(
            dict(
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                tokens_per_s=tokens_per_s,
                fail_rate=fail_rate,
                fail_status=fail_status,
                drop_mid_stream=drop_mid_stream,
                stall_mid_stream=stall_mid_stream,
                hang=hang,
                seed=seed,
            )
        )
    except Exception as e:
        raise fail(f"bad mock-server option: {e}") from None
    server = MockServer(behaviour, models=model, api_key=api_key)
    typer.secho(
        f"hybridgate mock-server: http://{host}:{port}/v1 (models: {', '.join(server.models)})", err=True
    )
    uvicorn.run(server, host=host, port=port, **uvicorn_kwargs())
