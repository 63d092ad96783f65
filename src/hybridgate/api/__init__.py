"""The HTTP binding: an ASGI app over the router, auth and ledger."""

from hybridgate.api.app import Gateway, app_factory, create_app

__all__ = ["Gateway", "app_factory", "create_app"]
