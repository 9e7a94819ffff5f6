"""The one place that resolves settings: command-line flag > environment > config file > default.

The config file is TOML (`~/.config/gptoss/config.toml`, or `$GPTOSS_CONFIG`), e.g.::

    model = "20b"
    effort = "high"
    temperature = 0.7
    context = 32768
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UserError
from .paths import config_file

EFFORTS = ("low", "medium", "high")


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
    sources: dict[str, str] = field(default_factory=dict, repr=False)


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
    "yes": lambda v: v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes"),
    "force": lambda v: v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes"),
    "python": lambda v: _CASTS["yes"](v),
    "python_timeout": float,
    "python_network": lambda v: _CASTS["yes"](v),
    "python_unsafe": lambda v: _CASTS["yes"](v),
    "max_tool_calls": int,
    "mcp": lambda v: str(Path(str(v)).expanduser()),
    "tools": lambda v: str(Path(str(v)).expanduser()),
}


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
            f"unknown key(s) {', '.join(unknown)} in {path}; valid keys: {', '.join(sorted(_CASTS))}"
        )
    return data


def _cast(key: str, value: Any, origin: str) -> Any:
    try:
        return _CASTS[key](value)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad value {value!r} for {key} (from {origin})") from e


def validate(s: Settings) -> Settings:
    if s.effort not in EFFORTS:
        raise UserError(f"effort must be one of {', '.join(EFFORTS)}, not {s.effort!r}")
    if s.temperature < 0:
        raise UserError("temperature must be >= 0 (0 means greedy)")
    if not 0 < s.top_p <= 1:
        raise UserError("top-p must be in (0, 1]")
    if s.top_k < 0:
        raise UserError("top-k must be >= 0 (0 turns it off)")
    if not 0 <= s.min_p < 1:
        raise UserError("min-p must be in [0, 1)")
    if s.max_tokens is not None and s.max_tokens < 1:
        raise UserError("max-tokens must be >= 1")
    if s.context is not None and not 16 <= s.context <= 131072:
        raise UserError("context must be between 16 and 131072 tokens")
    if s.dtype not in (None, "float32", "bfloat16", "float16"):
        raise UserError("dtype must be float32, bfloat16 or float16")
    if not 0 < s.python_timeout <= 86400:
        raise UserError("python-timeout must be more than 0 and at most 86400 seconds")
    if not 1 <= s.max_tool_calls <= 1000:
        raise UserError("max-tool-calls must be between 1 and 1000")
    return s


def resolve(flags: dict[str, Any] | None = None, config_path: Path | None = None) -> Settings:
    """Build Settings; a flag given as None means "not given on the command line"."""
    flags = flags or {}
    config = load_config_file(config_path)
    s = Settings()
    for f in fields(Settings):
        key = f.name
        if key == "sources":
            continue
        if flags.get(key) is not None:
            setattr(s, key, _cast(key, flags[key], "command line"))
            s.sources[key] = "flag"
        elif os.environ.get(env_name(key)):
            setattr(s, key, _cast(key, os.environ[env_name(key)], env_name(key)))
            s.sources[key] = "env"
        elif key in config:
            setattr(s, key, _cast(key, config[key], "config file"))
            s.sources[key] = "config"
        else:
            s.sources[key] = "default"
    return validate(s)
