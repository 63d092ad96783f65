"""The YAML configuration: schema, `${ENV}` substitution, and the embedded default."""

from hybridgate.config._load import ConfigError, default_config, load_config, parse_config
from hybridgate.config._schema import (
    BackendConfig,
    Config,
    HealthConfig,
    PriceConfig,
    ServerConfig,
    TimeoutsConfig,
)

__all__ = [
    "BackendConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "PriceConfig",
    "ServerConfig",
    "TimeoutsConfig",
    "default_config",
    "load_config",
    "parse_config",
]
