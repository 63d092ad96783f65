"""Reading a config file: `${ENV}` substitution, validation with messages that name the bad field."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hybridgate.config._schema import Config

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which field and why."""


def _substitute(node: Any, path: str, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), env) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", env) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def repl(m: re.Match[str]) -> str:
            name, has_default, default = m.group(1), m.group(2), m.group(3)
            if name in env:
                return env[name]
            if has_default is not None:
                return default or ""
            raise ConfigError(
                f"{path}: environment variable {name} is not set; "
                f"set it, or write ${{{name}:-}} for an empty default"
            )

        return _ENV_REF.sub(repl, node)
    return node


def _loc(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic error location as `backends[0].price` (with the backend's name when known)."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and isinstance(node[part], dict) else None
            out += f"[{part}]" + (f"('{name}')" if name else "")
        else:
            out += f".{part}" if out else str(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return out or "<top level>"


def parse_config(data: Any, source: str = "<string>", env: dict[str, str] | None = None) -> Config:
    """Validate already-loaded YAML data into a Config, or raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'backends' list")
    data = _substitute(data, "", dict(os.environ) if env is None else env)
    try:
        cfg = Config.model_validate({**data, "source": source})
    except ValidationError as e:
        lines = []
        for err in e.errors():
            lines.append(f"  {_loc(tuple(err['loc']), data)}: {err['msg']}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None
    return cfg


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Load `path`, or the embedded default when it is None."""
    if path is None:
        text = resources.files("hybridgate.config").joinpath("default.yaml").read_text()
        source = "<embedded default>"
    else:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e}") from None
        source = str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    return parse_config(data, source, env)


def default_config() -> Config:
    return load_config(None)
