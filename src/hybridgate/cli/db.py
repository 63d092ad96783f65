"""`hybridgate db`: the database's migrations (which `serve` also runs at start)."""

from __future__ import annotations

import typer

from hybridgate.cli._common import ConfigOpt, database_label, load_or_exit, with_store
from hybridgate.store import current_revision, head_revision

db_app = typer.Typer(help="The database: migrations (also run by `serve` at start).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Bring the database to the newest schema (serve does this at start too)."""
    cfg = load_or_exit(config)
    rev = with_store(cfg, lambda store: current_revision(store.engine))
    typer.secho(f"database {database_label(cfg)} is at revision {rev} (head: {head_revision()})", err=True)
