"""Configuration: embedded defaults, one TOML file, environment-variable overrides."""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

Config = dict[str, dict[str, Any]]
ENV_PREFIX = "CTAI_"


def defaults() -> Config:
    return tomllib.loads(resources.files("ctai").joinpath("default.toml").read_text())


def _merge(base: Config, override: Mapping[str, Any]) -> Config:
    merged = copy.deepcopy(base)
    for section, values in override.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"configuration: [{section}] must be a table")
        merged.setdefault(section, {}).update(values)
    return merged


def _parse_env_value(text: str) -> Any:
    """A TOML value if the text is one (numbers, booleans, lists), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _from_env(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name, text in environ.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            section, key = name[len(ENV_PREFIX):].lower().split("__", 1)
            found.setdefault(section, {})[key] = _parse_env_value(text)
    return found


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration: defaults < file (``path`` or $CTAI_CONFIG) < environment."""
    environ = os.environ if environ is None else environ
    config = defaults()
    path = path or (Path(environ["CTAI_CONFIG"]) if environ.get("CTAI_CONFIG") else None)
    if path is not None:
        try:
            config = _merge(config, tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"configuration file {path}: {exc}") from exc
    return _merge(config, _from_env(environ))


def data_dir(config: Config) -> Path:
    """The folder that holds all of ctai's state, created on first use."""
    path = Path(config["data"]["dir"]).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def to_toml(config: Config) -> str:
    """The configuration as TOML text (for ``ctai config``)."""
    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
