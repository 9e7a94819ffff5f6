"""How a tool call looks in chat: one line under the reply like the reasoning
(`▸ python · 0.4 s · 1 line of output`); expanded, the code syntax-highlighted and its output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Group
from rich.padding import Padding
from rich.syntax import Syntax
from rich.text import Text

EXPANDED_OUTPUT_LINES = 40
CODE_THEME = "monokai"


def summary(ev: Any) -> str:
    """`python · 0.4 s · 2 lines of output` for a ToolFinished event."""
    parts = [ev.author, f"{ev.seconds:.1f} s"]
    text = ev.result.summary or _default_summary(ev.result.text)
    if ev.result.error and "error" not in text.lower():
        text = f"error: {text}" if text else "error"
    if text:
        parts.append(text)
    return " · ".join(parts)


def _default_summary(text: str) -> str:
    lines = text.rstrip("\n").count("\n") + 1 if text.strip() else 0
    return f"{lines} line{'s' if lines != 1 else ''} of output" if lines else "no output"


def collapsed(ev: Any) -> tuple[Text, str]:
    """The one line (rich, plain)."""
    line = summary(ev)
    style = "yellow" if ev.result.error else "dim"
    return Text(f"▸ {line}", style=style), f"[{line}]"


def _language(ev: Any) -> str:
    if ev.author == "python":
        return "python"
    return "json" if ev.call.arguments.lstrip().startswith(("{", "[")) else "text"


def _clip_lines(text: str, n: int) -> str:
    lines = text.rstrip("\n").split("\n")
    if len(lines) <= n:
        return "\n".join(lines)
    return "\n".join([*lines[: n // 2], f"… {len(lines) - n} lines …", *lines[-(n // 2) :]])


def expanded(ev: Any) -> tuple[Any, str]:
    """The line, the call (highlighted) and its output (rich renderable, plain text)."""
    line, plain_line = collapsed(ev)
    code = ev.call.arguments.strip("\n")
    output = _clip_lines(ev.result.text, EXPANDED_OUTPUT_LINES)
    body = Group(
        Syntax(code, _language(ev), theme=CODE_THEME, word_wrap=True, background_color="default"),
        Text(output, style="dim"),
    )
    plain = "\n".join([plain_line, _indent(code), _indent(output)])
    head = Text(f"▾ {summary(ev)}", style=line.style)
    return Group(head, Padding(body, (0, 0, 0, 2))), plain


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.split("\n"))


def pending_call(ev: Any) -> tuple[Text, str]:
    """A call nothing ran (the turn stopped at it, e.g. a --tools function)."""
    arguments = ev.arguments.strip()
    label = Text("tool call ", style="bold magenta") + Text(ev.recipient, style="magenta")
    return label + Text(" " + arguments), f"[tool call] {ev.recipient} {arguments}"


class ToolLines:
    """TurnView's part for tool calls: a call is shown by its result's line; a call nothing ran
    is printed as soon as something else is written; the live region pauses for questions."""

    pending_call: Any
    running: str | None
    live: Any
    mode: str

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the live region while the user is asked something (approval, a tool result);
        the question shows the call, so its pending line is dropped."""
        self._end_segment()
        self.pending_call = None
        live, self.live = self.live, None
        if live is not None:
            live.stop()
        try:
            yield
        finally:
            if live is not None:
                live.start()
                self.live = live

    def _flush_call(self) -> None:
        call, self.pending_call = self.pending_call, None
        if call is not None:
            rich_line, plain = pending_call(call)
            self._print(rich_line, plain=plain)

    def _tool_event(self, ev: Any) -> bool:
        """ToolStarted / ToolFinished (tool_loop events): a spinner, then the call's line."""
        name = type(ev).__name__
        if name == "ToolStarted":
            self.pending_call = None
            self.running = ev.author
            self._refresh(force=True)
            return True
        if name != "ToolFinished":
            return False
        self.pending_call, self.running = None, None
        if self.mode == "show":
            renderable, plain = expanded(ev)
        else:
            renderable, plain = collapsed(ev)
        self._print(renderable, plain=plain)
        return True
