"""The `hybridgate` command line. Exit codes: 0 ok, 1 failure, 2 unreachable/infrastructure, 3 bad input/config."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import orjson
import typer
import typer.core

from hybridgate.auth import KeyCache, KeySpecError, KeyStore, NewKey, fmt_time, parse_spec
from hybridgate.config import Config, ConfigError, load_config
from hybridgate.ledger import GROUPS, usage_report
from hybridgate.store import Store, StoreError, current_revision, head_revision, parse_time

EXIT_CONFIG = 3


try:  # newer typer vendors click; its usage errors are typer._click's, not click's
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - typer that still uses click itself
    from click.exceptions import NoArgsIsHelpError, UsageError  # type: ignore[assignment]


class _Group(typer.core.TyperGroup):
    """Bad arguments exit 3, not click's 2: in this CLI, 2 means something was unreachable."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as e:
            _usage_exit(e)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:
            _usage_exit(e)
            raise


def _usage_exit(e: UsageError) -> None:
    if not isinstance(e, NoArgsIsHelpError):
        e.exit_code = EXIT_CONFIG


app = typer.Typer(
    cls=_Group,
    name="hybridgate",
    help="A self-hosted, OpenAI-compatible AI gateway: routing, fallback, cost accounting, cheap honest tests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--config", "-c", help="YAML config file (default: the embedded default: SQLite, mock backend)."
    ),
]


def fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load_or_exit(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise fail(str(e)) from None


def _uvicorn_kwargs() -> dict[str, Any]:
    kw: dict[str, Any] = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 10}
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
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default from config: 127.0.0.1).")
    ] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to bind (default from config: 8080).")] = None,  # noqa: UP045
    workers: Annotated[Optional[int], typer.Option(help="Worker processes, one event loop each.")] = None,  # noqa: UP045
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    first_key: Annotated[
        bool,
        typer.Option(
            "--first-key",
            help="With no master key and no API key yet, create "
            "a key named 'local' and print it once (what `make run` does).",
        ),
    ] = False,
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
        gw = create_app(cfg, tune_gc=True)  # validates HYBRIDGATE_PRIORITY etc. before binding
    except ConfigError as e:
        raise fail(str(e)) from None
    if first_key and not os.environ.get("HYBRIDGATE_MASTER_KEY"):
        _ensure_first_key(cfg, f"http://{h}:{p}/v1")
    typer.secho(
        f"hybridgate: serving {', '.join(gw.manager.models())} on http://{h}:{p}/v1 "
        f"(config: {cfg.source}, workers: {n})",
        err=True,
    )
    if n == 1:
        uvicorn.run(gw, host=h, port=p, **_uvicorn_kwargs())
    else:
        # Each worker builds its own Gateway from the same file, via the import-string factory, and
        # sets up its own logging (a worker is a fresh interpreter).
        if config is not None:
            os.environ["HYBRIDGATE_CONFIG"] = str(config.resolve())
        os.environ["HYBRIDGATE_LOG_LEVEL"] = log_level
        uvicorn.run(
            "hybridgate.api.app:app_factory", factory=True, host=h, port=p, workers=n, **_uvicorn_kwargs()
        )


@app.command("mock-server")
def mock_server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9100,
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
    from hybridgate.testing.mock_server import MockServer

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
    uvicorn.run(server, host=host, port=port, **_uvicorn_kwargs())


# --- keys, usage, db: each acts on the database its --config names, the one `serve` uses -----------------
EXIT_UNREACHABLE = 2
T = TypeVar("T")

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The database: migrations (also run by `serve` at start).", no_args_is_help=True)
app.add_typer(db_app, name="db")

OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table or json.")]


def _with_store(cfg: Config, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open (and migrate) the config's database, run `fn` on it, close it. Unreachable: exit 2."""

    async def go() -> T:
        store = Store(cfg.database)
        try:
            await store.open()
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreError as e:
        raise fail(str(e), EXIT_UNREACHABLE) from None


def _print(renderable: object) -> None:
    """Print with rich; piped or redirected, wide enough that ids are never cut short."""
    from rich.console import Console

    (Console() if sys.stdout.isatty() else Console(width=200)).print(renderable)


def _check_output(output: str) -> None:
    if output not in ("table", "json"):
        raise fail(f"--output must be table or json, not '{output}'")


def _ensure_first_key(cfg: Config, base_url: str) -> None:
    async def ensure(store: Store) -> NewKey | None:
        keys = KeyStore(store)
        return None if await keys.count() else await keys.create("local")

    new = _with_store(cfg, ensure)
    if new is None:
        return
    typer.secho(
        f"hybridgate: created the first API key, 'local' ({new.record.id}); every /v1 call now needs a key. "
        "It is shown only this once:\n\n"
        f"    export OPENAI_API_KEY={new.secret}\n"
        f"    export OPENAI_BASE_URL={base_url}\n\n"
        "(the openai client reads both; `hybridgate keys create --name NAME` makes more keys)\n",
        err=True,
        fg=typer.colors.GREEN,
    )


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    budget_usd: Annotated[
        float | None, typer.Option("--budget-usd", help="Spend limit in USD; never exceeded.")
    ] = None,
    rpm: Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute.")] = None,  # noqa: UP045
    models: Annotated[
        str | None,
        typer.Option("--models", help="Comma-separated public models it may use (default: all)."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Expiry: 2025-12-31 (00:00 UTC), a datetime, or 30d.")
    ] = None,
    config: ConfigOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Create a key and print it once (stdout: the key alone, or JSON with --output json)."""
    _check_output(output)
    cfg = load_or_exit(config)
    try:
        spec = parse_spec(
            {
                "name": name,
                "budget_usd": budget_usd,
                "rpm": rpm,
                "expires_at": expires,
                "models": models.split(",") if models is not None else None,
            }
        )
        spec.check_models(cfg.public_models())
        spec.expiry()
    except KeySpecError as e:
        raise fail(f"--{e.field.replace('_at', '').replace('_', '-')}: {e.message}") from None
    new = _with_store(cfg, lambda store: KeyStore(store).create_spec(spec))
    if output == "json":
        typer.echo(
            orjson.dumps({**new.record.public(), "key": new.secret}, option=orjson.OPT_INDENT_2).decode()
        )
        return
    r = new.record
    limits = [
        f"budget ${r.budget_usd:g}" if r.budget_usd is not None else "",
        f"{r.rpm} rpm" if r.rpm else "",
        f"models {', '.join(r.models)}" if r.models else "",
        f"expires {fmt_time(r.expires_at)}" if r.expires_at else "",
    ]
    typer.secho(
        f"Created API key '{r.name}' ({r.id}; {'; '.join(x for x in limits if x) or 'no limits'}). "
        "It is shown only this once:",
        err=True,
    )
    typer.echo(new.secret)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, output: OutputOpt = "table") -> None:
    """List keys: name, id, prefix, budget, spent, status (never the secret)."""
    _check_output(output)
    cfg = load_or_exit(config)
    records = _with_store(cfg, lambda store: KeyStore(store).all())
    rows = [r.public() for r in records]
    if output == "json":
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.table import Table

    table = Table(title=f"API keys ({cfg.database})", title_justify="left")
    for col in ("name", "id", "prefix", "status", "budget", "spent", "rpm", "models", "expires"):
        table.add_column(
            col,
            justify="right" if col in ("budget", "spent", "rpm") else "left",
            no_wrap=col in ("id", "prefix"),
        )
    for x in rows:
        table.add_row(
            x["name"],
            x["id"],
            x["prefix"] + "...",
            x["status"],
            "-" if x["budget"] is None else f"${x['budget']:g}",
            f"${x['spent']:.6f}",
            str(x["rpm"] or "-"),
            ", ".join(x["models"]) if x["models"] else "all",
            x["expires_at"] or "-",
        )
    _print(table if rows else "No API keys yet: `hybridgate keys create --name NAME` makes one.")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")], config: ConfigOpt = None
) -> None:
    """Revoke a key: running gateways refuse it within seconds (the key cache's TTL)."""
    cfg = load_or_exit(config)
    rec = _with_store(cfg, lambda store: KeyStore(store).revoke(key_id))
    if rec is None:
        raise fail(f"no API key with id '{key_id}' (`hybridgate keys list` shows them)")
    typer.secho(
        f"Revoked API key '{rec.name}' ({rec.id}); running gateways refuse it within {KeyCache.ttl_s:g}s.",
        err=True,
    )


@app.command("usage")
def usage_cmd(
    by: Annotated[str, typer.Option("--by", help="Group by backend, model, key or day.")] = "model",
    since: Annotated[
        str | None, typer.Option("--since", help="Start: 7d, 24h, a date or datetime (default: all).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="End (exclusive), same forms as --since.")
    ] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Only this key id.")] = None,  # noqa: UP045
    config: ConfigOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Requests, tokens and cost from the ledger, grouped."""
    _check_output(output)
    if by not in GROUPS:
        raise fail(f"--by must be one of {', '.join(GROUPS)}, not '{by}'")
    try:
        start = parse_time(since) if since else None
        end = parse_time(until) if until else None
    except ValueError as e:
        raise fail(f"--since/--until: {e}") from None
    cfg = load_or_exit(config)
    report = _with_store(
        cfg, lambda store: usage_report(store, group_by=by, since=start, until=end, key_id=key)
    )
    if output == "json":
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.table import Table

    span = f"since {fmt_time(start)}" if start else "all time"
    table = Table(title=f"Usage by {by}, {span}" + (f", key {key}" if key else ""), title_justify="left")
    for col in (by, "requests", "attempts", "input tokens", "output tokens", "cost (USD)"):
        table.add_column(col, justify="left" if col == by else "right")
    for x in report["data"]:
        table.add_row(
            str(x["group"]),
            str(x["requests"]),
            str(x["attempts"]),
            f"{x['input_tokens']:,}",
            f"{x['output_tokens']:,}",
            f"{x['cost_usd']:.6f}",
        )
    table.add_section()
    table.add_row("total", "", "", "", "", f"{report['total_cost_usd']:.6f}")
    _print(table)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Bring the database to the newest schema (serve does this at start too)."""
    cfg = load_or_exit(config)
    rev = _with_store(cfg, lambda store: current_revision(store.engine))
    typer.secho(
        f"database {Store(cfg.database).describe()} is at revision {rev} (head: {head_revision()})", err=True
    )


# --- check, wait, drift: the test toolkit; the logic lives in hybridgate.testing ----------------------------
TextOrJson = Annotated[str, typer.Option("--output", "-o", help="text (a table) or json.")]


def _text_or_json(output: str) -> str:
    if output not in ("text", "json"):
        raise fail(f"--output must be text or json, not '{output}'")
    return output


@app.command()
def check(
    target: Annotated[
        str,
        typer.Option(
            help="OpenAI base URL, e.g. http://127.0.0.1:8080/v1 (health: GET /health at its root)."
        ),
    ],
    suite: Annotated[
        str, typer.Option(help="smoke, contract, canary, load, all, or a comma list.")
    ] = "smoke",
    api_key: Annotated[str | None, typer.Option(help="Bearer key for /v1 calls.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to test (default: the first /v1/models lists).")
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

    _text_or_json(output)
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


@app.command()
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


@app.command()
def drift(
    mock_report: Annotated[Path, typer.Argument(help="Contract report (JSON) of the mock.")],
    real_report: Annotated[Path, typer.Argument(help="Contract report (JSON) of the real backend.")],
    output: TextOrJson = "text",
) -> None:
    """Where a mock's contract report differs from a real backend's. Exit 0 none, 1 drift, 3 bad input."""
    from hybridgate.testing.drift import DriftInputError, compare_files, render_text

    _text_or_json(output)
    try:
        found = compare_files(mock_report, real_report)
    except DriftInputError as e:
        raise fail(str(e)) from None
    if output == "json":
        typer.echo(orjson.dumps(found.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        render_text(found)
    raise typer.Exit(1 if found.items else 0)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
