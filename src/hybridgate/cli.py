"""The `hybridgate` command line. Exit codes: 0 ok, 1 failure, 2 unreachable/infrastructure, 3 bad input/config."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import orjson
import typer

from hybridgate.auth import KeyCache, KeySpecError, KeyStore, NewKey, fmt_time, parse_spec
from hybridgate.config import Config, ConfigError, load_config
from hybridgate.ledger import GROUPS, usage_report
from hybridgate.store import Store, StoreError, current_revision, head_revision, parse_time

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
    first_key: Annotated[bool, typer.Option("--first-key", help="With no master key and no API key yet, create "
                                            "a key named 'local' and print it once (what `make run` does).")] = False,
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
    if first_key and not os.environ.get("HYBRIDGATE_MASTER_KEY"):
        _ensure_first_key(cfg, f"http://{h}:{p}/v1")
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
    stall_mid_stream: Annotated[bool, typer.Option("--stall-mid-stream", help="Stop sending halfway, keep the connection open.")] = False,
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
                              fail_status=fail_status, drop_mid_stream=drop_mid_stream,
                              stall_mid_stream=stall_mid_stream, hang=hang, seed=seed))
    except Exception as e:
        raise fail(f"bad mock-server option: {e}") from None
    server = MockServer(behaviour, models=model, api_key=api_key)
    typer.secho(f"hybridgate mock-server: http://{host}:{port}/v1 (models: {', '.join(server.models)})", err=True)
    uvicorn.run(server, host=host, port=port, **_uvicorn_kwargs())  # type: ignore[arg-type]


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
    budget_usd: Annotated[Optional[float], typer.Option("--budget-usd", help="Spend limit in USD; never exceeded.")] = None,  # noqa: UP045
    rpm: Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute.")] = None,  # noqa: UP045
    models: Annotated[Optional[str], typer.Option("--models", help="Comma-separated public models it may use (default: all).")] = None,  # noqa: UP045
    expires: Annotated[Optional[str], typer.Option("--expires", help="Expiry: 2025-12-31 (00:00 UTC), a datetime, or 30d.")] = None,  # noqa: UP045
    config: ConfigOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Create a key and print it once (stdout: the key alone, or JSON with --output json)."""
    _check_output(output)
    cfg = load_or_exit(config)
    try:
        spec = parse_spec({"name": name, "budget_usd": budget_usd, "rpm": rpm, "expires_at": expires,
                           "models": models.split(",") if models is not None else None})
        spec.check_models(cfg.public_models())
        spec.expiry()
    except KeySpecError as e:
        raise fail(f"--{e.field.replace('_at', '').replace('_', '-')}: {e.message}") from None
    new = _with_store(cfg, lambda store: KeyStore(store).create_spec(spec))
    if output == "json":
        typer.echo(orjson.dumps({**new.record.public(), "key": new.secret}, option=orjson.OPT_INDENT_2).decode())
        return
    r = new.record
    limits = [f"budget ${r.budget_usd:g}" if r.budget_usd is not None else "", f"{r.rpm} rpm" if r.rpm else "",
              f"models {', '.join(r.models)}" if r.models else "", f"expires {fmt_time(r.expires_at)}" if r.expires_at else ""]
    typer.secho(f"Created API key '{r.name}' ({r.id}; {'; '.join(x for x in limits if x) or 'no limits'}). "
                "It is shown only this once:", err=True)
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
        table.add_column(col, justify="right" if col in ("budget", "spent", "rpm") else "left",
                         no_wrap=col in ("id", "prefix"))
    for x in rows:
        table.add_row(x["name"], x["id"], x["prefix"] + "...", x["status"],
                      "-" if x["budget_usd"] is None else f"${x['budget_usd']:g}", f"${x['spent_usd']:.6f}",
                      str(x["rpm"] or "-"), ", ".join(x["models"]) if x["models"] else "all", x["expires_at"] or "-")
    _print(table if rows else "No API keys yet: `hybridgate keys create --name NAME` makes one.")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")], config: ConfigOpt = None) -> None:
    """Revoke a key: running gateways refuse it within seconds (the key cache's TTL)."""
    cfg = load_or_exit(config)
    rec = _with_store(cfg, lambda store: KeyStore(store).revoke(key_id))
    if rec is None:
        raise fail(f"no API key with id '{key_id}' (`hybridgate keys list` shows them)")
    typer.secho(f"Revoked API key '{rec.name}' ({rec.id}); running gateways refuse it within {KeyCache.ttl_s:g}s.", err=True)


@app.command("usage")
def usage_cmd(
    by: Annotated[str, typer.Option("--by", help="Group by backend, model, key or day.")] = "model",
    since: Annotated[Optional[str], typer.Option("--since", help="Start: 7d, 24h, a date or datetime (default: all).")] = None,  # noqa: UP045
    until: Annotated[Optional[str], typer.Option("--until", help="End (exclusive), same forms as --since.")] = None,  # noqa: UP045
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
    report = _with_store(cfg, lambda store: usage_report(store, group_by=by, since=start, until=end, key_id=key))
    if output == "json":
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.table import Table

    span = f"since {fmt_time(start)}" if start else "all time"
    table = Table(title=f"Usage by {by}, {span}" + (f", key {key}" if key else ""), title_justify="left")
    for col in (by, "requests", "attempts", "input tokens", "output tokens", "cost (USD)"):
        table.add_column(col, justify="left" if col == by else "right")
    for x in report["data"]:
        table.add_row(str(x["group"]), str(x["requests"]), str(x["attempts"]), f"{x['input_tokens']:,}",
                      f"{x['output_tokens']:,}", f"{x['cost_usd']:.6f}")
    table.add_section()
    table.add_row("total", "", "", "", "", f"{report['total_cost_usd']:.6f}")
    _print(table)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Bring the database to the newest schema (serve does this at start too)."""
    cfg = load_or_exit(config)
    rev = _with_store(cfg, lambda store: current_revision(store.engine))
    typer.secho(f"database {Store(cfg.database).describe()} is at revision {rev} (head: {head_revision()})", err=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
