"""The one place that resolves settings: command-line flag > environment > config file > default.

The config file is TOML (`~/.config/gptoss/config.toml`, or `$GPTOSS_CONFIG`), e.g.::

    model = "20b"
    effort = "high"
    temperature = 0.7
    context = 32768
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import UserError
from .harmony.messages import EFFORTS
from .model import sampling
from .model.config import MAX_CONTEXT
from .paths import config_file

SEARCH_BACKENDS = ("searxng", "brave", "exa", "duckduckgo")  # tools/browser/backends.py BACKENDS


@dataclass
class Settings:
    model: str = "20b"
    effort: str = "medium"
    instructions: str | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None
    context: int | None = None
    dtype: str | None = None
    yes: bool = False
    force: bool = False
    python: bool = False
    python_timeout: float = 120.0
    python_network: bool = False
    python_unsafe: bool = False
    max_tool_calls: int = 20
    mcp: str | None = None
    tools: str | None = None
    browser: bool = False
    search: str | None = None  # searxng, brave, exa or duckduckgo; None: the first configured
    searxng_url: str | None = None
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    config_path: str = field(default="", repr=False)  # the config file read, to name it in errors


_CASTS: dict[str, Any] = {
    "model": str,
    "effort": str,
    "instructions": str,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "seed": int,
    "max_tokens": int,
    "context": int,
    "dtype": str,
    "yes": lambda v: _bool(v),
    "force": lambda v: _bool(v),
    "python": lambda v: _bool(v),
    "python_timeout": float,
    "python_network": lambda v: _bool(v),
    "python_unsafe": lambda v: _bool(v),
    "max_tool_calls": int,
    "mcp": lambda v: str(Path(str(v)).expanduser()),
    "tools": lambda v: str(Path(str(v)).expanduser()),
    "browser": lambda v: _bool(v),
    "search": lambda v: str(v).strip().lower(),
    "searxng_url": lambda v: str(v).strip(),
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word not in _TRUE + _FALSE:
        raise ValueError(f"not a yes/no value: {v!r}")
    return word in _TRUE


def env_name(key: str) -> str:
    return f"GPTOSS_{key.upper()}"


def load_config_file(path: Path | None = None) -> dict[str, Any]:
    path = path or config_file()
    if not path.exists():
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}; fix or remove it") from e
    unknown = sorted(set(data) - set(_CASTS))
    if unknown:
        raise UserError(
            f"unknown key(s) {', '.join(unknown)} in {path}; remove or rename them (valid keys: {', '.join(sorted(_CASTS))})"
        )
    return data


def _cast(key: str, value: Any, origin: str) -> Any:
    if _CASTS[key] in (int, float) and isinstance(value, bool):
        raise UserError(f"bad value {value!r} for {key} (from {origin}): use a number")
    if _CASTS[key] is int and isinstance(value, float):
        raise UserError(f"bad value {value!r} for {key} (from {origin}): use a whole number")
    try:
        return _CASTS[key](value)
    except (TypeError, ValueError, OverflowError) as e:
        kind = {int: "a whole number", float: "a number", str: "text"}.get(
            _CASTS[key], "yes or no (1/0, true/false)"
        )
        raise UserError(f"bad value {value!r} for {key} (from {origin}): use {kind}") from e


def origin(s: Settings, key: str) -> str:
    """Where a setting came from, as the user would find it again."""
    where = s.sources.get(key, "default")
    if where == "flag":
        return "--" + key.replace("_", "-")
    if where == "env":
        return env_name(key)
    if where == "config":
        return f"key {key} in {s.config_path or 'the config file'}"
    return "the default"


def _check_number(s: Settings, key: str, rule: str, ok: bool) -> None:
    value = getattr(s, key)
    if not ok or not math.isfinite(value):
        raise UserError(
            f"{key.replace('_', '-')} must be {rule}, not {value!r} (from {origin(s, key)})"
        )


def validate(s: Settings) -> Settings:
    if s.effort not in EFFORTS:
        raise UserError(
            f"effort must be one of {', '.join(EFFORTS)}, not {s.effort!r} (from {origin(s, 'effort')})"
        )
    for key in sampling.SAMPLER_KEYS:
        value = getattr(s, key)
        problem = None if value is None else sampling.check(key, value)
        if problem:
            raise UserError(
                f"{key.replace('_', '-')} must be {problem}, not {value!r} (from {origin(s, key)})"
            )
    if s.max_tokens is not None:
        _check_number(
            s, "max_tokens", f"between 1 and {MAX_CONTEXT}", 1 <= s.max_tokens <= MAX_CONTEXT
        )
    if s.context is not None:
        _check_number(
            s, "context", f"between 16 and {MAX_CONTEXT} tokens", 16 <= s.context <= MAX_CONTEXT
        )
    _check_number(
        s, "python_timeout", "more than 0 and at most 86400 seconds", 0 < s.python_timeout <= 86400
    )
    _check_number(s, "max_tool_calls", "between 1 and 1000", 1 <= s.max_tool_calls <= 1000)
    if s.dtype not in (None, "float32", "bfloat16", "float16"):
        raise UserError(
            f"dtype must be float32, bfloat16 or float16, not {s.dtype!r} (from {origin(s, 'dtype')})"
        )
    _check_search(s)
    for key in ("model", "instructions"):
        value = getattr(s, key)
        if value is not None and "\x00" in value:
            raise UserError(f"{key} contains a NUL byte (from {origin(s, key)}); remove it")
    if not s.model.strip():
        raise UserError(
            f"model is empty (from {origin(s, 'model')}); use 20b, 120b, a repo id or a path"
        )
    return s


def _check_search(s: Settings) -> None:
    if s.search is not None and s.search not in SEARCH_BACKENDS:
        raise UserError(
            f"search must be one of {', '.join(SEARCH_BACKENDS)}, not {s.search!r} (from {origin(s, 'search')})"
        )
    url = s.searxng_url
    if url is not None and (
        urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc
    ):
        raise UserError(
            f"searxng-url must be an http(s) URL such as http://localhost:8080, not {url!r} (from {origin(s, 'searxng_url')})"
        )
    if s.search == "searxng" and not url:
        raise UserError(
            f"search is searxng (from {origin(s, 'search')}) but no SearXNG URL is set: set GPTOSS_SEARXNG_URL (e.g. http://localhost:8080)"
        )


def resolve(flags: dict[str, Any] | None = None, config_path: Path | None = None) -> Settings:
    """Build Settings; a flag given as None means "not given on the command line"."""
    flags = flags or {}
    config = load_config_file(config_path)
    s = Settings()
    s.config_path = str(config_path or config_file())
    for f in fields(Settings):
        key = f.name
        if key in ("sources", "config_path"):
            continue
        if flags.get(key) is not None:
            setattr(s, key, _cast(key, flags[key], "command line"))
            s.sources[key] = "flag"
        elif os.environ.get(env_name(key)):
            setattr(s, key, _cast(key, os.environ[env_name(key)], env_name(key)))
            s.sources[key] = "env"
        elif key in config:
            setattr(s, key, _cast(key, config[key], f"key {key} in {s.config_path}"))
            s.sources[key] = "config"
        else:
            s.sources[key] = "default"
    return validate(s)
