"""`hybridgate mock-server`, `mock-gemini`, `mock-runpod`, `mock-fal` and `mock-comfyui`: faithful mock API
servers, for tests and demos."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from hybridgate.cli._common import fail, uvicorn_kwargs

if TYPE_CHECKING:
    from pydantic import ValidationError

    from hybridgate.backends.mock import MockBehaviour

# The options several mocks share, declared once.
Port = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]
Host = Annotated[str, typer.Option(help="Address to bind.")]
LatencyMs = Annotated[float, typer.Option(help="Delay before every answer (ms).")]
TtftMs = Annotated[
    float | None, typer.Option(help="Time to first token for streams (ms); default: --latency-ms.")
]
TokensPerS = Annotated[float, typer.Option(help="Generation speed; 0 means instant.")]
FailRate = Annotated[float, typer.Option(help="Fraction of requests answered with --fail-status (0..1).")]
StallMidStream = Annotated[
    bool, typer.Option("--stall-mid-stream", help="Stop sending halfway, keep the connection open.")
]
Hang = Annotated[bool, typer.Option("--hang", help="Never answer (to test timeouts).")]
Seed = Annotated[int, typer.Option(help="Seed of the failure-rate dice.")]


def mock_server(
    # From 1: it says its URL before it binds, so "any free port" (0) would be a URL that is not its own
    port: Port = 9100,
    host: Host = "127.0.0.1",
    latency_ms: LatencyMs = 0.0,
    ttft_ms: TtftMs = None,
    tokens_per_s: TokensPerS = 0.0,
    fail_rate: FailRate = 0.0,
    fail_status: Annotated[int, typer.Option(help="HTTP status of injected failures.")] = 500,
    drop_mid_stream: Annotated[
        bool, typer.Option("--drop-mid-stream", help="Cut streams halfway, without [DONE].")
    ] = False,
    stall_mid_stream: StallMidStream = False,
    hang: Hang = False,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Model name to serve (repeatable); default: mock.")
    ] = None,
    api_key: Annotated[Optional[str], typer.Option(help="Require this bearer key on /v1 calls.")] = None,  # noqa: UP045
    seed: Seed = 0,
) -> None:
    """Run the mock backend as an OpenAI-compatible HTTP server (free, deterministic, faults on demand)."""
    import uvicorn

    from hybridgate._asgi import quiet_denied_handshakes
    from hybridgate.testing.mocks.openai import MockServer

    _check_names(model, api_key)
    behaviour = _behaviour(
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
    server = MockServer(behaviour, models=model, api_key=api_key)
    typer.secho(
        f"hybridgate mock-server: http://{host}:{port}/v1 (models: {', '.join(server.models)})", err=True
    )
    quiet_denied_handshakes()
    uvicorn.run(server, host=host, port=port, **uvicorn_kwargs())


def _check_names(model: list[str] | None, api_key: str | None) -> None:
    if model is not None and not all(m.strip() for m in model):
        raise fail("--model: a model name must not be empty")
    if api_key is not None and not api_key.strip():
        raise fail("--api-key: must not be empty (leave it out to serve without a key)")


def _behaviour(**settings: Any) -> MockBehaviour:
    """The mock's fault settings from command-line flags; a bad value fails naming its flag (exit 3)."""
    from pydantic import ValidationError

    from hybridgate.backends.mock import MockBehaviour
    from hybridgate.testing.mocks.openai import option_errors

    try:
        behaviour = MockBehaviour()
        behaviour.update(settings)
    except ValidationError as e:
        # The settings are MockOptions' fields; a user typed flags, so the message names the flags.
        raise fail(
            "; ".join(f"--{name.replace('_', '-')}: {why}" for name, why in option_errors(e))
        ) from None
    return behaviour


def mock_gemini(
    port: Port = 9200,
    host: Host = "127.0.0.1",
    latency_ms: LatencyMs = 0.0,
    ttft_ms: TtftMs = None,
    tokens_per_s: TokensPerS = 0.0,
    fail_rate: FailRate = 0.0,
    fail_status: Annotated[
        int, typer.Option(help="HTTP status of injected failures (503: 'The model is overloaded').")
    ] = 503,
    drop_mid_stream: Annotated[
        bool, typer.Option("--drop-mid-stream", help="Cut streams halfway (connection closed).")
    ] = False,
    stall_mid_stream: StallMidStream = False,
    error_mid_stream: Annotated[
        bool,
        typer.Option("--error-mid-stream", help='Send an {"error": ...} event halfway through streams.'),
    ] = False,
    hang: Hang = False,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model name to serve (repeatable); default: a few Gemini names."),
    ] = None,
    api_key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Require this key (x-goog-api-key header or ?key=) on API calls."),
    ] = None,
    seed: Seed = 0,
) -> None:
    """Run a faithful Gemini API server (generateContent, streaming, errors, safety blocks) for free tests."""
    import uvicorn

    from hybridgate.testing.mocks.gemini import GeminiMockServer

    _check_names(model, api_key)
    behaviour = _behaviour(
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
    server = GeminiMockServer(behaviour, models=model, api_key=api_key)
    server.faults.error_mid_stream = error_mid_stream
    typer.secho(
        f"hybridgate mock-gemini: http://{host}:{port} (API versions v1 and v1beta; "
        f"models: {', '.join(server.models)})",
        err=True,
    )
    uvicorn.run(server, host=host, port=port, **uvicorn_kwargs())


def mock_runpod(
    port: Port = 9300,
    host: Host = "127.0.0.1",
    api_key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Require this bearer key (default: any non-empty key is accepted)."),
    ] = None,
    provision_polls: Annotated[
        int, typer.Option(min=0, help="A pod's runtime stays null for this many status reads.")
    ] = 2,
    provision_s: Annotated[
        float, typer.Option(min=0, help="...and at least this many seconds after create or resume.")
    ] = 0.0,
    serve_model: Annotated[
        str, typer.Option(help="Model each pod's server serves when the pod's env has no MODEL.")
    ] = "mock",
    no_capacity: Annotated[
        list[str] | None,
        typer.Option(
            "--no-capacity", help="A GPU type id or data centre with no capacity, or 'all' (repeatable)."
        ),
    ] = None,
    resume_fails: Annotated[
        bool, typer.Option("--resume-fails", help="Resume answers 'not enough free GPUs on the host'.")
    ] = False,
    html_502: Annotated[
        int, typer.Option(min=0, help="Answer the first N API calls with an HTML 502 page.")
    ] = 0,
    gpu: Annotated[
        list[str] | None,
        typer.Option(
            "--gpu", help='A GPU type and its price, "NVIDIA L4=0.43" (repeatable; default: four types).'
        ),
    ] = None,
    no_servers: Annotated[
        bool, typer.Option("--no-servers", help="Do not start a model server per pod (API contract tests).")
    ] = False,
) -> None:
    """Run RunPod's pod API (GraphQL) on loopback; each running pod is backed by a real mock-server."""
    import uvicorn

    from hybridgate.testing.mocks.runpod import Faults, RunPodMock, parse_gpu

    if api_key is not None and not api_key.strip():
        raise fail("--api-key: must not be empty (leave it out to accept any key)")
    if not serve_model.strip():
        raise fail("--serve-model: must not be empty")
    gpus = None
    if gpu:
        try:
            gpus = dict(parse_gpu(g) for g in gpu)
        except ValueError as e:
            raise fail(f"--gpu: {e}") from None
    faults = Faults(no_capacity=set(no_capacity or ()), resume_fails=resume_fails, html_502=html_502)
    app = RunPodMock(
        api_key=api_key,
        provision_polls=provision_polls,
        provision_s=provision_s,
        serve_model=serve_model,
        backing_servers=not no_servers,
        gpus=gpus,
        faults=faults,
    )
    typer.secho(
        f"hybridgate mock-runpod: http://{host}:{port} (set RUNPOD_API_BASE_URL to it; GPU types: "
        f"{', '.join(app.gpus)})",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, **uvicorn_kwargs())


def mock_fal(
    port: Port = 9200,
    host: Host = "127.0.0.1",
    latency_ms: LatencyMs = 0.0,
    submit_delay_ms: Annotated[
        float, typer.Option(help="Extra delay of a submit's answer, after the job was created (ms).")
    ] = 0.0,
    submit_fail_rate: Annotated[
        float, typer.Option(help="Fraction of submits refused with --submit-fail-status (0..1).")
    ] = 0.0,
    submit_fail_status: Annotated[int, typer.Option(help="HTTP status of refused submits.")] = 503,
    fail_rate: Annotated[float, typer.Option(help="Fraction of jobs that end in an error (0..1).")] = 0.0,
    queue_s: Annotated[float, typer.Option(help="Seconds a job waits IN_QUEUE.")] = 0.2,
    run_s: Annotated[float, typer.Option(help="Seconds a job runs IN_PROGRESS.")] = 0.5,
    result_ttl_s: Annotated[float, typer.Option(help="Seconds a result under 10 KB is kept.")] = 3600.0,
    result_ttl_large_s: Annotated[
        float, typer.Option(help="Seconds a result of 10 KB or more is kept.")
    ] = 360.0,
    webhooks: Annotated[bool, typer.Option("--webhooks/--no-webhooks", help="Call fal_webhook URLs.")] = True,
    bad_webhook_signature: Annotated[
        bool, typer.Option("--bad-webhook-signature", help="Sign webhooks wrongly.")
    ] = False,
    duplicate_webhooks: Annotated[
        bool, typer.Option("--duplicate-webhooks", help="Deliver every webhook twice.")
    ] = False,
    key: Annotated[Optional[str], typer.Option(help="Require 'Authorization: Key <this>'.")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="Seed of the failure dice and the default image seed.")] = 0,
) -> None:
    """Run a faithful fal.ai queue, storage and webhook server (free, real files, faults on demand)."""
    import uvicorn
    from pydantic import ValidationError

    from hybridgate.testing.mocks.fal import FalMockOptions, make_app

    try:
        options = FalMockOptions(
            latency_ms=latency_ms,
            submit_delay_ms=submit_delay_ms,
            submit_fail_rate=submit_fail_rate,
            submit_fail_status=submit_fail_status,
            fail_rate=fail_rate,
            queue_s=queue_s,
            run_s=run_s,
            result_ttl_s=result_ttl_s,
            result_ttl_large_s=result_ttl_large_s,
            webhooks=webhooks,
            bad_webhook_signature=bad_webhook_signature,
            duplicate_webhooks=duplicate_webhooks,
            key=key,
            seed=seed,
        )
    except ValidationError as e:
        raise _flag_errors(e) from None
    if key is not None and not key.strip():
        raise fail("--key: must not be empty (leave it out to accept any key)")
    url = f"http://{host}:{port}"
    typer.secho(
        f"hybridgate mock-fal: {url} (queue, storage, webhooks; JWKS at {url}/.well-known/jwks.json)",
        err=True,
    )
    uvicorn.run(make_app(options, url), host=host, port=port, **uvicorn_kwargs())


def mock_comfyui(
    port: Port = 8188,
    host: Host = "127.0.0.1",
    latency_ms: LatencyMs = 0.0,
    run_s: Annotated[float, typer.Option(help="Seconds the fake GPU spends on each workflow.")] = 0.3,
    fail_rate: Annotated[float, typer.Option(help="Fraction of workflows that fail (0..1).")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the failure dice.")] = 0,
) -> None:
    """Run a mock ComfyUI server (/prompt, /queue, /history, /view, /system_stats) that makes real PNGs."""
    import uvicorn
    from pydantic import ValidationError

    from hybridgate.testing.mocks.comfyui import ComfyMockOptions, make_app

    try:
        options = ComfyMockOptions(latency_ms=latency_ms, run_s=run_s, fail_rate=fail_rate, seed=seed)
    except ValidationError as e:
        raise _flag_errors(e) from None
    typer.secho(f"hybridgate mock-comfyui: http://{host}:{port} (ComfyUI's API, real PNGs)", err=True)
    uvicorn.run(make_app(options), host=host, port=port, **uvicorn_kwargs())


def _flag_errors(e: ValidationError) -> typer.Exit:
    """A mock's options refused by pydantic, said as the flags the user typed (exit 3)."""
    return fail(
        "; ".join(
            f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}" for err in e.errors()
        )
    )


def mock_skypilot(
    port: Port = 46590,
    host: Host = "127.0.0.1",
    launch_s: Annotated[
        float, typer.Option(min=0, help="Seconds a launched or started cluster stays INIT before UP.")
    ] = 0.2,
    minute_s: Annotated[
        float, typer.Option(min=0.01, help="How long one autostop minute lasts (seconds; tests shorten it).")
    ] = 60.0,
    no_capacity: Annotated[
        list[str] | None,
        typer.Option(
            "--no-capacity",
            help="No capacity for: spot, on-demand, all, or an accelerator name such as T4 (repeatable).",
        ),
    ] = None,
    no_servers: Annotated[
        bool, typer.Option("--no-servers", help="Do not back UP clusters with a model server.")
    ] = False,
) -> None:
    """Run a SkyPilot API server (0.14.1 wire protocol) on loopback; each UP cluster is backed by a real
    mock-server. Point the SDK at it with SKYPILOT_API_SERVER_ENDPOINT."""
    import uvicorn

    from hybridgate.testing.mocks.skypilot import API_VERSION, VERSION, Faults, SkyPilotMock

    faults = Faults(no_capacity=set(no_capacity or ()), launch_s=launch_s, minute_s=minute_s)
    app = SkyPilotMock(faults=faults, backing_servers=not no_servers)
    typer.secho(
        f"hybridgate mock-skypilot: http://{host}:{port} (SkyPilot {VERSION}, API version {API_VERSION}; "
        "set SKYPILOT_API_SERVER_ENDPOINT to it)",
        err=True,
    )
    uvicorn.run(app, host=host, port=port, **uvicorn_kwargs())
