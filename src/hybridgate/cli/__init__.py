"""The `hybridgate` command line. Exit codes: 0 ok, 1 failure, 2 unreachable/infrastructure, 3 bad input/config.

One module per command group; this one builds the `app` and registers their commands on it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hybridgate import __version__
from hybridgate.cli import check, db, drift, keys, mock, pods, serve, usage
from hybridgate.cli._common import _Group

app = typer.Typer(
    cls=_Group,
    name="hybridgate",
    help="A self-hosted, OpenAI-compatible AI gateway: routing, fallback, cost accounting, cheap honest tests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hybridgate {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """Options before any command."""


app.command()(serve.serve)
app.command("mock-server")(mock.mock_server)
app.command("mock-gemini")(mock.mock_gemini)
app.command("mock-runpod")(mock.mock_runpod)
app.command("mock-skypilot")(mock.mock_skypilot)
app.command("mock-fal")(mock.mock_fal)
app.command("mock-comfyui")(mock.mock_comfyui)
app.add_typer(keys.keys_app, name="keys")
app.add_typer(db.db_app, name="db")
app.add_typer(pods.pods_app, name="pods")
app.command("usage")(usage.usage_cmd)
app.command()(check.check)
app.command()(check.wait)
app.command()(drift.drift)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
