"""The YAML configuration: schema, `${ENV}` substitution, and the embedded default."""

from hybridgate.config._load import ConfigError, default_config, load_config, parse_config
from hybridgate.config._schema import (
    BackendConfig,
    ConcurrencyConfig,
    Config,
    HealthConfig,
    MockOptions,
    PriceConfig,
    ServerConfig,
    TimeoutsConfig,
)

__all__ = [
    "BackendConfig",
    "ConcurrencyConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "MockOptions",
    "PriceConfig",
    "ServerConfig",
    "TimeoutsConfig",
    "default_config",
    "load_config",
    "parse_config",
]
