"""`gptoss serve`: an OpenAI-compatible HTTP server (Chat Completions and Responses) over one model.

It sits over the session layer and never imports the CLI or UI modules.
"""

from __future__ import annotations

from .app import create_app
from .engine import ServerEngine

__all__ = ["ServerEngine", "create_app"]
