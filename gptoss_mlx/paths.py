"""Where the project keeps its files: config, state (history, chats), cache, converted models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = "gptoss"


def _xdg(var: str, linux_default: str, mac_default: str) -> Path:
    value = os.environ.get(var)
    if value:
        return Path(value) / APP
    if sys.platform == "darwin":
        return Path.home() / mac_default / APP
    return Path.home() / linux_default / APP


def config_dir() -> Path:
    # ~/.config on macOS too: that is where terminal users look for a CLI's config file.
    value = os.environ.get("XDG_CONFIG_HOME")
    return (Path(value) if value else Path.home() / ".config") / APP


def config_file() -> Path:
    override = os.environ.get("GPTOSS_CONFIG")
    return Path(override) if override else config_dir() / "config.toml"


def state_dir() -> Path:
    """Chat history and autosaved conversations."""
    return _xdg("XDG_STATE_HOME", ".local/state", "Library/Application Support")


def cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache", "Library/Caches")


def data_dir() -> Path:
    """Converted models live under data_dir()/models unless GPTOSS_HOME says otherwise."""
    override = os.environ.get("GPTOSS_HOME")
    if override:
        return Path(override)
    return _xdg("XDG_DATA_HOME", ".local/share", "Library/Application Support")


def models_dir() -> Path:
    return data_dir() / "models"


def model_name(path: Path) -> str:
    """A readable name for a model directory (a cache snapshot is named by its repo)."""
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.split("--")[-1]
    return path.name
