"""What every command shares: exit codes, the error exit, config loading, the database runner, output
helpers and the option types several commands take.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
import typer.core

from hybridgate.config import Config, ConfigError, load_config
from hybridgate.store import Store, StoreError, sqlite_path

EXIT_UNREACHABLE = 2
EXIT_CONFIG = 3
T = TypeVar("T")


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


ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (default: the embedded default: SQLite at ./.hybridgate/hybridgate.db, "
        "backends mock and local, the model gemma-3-270m).",
    ),
]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="table or json.")]
TextOrJson = Annotated[str, typer.Option("--output", "-o", help="text (a table) or json.")]


def fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load_or_exit(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise fail(str(e)) from None


def uvicorn_kwargs() -> dict[str, Any]:
    kw: dict[str, Any] = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 10}
    import uvicorn

    try:
        import uvloop  # noqa: F401

        kw["loop"] = "uvloop"
        if hasattr(uvicorn.Config, "get_loop_factory"):  # uvicorn >= 0.36 takes a loop factory by name
            # uvloop, accepting up to a batch of waiting connections per loop turn instead of one (_loop.py)
            kw["loop"] = "hybridgate._loop:new_event_loop"
    except ImportError:
        pass
    try:
        import httptools  # noqa: F401

        kw["http"] = "httptools"
    except ImportError:
        pass
    return kw


def database_label(cfg: Config) -> str:
    """The config's database for messages: a SQLite file's absolute path (the default one is relative to
    the folder a command runs in), else the URL without its password."""
    try:
        path = sqlite_path(cfg.database)
    except Exception:  # not a URL at all: opening it says so
        return cfg.database
    return str(path.resolve()) if path is not None else Store(cfg.database).describe()


def with_store(cfg: Config, fn: Callable[[Store], Awaitable[T]], *, create: bool = True) -> T:
    """Open (and migrate) the config's database, run `fn` on it, close it. Unreachable: exit 2.

    `create=False` for commands that only read or change what is there: a SQLite file that does not exist
    is then an error (exit 2) naming it, instead of a new empty database in whatever folder this runs in.
    """
    if not create:
        try:
            path = sqlite_path(cfg.database)
        except Exception:
            path = None
        if path is not None and not path.exists():
            where = " (the embedded default's, relative to this folder)" if cfg.source.startswith("<") else ""
            raise fail(
                f"no database at {path.resolve()}{where}; `--config FILE` names another, and "
                "`hybridgate serve` or `hybridgate db upgrade` creates it",
                EXIT_UNREACHABLE,
            )

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


def print_rich(renderable: object) -> None:
    """Print with rich; piped or redirected, wide enough that ids are never cut short."""
    from rich.console import Console

    (Console() if sys.stdout.isatty() else Console(width=200)).print(renderable)


def check_output(output: str) -> None:
    if output not in ("table", "json"):
        raise fail(f"--output must be table or json, not '{output}'")


def text_or_json(output: str) -> str:
    if output not in ("text", "json"):
        raise fail(f"--output must be text or json, not '{output}'")
    return output
