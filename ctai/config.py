"""Configuration: embedded defaults, one TOML file, environment-variable overrides.

The defaults name every setting and its type, ``CHOICES`` and ``CONDITIONS`` what some may be: a
setting they do not name, or a value of another type, below zero or not as said, is refused when
the configuration is loaded, with what was meant where a name is close, rather than ignored or
failing later inside a running service. A plugin's own settings go in a table under
``[plugins]``, e.g. ``[plugins.my_ris]``.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ctai.errors import ConfigError

Config = dict[str, dict[str, Any]]
ENV_PREFIX = "CTAI_"
#: The values a text setting may take, where any text will not do.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("model", "backend"): ("auto", "keras", "onnxruntime", "openvino"),
    ("site", "mode"): ("live", "shadow"),
    ("inputs", "intended_use"): ("withhold", "flag", "off"),
    ("inputs", "atypical"): ("flag", "withhold", "off"),
    ("queue", "backend"): ("sqlite", "redis"),
}


def _ages(value: list) -> bool:
    """Whether ``[inputs] intended_ages`` is empty (the model's own) or a range of ages."""
    return value == [] or (len(value) == 2 and all(isinstance(age, (int, float)) for age in value)
                           and 0 <= value[0] <= value[1])


def _url(*schemes: str) -> tuple[str, Callable[[Any], bool]]:
    """The condition of a URL setting: empty (not used), or a URL of one of ``schemes`` with a host
    (a socket's path for unix://)."""
    def test(value: str) -> bool:
        parts = urlsplit(value)
        return not value or (parts.scheme in schemes and bool(parts.path if parts.scheme == "unix" else parts.netloc))
    return f"nothing, or a URL starting {' or '.join(f'{scheme}://' for scheme in schemes)}", test


_WEB_URL = _url("http", "https")
_PORT = ("a port number, at most 65535", lambda value: value <= 65535)
_PROBABILITY = ("a probability, at most 1", lambda value: value <= 1)


def _ae_title(value: object) -> bool:
    """Whether ``value`` is an Application Entity title (PS3.5 6.2, VR AE): 1 to 16 characters of
    the default repertoire, no backslash or control character, not only spaces. pynetdicom refuses
    anything else only when it connects, which the outbox would take for a peer down and retry."""
    return (isinstance(value, str) and 0 < len(value) <= 16 and value.isascii() and value.isprintable()
            and "\\" not in value and bool(value.strip()))


_AE_TITLE = ("an AE title: 1 to 16 ASCII characters, no backslash, not only spaces (DICOM PS3.5 6.2)", _ae_title)
#: What some settings must be besides their kind, and the test of it.
CONDITIONS: dict[tuple[str, str], tuple[str, Callable[[Any], bool]]] = {
    ("model", "batch_size"): ("at least 1", lambda value: value >= 1),
    ("worker", "threads"): ("at least 1", lambda value: value >= 1),
    ("site", "folds"): ("at least 2", lambda value: value >= 2),
    ("site", "min_sensitivity"): _PROBABILITY,
    ("inputs", "gate_threshold"): _PROBABILITY,
    ("inputs", "intended_ages"): ("[] or the youngest and oldest age in years, such as [1, 5]", _ages),
    ("web", "public_url"): _WEB_URL,
    ("fhir", "base_url"): _WEB_URL,
    ("dicomweb", "url"): _WEB_URL,
    ("orthanc", "url"): _WEB_URL,
    ("queue", "url"): _url("redis", "rediss", "unix"),
    # HL7 v2.5 2.A.60 (PT): processing ID (table 0103), then an optional processing mode (table 0207).
    ("hl7", "processing_id"): ("P, D or T (HL7 table 0103), optionally ^ and a mode: A, R, I or T (table 0207)",
                               lambda value: re.fullmatch(r"[PDT](\^[ARIT]?)?", value) is not None),
    **{key: _AE_TITLE for key in (("listener", "ae_title"), ("cstore", "ae_title"), ("cstore", "calling_ae_title"),
                                  ("orthanc", "aet"))},
    ("listener", "allowed_aets"): (f"a list of AE titles, each {_AE_TITLE[0].removeprefix('an AE title: ')}",
                                   lambda value: all(map(_ae_title, value))),
    **{(section, key): _PORT for section, key in (("web", "port"), ("listener", "port"), ("cstore", "port"),
                                                  ("hl7", "port"), ("metrics", "port"), ("orthanc", "http_port"),
                                                  ("orthanc", "dicom_port"))},
}


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


def _from_env(environ: Mapping[str, str], known: Config) -> dict[str, dict[str, Any]]:
    """``CTAI_<SECTION>__<KEY>`` variables; the text as it is for a setting whose default is text
    (a password or AE title of digits stays text), else as a TOML value."""
    found: dict[str, dict[str, Any]] = {}
    for name, text in environ.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            section, key = name[len(ENV_PREFIX):].lower().split("__", 1)
            textual = isinstance(known.get(section, {}).get(key), str)
            found.setdefault(section, {})[key] = text if textual else _parse_env_value(text)
    return found


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration: defaults < file (``path`` or $CTAI_CONFIG) < environment;
    ValueError naming each setting the defaults do not have, and each value of the wrong kind or
    one its setting cannot take (``CHOICES``, ``CONDITIONS``)."""
    environ = os.environ if environ is None else environ
    config = known = defaults()
    path = path or (Path(environ["CTAI_CONFIG"]) if environ.get("CTAI_CONFIG") else None)
    if path is not None:
        try:
            config = _merge(config, tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"configuration file {path}: {exc}") from exc
    config = _merge(config, _from_env(environ, known))
    if problems := [problem for section, values in config.items() for key, value in values.items()
                    if (problem := _problem(section, key, value, known))]:
        raise ValueError("\n  ".join([f"configuration{f' file {path}' if path else ''}:", *problems]))
    return config


def _problem(section: str, key: str, value: Any, known: Config) -> str | None:
    """What is wrong with setting ``[section] key = value``, or None."""
    if section not in known:
        return f"no section [{section}]{_close(section, known, '[{}]')}; a plugin's own go under [plugins.NAME]"
    if key not in known[section]:
        if section == "plugins" and isinstance(value, dict):
            return None  # a plugin's own settings
        return f"no setting {key} in [{section}]{_close(key, known[section], '{}')}"
    default = known[section][key]
    measure = isinstance(default, int) and not isinstance(default, bool) and key.endswith(_QUANTITIES)
    kind, accepted = next((kind, accepted) for of, kind, accepted in _KINDS
                          if isinstance(float(default) if measure else default, of))
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, accepted):
        return f"[{section}] {key} = {_toml_value(value)}: expected {kind}, such as {_toml_value(default)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        return f"[{section}] {key} = {_toml_value(value)}: expected a number not below 0"
    if value not in CHOICES.get((section, key), (value,)):
        return f"[{section}] {key} = {_toml_value(value)}: expected one of {', '.join(CHOICES[section, key])}"
    if (condition := CONDITIONS.get((section, key))) and not condition[1](value):
        return f"[{section}] {key} = {_toml_value(value)}: expected {condition[0]}"
    return None


#: Settings named for a unit, which take a fraction even where their default is whole (the code
#: reads them with ``float``): ``lease_seconds = 2.5``, ``[orthanc] timeout = 7.5``.
_QUANTITIES = ("_seconds", "_minutes", "_hours", "_days", "_mb", "_ms", "timeout")
#: A setting's kind by its default's type (``bool`` before ``int``, of which it is one), and the
#: types its value may have: a whole number also where a decimal one is expected.
_KINDS: tuple[tuple[type, str, type | tuple[type, ...]], ...] = (
    (bool, "true or false", bool), (int, "a whole number", int), (float, "a number", (int, float)),
    (str, "text", str), (list, "a list", list))


def _close(name: str, names: Iterable[str], shown: str) -> str:
    """" (did you mean X?)" for the one of ``names`` closest to a misspelt ``name``, written as
    ``shown`` says, else nothing."""
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {shown.format(close[0])}?)" if close else ""


def data_dir(config: Config) -> Path:
    """The folder that holds all of ctai's state, created on first use; ConfigError if it cannot
    be made or written to."""
    path = Path(config["data"]["dir"]).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, a parent it may not write to, a read-only disk
        reason = "a file of that name is there" if isinstance(exc, FileExistsError) else exc.strerror
        raise ConfigError(f"[data] dir {path}: cannot be ctai's data folder ({reason})") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"[data] dir {path}: ctai's user may not write to it")
    return path


#: Settings that hold a secret (``[queue] url`` may hold one too: ``masked``).
SECRETS = (("orthanc", "password"), ("web", "staff_token"), ("fhir", "authorization"),
           ("dicomweb", "authorization"))
HIDDEN = "(set; hidden)"


def redacted(config: Config) -> Config:
    """``config`` with its secrets that are set shown as ``HIDDEN`` and the password in ``[queue]
    url`` masked: for printing, where a copy may reach a ticket or a chat."""
    shown = copy.deepcopy(config)
    for section, key in SECRETS:
        if shown[section][key]:
            shown[section][key] = HIDDEN
    shown["queue"]["url"] = masked(shown["queue"]["url"])
    return shown


def masked(url: str) -> str:
    """``url`` with its password, if it has one, shown as ``***``: for messages and printouts."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


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
    if isinstance(value, dict):  # a plugin's own settings (``[plugins.NAME]``), as an inline table
        return "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
