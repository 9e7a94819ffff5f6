"""What every tool is: the recipients it answers, what the prompt says about it, and `call`.

Modelled on openai/gpt-oss's `Tool` (name, instruction, process), but synchronous: the session's
tool loop dispatches a call by its recipient through one table of these.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolResult:
    """What a call gave back. `text` is what the model reads (errors included, as text it can act
    on); the rest is for the user's view and `--json`."""

    text: str
    error: bool = False
    summary: str = ""  # one short line for the UI, e.g. "3 lines of output" or the page title
    details: dict[str, Any] = field(default_factory=dict)  # e.g. {"code": ..., "url": ...}
    state_lost: bool = False  # a stateful tool was restarted (python after a kill)


class Tool(ABC):
    """One namespace of tools: `python`, `browser` (`browser.search`, ...) or `functions`.

    `name` is the namespace; `call(function, arguments)` gets the part of the recipient after
    the namespace (`""` for python, `"search"` for `browser.search`, `"get_weather"` for
    `functions.get_weather`) and the raw argument text the model wrote.
    """

    name: str = ""
    needs_approval: bool = False  # ask before each call unless approved (see `approved`)

    @abstractmethod
    def call(
        self, function: str, arguments: str, *, cancel: threading.Event | None = None
    ) -> ToolResult:
        """Run one call. Must not raise for anything the model wrote: bad arguments, an unknown
        function or a failing tool come back as `ToolResult(text=..., error=True)`. A set `cancel`
        asks a long call to stop early."""

    def approved(self, function: str) -> bool:
        """Whether `function` may run without asking (an allow-list such as MCP's autoApprove)."""
        return not self.needs_approval

    def close(self) -> None:  # noqa: B027 (most tools hold nothing to release)
        """Release processes, connections and files. Called once, when the chat ends."""

    def __enter__(self) -> Tool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
