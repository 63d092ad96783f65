"""`hybridgate usage`: requests, tokens and cost from the ledger, grouped."""

from __future__ import annotations

from typing import Annotated, Optional

import orjson
import typer

from hybridgate.auth import fmt_time
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
from hybridgate.ledger import GROUPS, usage_report
from hybridgate.store import parse_time


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
    check_output(output)
    if by not in GROUPS:
        raise fail(f"--by must be one of {', '.join(GROUPS)}, not '{by}'")
    bounds: list[float | None] = []
    for option, text in (("--since", since), ("--until", until)):
        try:
            bounds.append(parse_time(text) if text else None)
        except ValueError as e:
            raise fail(f"{option}: {e}") from None
    start, end = bounds
    if start is not None and end is not None and end <= start:
        raise fail("--until must be later than --since")
    cfg = load_or_exit(config)
    report = with_store(
        cfg, lambda store: usage_report(store, group_by=by, since=start, until=end, key_id=key), create=False
    )
    if output == "json":
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.table import Table

    span = f"since {fmt_time(start)}" if start else "all time"
    table = Table(
        title=f"Usage by {by}, {span}" + (f", key {key}" if key else "") + f" ({database_label(cfg)})",
        title_justify="left",
    )
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
    print_rich(table)
