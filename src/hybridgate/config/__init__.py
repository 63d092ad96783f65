"""The YAML configuration: schema, `${ENV}` substitution, and the embedded default."""

from hybridgate.config._load import ConfigError, default_config, load_config, parse_config
from hybridgate.config._schema import (
    BackendConfig,
    ConcurrencyConfig,
    Config,
    HealthConfig,
    JobsConfig,
    MockOptions,
    PriceConfig,
    ServerConfig,
    StorageConfig,
    TimeoutsConfig,
)

__all__ = [
    "BackendConfig",
    "ConcurrencyConfig",
    "Config",
    "ConfigError",
    "HealthConfig",
    "JobsConfig",
    "MockOptions",
    "PriceConfig",
    "ServerConfig",
    "StorageConfig",
    "TimeoutsConfig",
    "default_config",
    "load_config",
    "parse_config",
]
