"""`hybridgate serve`: run the gateway under uvicorn, in one process or several workers."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from hybridgate.auth import KeyStore, NewKey
from hybridgate.cli._common import ConfigOpt, fail, load_or_exit, uvicorn_kwargs, with_store
from hybridgate.config import Config, ConfigError
from hybridgate.store import Store


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
        uvicorn.run(gw, host=h, port=p, **uvicorn_kwargs())
    else:
        # Each worker builds its own Gateway from the same file, via the import-string factory, and
        # sets up its own logging (a worker is a fresh interpreter).
        if config is not None:
            os.environ["HYBRIDGATE_CONFIG"] = str(config.resolve())
        os.environ["HYBRIDGATE_LOG_LEVEL"] = log_level
        uvicorn.run(
            "hybridgate.api.app:app_factory", factory=True, host=h, port=p, workers=n, **uvicorn_kwargs()
        )


def _ensure_first_key(cfg: Config, base_url: str) -> None:
    async def ensure(store: Store) -> NewKey | None:
        keys = KeyStore(store)
        return None if await keys.count() else await keys.create("local")

    new = with_store(cfg, ensure)
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
