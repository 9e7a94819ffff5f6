"""Tools in `gptoss chat`: `/tools`, asking to approve a call, asking for a function's result."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from .. import harmony
from ..errors import UserError
from ..tools.base import Tool

APPROVE_ANSWERS = {
    "y": "yes",
    "yes": "yes",
    "n": "no",
    "no": "no",
    "a": "always",
    "always": "always",
}
ARGUMENT_PREVIEW = 400


class ToolCommands:
    """What the REPL does about tools. `factories` builds a tool `/tools NAME on` turns on
    (set by `gptoss chat`: python with the chat's sandbox settings)."""

    def __init__(self, repl: Any) -> None:
        self.repl = repl
        self.factories: dict[str, Callable[[], Tool]] = {}
        self.off: dict[str, Tool] = {}
        loop = repl.loop
        if loop.approve is None:
            loop.approve = self.approve
        if loop.ask_result is None:
            loop.ask_result = self.ask_result

    # ---- /tools ---------------------------------------------------------------------------
    def command(self, arg: str) -> None:
        words = arg.split()
        if not words:
            self.show()
            return
        if len(words) != 2 or words[1].lower() not in ("on", "off"):
            raise UserError("usage: /tools, or /tools NAME on|off (e.g. /tools python off)")
        self.toggle(words[0], words[1].lower() == "on")

    def announce(self) -> None:
        """One line under the banner when the model has tools."""
        names = self.repl.loop.table.names()
        if names:
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            self.repl.renderer.info(f"tools: {shown} (/tools)")
        from ..session.tool_setup import offline_note

        note = offline_note(self.repl.loop.table)
        if note:
            self.repl.renderer.warn(note)

    def show(self) -> None:
        table = self.repl.loop.table
        say = self.repl.renderer.say
        if not table.tools and not table.functions and not self.off:
            say("no tools (start the chat with --python, --browser, --mcp FILE or --tools FILE)")
        for name in table.tools:
            if name != "functions":
                say(f"  {name:<24} on")
        for name in self.off:
            say(f"  {name:<24} off")
        for name, (tool, _) in table.functions.items():
            origin = "no executor: you answer it" if tool is None else "runs"
            say(f"  functions.{name:<14} {origin}")
        for name in self.factories:
            if name not in table.tools and name not in self.off:
                say(f"  {name:<24} off (/tools {name} on)")

    def toggle(self, name: str, on: bool) -> None:
        from ..session.tool_setup import declare

        table = self.repl.loop.table
        if on:
            if name in table.tools:
                raise UserError(f"{name} is already on")
            tool = self.off.pop(name, None)
            if tool is None and name in self.factories:
                tool = self.factories[name]()
            if tool is None:
                raise UserError(f"no tool {name!r} to turn on; /tools lists them")
            table.add(tool)
        else:
            tool = table.remove(name)
            if tool is None:
                raise UserError(f"{name} is not on; /tools lists the tools")
            self.off[name] = tool
        declare(self.repl.session, table)
        self.repl.renderer.info(f"{name}: {'on' if on else 'off'} (from the next reply)")

    # ---- citations --------------------------------------------------------------------------
    def citations(self) -> Any:
        """Footnotes for the browser's `【cursor†Lx-Ly】` in this reply (None: browser off)."""
        browser = self.repl.loop.table.tools.get("browser")
        if browser is None:
            return None
        from ..tools.browser import CitationStream

        return CitationStream(browser, style="footnotes")

    def footnotes(self, notes: list[Any]) -> None:
        """`[1] Title - URL` under the answer."""
        from ..tools.browser import format_footnotes

        self.repl.renderer.say(format_footnotes(notes))

    # ---- questions during a turn ------------------------------------------------------------
    def approve(self, tool: Tool, function: str, arguments: str) -> str:
        name = f"{tool.name}.{function}" if function else tool.name
        preview = arguments.strip()
        if len(preview) > ARGUMENT_PREVIEW:
            preview = preview[: ARGUMENT_PREVIEW - 1] + "…"
        with self._paused():
            self.repl.renderer.warn(f"the model wants to run {name}: {preview}")
            while True:
                answer = self._read("allow? [y]es / [n]o / [a]lways: ")
                if answer is None:
                    return "no"
                answer = answer.strip().lower()
                if answer in APPROVE_ANSWERS:
                    return APPROVE_ANSWERS[answer]
                self.repl.renderer.info("answer y, n or a")

    def ask_result(self, call: harmony.ToolCall) -> str | None:
        with self._paused():
            self.repl.renderer.warn(
                f"the model called {call.recipient} {call.arguments.strip()} (a --tools function)"
            )
            answer = self._read("its result (empty: stop the reply here): ")
        return (answer or "").strip() or None

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        view = self.repl._view
        if view is None:
            yield
            return
        with view.paused():
            yield

    def _read(self, question: str) -> str | None:
        """One line from the user; None at the end of input."""
        repl = self.repl
        if repl.lines is not None:
            line = repl.lines.readline()
            repl.renderer.say(question + line.rstrip("\n"))
            return line or None
        from prompt_toolkit import PromptSession

        try:
            return PromptSession(input=repl._io[0], output=repl._io[1]).prompt(question)
        except EOFError:
            return None
