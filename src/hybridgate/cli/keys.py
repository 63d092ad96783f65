"""`hybridgate keys`: create, list and revoke API keys in the database the config names."""

from __future__ import annotations

from typing import Annotated, Optional

import orjson
import typer

from hybridgate.auth import KeyCache, KeyNameTaken, KeySpecError, KeyStore, fmt_time, parse_spec
from hybridgate.cli._common import (
    ConfigOpt,
    OutputOpt,
    check_output,
    database_label,
    fail,
    load_or_exit,
    print_rich,
    with_store,
)

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)


def _option(e: KeySpecError) -> str:
    """The option a bad key field came from: expires_at -> --expires, budget_usd -> --budget-usd."""
    return "--" + e.field.split(".")[0].replace("_at", "").replace("_", "-")


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
    tinker: Annotated[
        bool, typer.Option("--tinker", help="Prefix the key with tml-, as the official Tinker SDK requires.")
    ] = False,
    config: ConfigOpt = None,
    output: OutputOpt = "table",
) -> None:
    """Create a key and print it once (stdout: the key alone, or JSON with --output json)."""
    check_output(output)
    cfg = load_or_exit(config)
    try:
        spec = parse_spec(
            {
                "name": name,
                "budget_usd": budget_usd,
                "rpm": rpm,
                "expires_at": expires,
                "models": models.split(",") if models is not None else None,
                "prefix": "tml-" if tinker else "hg-",
            }
        )
        spec.check_models(cfg.public_models())
        spec.expiry()
    except KeySpecError as e:
        raise fail(f"{_option(e)}: {e.message}") from None
    try:
        new = with_store(cfg, lambda store: KeyStore(store).create_spec(spec))
    except KeyNameTaken as e:
        raise fail(f"{_option(e)}: {e.message}") from None
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
        f"Created API key '{r.name}' ({r.id}; {'; '.join(x for x in limits if x) or 'no limits'}) "
        f"in {database_label(cfg)}. It is shown only this once:",
        err=True,
    )
    typer.echo(new.secret)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, output: OutputOpt = "table") -> None:
    """List keys: name, id, prefix, budget, spent, status (never the secret)."""
    check_output(output)
    cfg = load_or_exit(config)
    records = with_store(cfg, lambda store: KeyStore(store).all(), create=False)
    rows = [r.public() for r in records]
    if output == "json":
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.table import Table

    table = Table(title=f"API keys in {database_label(cfg)}", title_justify="left")
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
    print_rich(
        table
        if rows
        else f"No API keys in {database_label(cfg)} yet: `hybridgate keys create --name NAME` makes one."
    )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `keys list`).")], config: ConfigOpt = None
) -> None:
    """Revoke a key: running gateways refuse it within seconds (the key cache's TTL)."""
    cfg = load_or_exit(config)
    rec = with_store(cfg, lambda store: KeyStore(store).revoke(key_id), create=False)
    if rec is None:
        raise fail(
            f"no API key with id '{key_id}' in {database_label(cfg)} (`hybridgate keys list` shows them)"
        )
    typer.secho(
        f"Revoked API key '{rec.name}' ({rec.id}) in {database_label(cfg)}; running gateways refuse new "
        f"requests with it within {KeyCache.ttl_s:g}s (streams already running finish).",
        err=True,
    )
