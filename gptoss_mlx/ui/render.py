"""What `gptoss chat` prints: the reasoning block, the Markdown answer, tool calls and the footer.

Rich mode (a colour terminal) streams through a transient rich Live region that holds only the
unfinished tail; finished blocks are printed once above it, so a long answer costs no more per
refresh than a short one and scrollback keeps everything. Plain mode (stdout is no terminal, or
NO_COLOR) writes the text as it streams, without colour or cursor movement.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.markdown import Markdown
from rich.padding import Padding
from rich.spinner import Spinner
from rich.text import Text

from .. import harmony
from ..settings import MAX_CONTEXT
from .render_tools import ToolLines

REASONING_MODES = ("collapse", "show", "hide")
CODE_THEME = "monokai"
REFRESH_SECONDS = 1 / 12
NEARLY_FULL = 0.9


def use_plain(console: Console) -> bool:
    return not console.is_terminal or console.no_color or bool(os.environ.get("NO_COLOR"))


def reasoning_summary(seconds: float, tokens: int) -> str:
    return f"thought for {seconds:.1f} s, {tokens} token{'s' if tokens != 1 else ''}"


def footer_text(stats: Any, used: int, limit: int) -> tuple[str, str | None]:
    """The footer line and, when the context is nearly full, a warning to go with it."""
    parts = []
    reason = getattr(stats, "finish_reason", "")
    if reason == "interrupted":
        parts.append("interrupted")
    elif reason == "length":
        parts.append("cut at --max-tokens")
    elif reason == "context_full":
        parts.append("cut: context full")
    elif reason == "tool_call":
        parts.append("stopped at a tool call")
    elif reason == "tool_limit":
        parts.append("stopped: too many tool calls (--max-tool-calls)")
    if stats.time_to_first_token > 0:
        parts.append(f"{stats.time_to_first_token:.2f} s to first token")
    if stats.decode_tps > 0:
        parts.append(f"{stats.decode_tps:.1f} tok/s")
    parts.append(f"{stats.generated_tokens} token{'s' if stats.generated_tokens != 1 else ''}")
    pct = used / limit if limit else 0.0
    parts.append(f"context {used:,}/{limit:,} ({pct:.0%})")
    warning = None
    if pct >= NEARLY_FULL:
        warning = f"context {pct:.0%} full: /undo or /reset to make room"
        if limit < MAX_CONTEXT:
            warning += ", or restart with a larger --context"
    return " · ".join(parts), warning


class MarkdownTail:
    """The answer's unprinted tail. `feed` hands back complete blocks (Markdown source) to print
    once; what stays is short, so re-rendering it on every refresh stays cheap."""

    def __init__(self, max_lines: int = 20, max_chars: int = 2000) -> None:
        self.text = ""
        self.max_lines = max_lines
        self.max_chars = max_chars

    def feed(self, s: str) -> str | None:
        self.text += s
        if "\n" not in s and len(self.text) <= self.max_chars:
            return None
        return self._split()

    def take_all(self) -> str:
        text, self.text = self.text, ""
        return text

    def _split(self) -> str | None:
        lines = self.text.split("\n")
        complete = len(lines) - 1
        fence: str | None = None
        opener = 0
        cut = 0
        for i in range(complete):
            stripped = lines[i].strip()
            if fence is None:
                if stripped.startswith(("```", "~~~")):
                    fence, opener = stripped[:3], i
                elif not stripped and i + 1 < len(lines) and _starts_block(lines[i + 1]):
                    cut = i + 1
            elif stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
                cut = i + 1
        if fence is not None and complete - opener > self.max_lines:
            # A long code block: print its finished lines as a block of their own.
            head = "\n".join(lines[:complete]) + "\n" + fence + "\n"
            self.text = lines[opener].strip() + "\n" + lines[-1]
            return head
        if (
            fence is None
            and cut == 0
            and (complete > self.max_lines or len(self.text) > self.max_chars)
        ):
            cut = complete if complete else 0
            if cut == 0:  # one enormous line: break it at a space
                at = self.text.rfind(" ", 0, self.max_chars)
                if at <= 0:
                    return None
                head, self.text = self.text[:at], self.text[at + 1 :]
                return head
        if cut == 0:
            return None
        head = "\n".join(lines[:cut])
        self.text = "\n".join(lines[cut:])
        return head


def _starts_block(line: str) -> bool:
    # An indented line after a blank one may continue a list item; only split before a new block.
    return bool(line) and not line[0].isspace()


class Renderer:
    """Prints a chat's turns to `console`; `reasoning` is collapse, show or hide."""

    def __init__(
        self, console: Console, *, reasoning: str = "collapse", plain: bool | None = None
    ) -> None:
        self.console = console
        self.reasoning = reasoning
        self.plain = use_plain(console) if plain is None else plain

    def turn(self) -> TurnView:
        return TurnView(self)

    # ---- one-line messages --------------------------------------------------------------
    def info(self, text: str) -> None:
        self.console.print(Text(text, style="dim"), soft_wrap=True)

    def say(self, text: str) -> None:
        self.console.print(Text(text), soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(Text(text, style="yellow"), soft_wrap=True)

    def error(self, text: str) -> None:
        self.console.print(Text(f"error: {text}", style="bold red"), soft_wrap=True)

    def footer(self, stats: Any, used: int, limit: int) -> None:
        line, warning = footer_text(stats, used, limit)
        style = (
            "yellow"
            if getattr(stats, "finish_reason", "") in ("interrupted", "length", "context_full")
            else "dim"
        )
        self.console.print(Text(line, style=style), soft_wrap=True)
        if warning:
            self.warn(warning)

    def markdown(self, text: str) -> None:
        if self.plain:
            self.console.print(Text(text), soft_wrap=True)
        else:
            self.console.print(Markdown(text, code_theme=CODE_THEME))

    def recap(self, messages: list[harmony.Message], exchanges: int = 1) -> None:
        """Show the end of a loaded conversation: the last user messages and their answers."""
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        for i in users[-exchanges:]:
            self.console.print(
                Text(">>> ", style="bold") + Text(messages[i].content), soft_wrap=True
            )
            for m in messages[i + 1 :]:
                if m.role == "user":
                    break
                if (
                    m.role == "assistant"
                    and m.channel in (None, "final", "commentary")
                    and not m.recipient
                ):
                    self.markdown(m.content)
                    if getattr(m, "interrupted", False):
                        self.warn("(interrupted)")


_WRITTEN = (harmony.ReasoningDelta, harmony.FinalDelta, harmony.CommentaryDelta, harmony.ToolCall)


class TurnView(ToolLines):
    """Renders one reply's events as they arrive. Use as a context manager around the stream."""

    def __init__(self, renderer: Renderer) -> None:
        self.console = renderer.console
        self.mode = renderer.reasoning
        self.plain = renderer.plain
        self.live: Any = None
        self.phase: str | None = None  # None (waiting), "reasoning" or "answer"
        self.reasoning_parts: list[str] = []
        self.reasoning_tokens = 0
        self.reasoning_start = 0.0
        self.reasoning_end: float | None = None
        self.pending_line = ""  # /reasoning show: the unfinished reasoning line
        self.tail = MarkdownTail(*self._tail_limits())
        self.prefill: tuple[int, int] | None = None
        self.last_refresh = 0.0
        self.plain_answer_open = False
        self.closed = False
        self.pending_call: Any = None  # a ToolCall not yet known to run (printed if it does not)
        self.running: str | None = None  # the tool running now, for the live region

    def _tail_limits(self) -> tuple[int, int]:
        height = max(self.console.height, 10)
        lines = max(4, height // 2 - 2)
        return lines, lines * max(self.console.width, 20)

    # ---- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> TurnView:
        if not self.plain:
            from rich.live import Live

            self.live = Live(
                self,
                console=self.console,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
                vertical_overflow="crop",
            )
            self.live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._end_segment()
            self._flush_call()
            self.closed = True
        finally:
            if self.live is not None:
                self.live.stop()
                self.live = None

    # ---- events -------------------------------------------------------------------------
    def progress(self, done: int, total: int) -> None:
        self.prefill = (done, total)
        self._refresh(force=True)

    def on_event(self, ev: harmony.Event) -> None:
        # A call is shown by its ToolFinished line; one that nothing runs (the turn stops at
        # it, or the model writes on) is printed as soon as something else is written.
        if self.pending_call is not None and isinstance(ev, _WRITTEN):
            self._flush_call()
        if isinstance(ev, harmony.ReasoningDelta):
            self._reasoning(ev.text)
        elif isinstance(ev, harmony.FinalDelta | harmony.CommentaryDelta):
            self._answer(ev.text)
        elif isinstance(ev, harmony.ToolCall):
            self._end_segment()
            self.phase = None
            self.pending_call = ev
            self._refresh()
            return
        elif self._tool_event(ev):
            pass
        elif (
            isinstance(ev, harmony.MessageEnd)
            and ev.channel == "analysis"
            and self.phase == "reasoning"
        ):
            self.reasoning_end = time.perf_counter()
        self._refresh()

    def _reasoning(self, text: str) -> None:
        if self.phase != "reasoning":
            self._end_segment()
            self.phase = "reasoning"
            self.reasoning_parts, self.reasoning_tokens, self.pending_line = [], 0, ""
            self.reasoning_start = time.perf_counter()
            if self.mode == "show":
                self._print(Text("thinking", style="dim bold"), plain="thinking:")
        self.reasoning_end = None
        self.reasoning_tokens += 1
        self.reasoning_parts.append(text)
        if self.mode != "show":
            return
        if self.plain:
            self._write(text)
            return
        self.pending_line += text
        if "\n" in self.pending_line:
            done, self.pending_line = self.pending_line.rsplit("\n", 1)
            self._print(Padding(Text(done, style="dim"), (0, 0, 0, 2)))

    def _answer(self, text: str) -> None:
        if self.phase != "answer":
            self._end_segment()
            self.phase = "answer"
            if not self.plain:
                text = text.lstrip("\n")
        if self.plain:
            self._write(text)
            self.plain_answer_open = True
            return
        chunk = self.tail.feed(text)
        if chunk is not None:
            self._print_markdown(chunk)

    def _end_segment(self) -> None:
        # The live region is redrawn after every print: leave the phase first, so what is
        # printed here does not show up a second time below itself.
        phase, self.phase = self.phase, None
        if phase == "reasoning":
            end = self.reasoning_end or time.perf_counter()
            summary = reasoning_summary(end - self.reasoning_start, self.reasoning_tokens)
            pending, self.pending_line = self.pending_line, ""
            if self.mode == "show":
                if self.plain:
                    self._write("" if "".join(self.reasoning_parts).endswith("\n") else "\n")
                elif pending:
                    self._print(Padding(Text(pending, style="dim"), (0, 0, 0, 2)))
                self._print(Text(f"({summary})", style="dim"), plain=f"({summary})")
            else:
                self._print(Text(f"▸ {summary}", style="dim"), plain=f"[{summary}]")
        elif phase == "answer":
            if self.plain:
                if self.plain_answer_open:
                    self._write("\n")
                    self.plain_answer_open = False
            else:
                rest = self.tail.take_all()
                if rest.strip():
                    self._print_markdown(rest)

    # ---- output -------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        self.console.file.write(text)
        self.console.file.flush()

    def _print(self, renderable: Any, plain: str | None = None) -> None:
        if self.plain:
            self.console.print(
                Text(plain if plain is not None else str(renderable)), soft_wrap=True
            )
        else:
            self.console.print(renderable)

    def _print_markdown(self, source: str) -> None:
        if source.strip():
            self.console.print(Markdown(source, code_theme=CODE_THEME))
        self.console.print()  # the gap between blocks that separate renders do not add

    def _refresh(self, force: bool = False) -> None:
        if self.live is None:
            return
        now = time.perf_counter()
        if force or now - self.last_refresh >= REFRESH_SECONDS:
            self.last_refresh = now
            self.live.refresh()

    # ---- the live region (rich calls this on refresh) ----------------------------------
    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        parts: list[Any] = []
        if self.closed:
            pass
        elif self.phase is None and self.running:
            parts.append(Spinner("dots", Text(f"running {self.running}", style="dim")))
        elif self.phase is None:
            label = "thinking"
            if self.prefill and self.prefill[1] > 0 and self.prefill[0] < self.prefill[1]:
                label = f"reading prompt {self.prefill[0]:,}/{self.prefill[1]:,}"
            parts.append(Spinner("dots", Text(label, style="dim")))
        elif self.phase == "reasoning":
            seconds = time.perf_counter() - self.reasoning_start
            if self.mode == "hide":
                parts.append(Spinner("dots", Text(f"thinking… {seconds:.0f} s", style="dim")))
            elif self.mode == "show":
                if self.pending_line:
                    parts.append(
                        Padding(
                            self._last_lines(self.pending_line, console, options, 6), (0, 0, 0, 2)
                        )
                    )
            else:
                parts.append(Text(f"thinking… {seconds:.0f} s", style="dim bold"))
                tail = "".join(self.reasoning_parts)[-4000:]
                lines = max(3, min(10, options.size.height // 3))
                parts.append(
                    Padding(self._last_lines(tail.strip(), console, options, lines), (0, 0, 0, 2))
                )
        elif self.tail.text.strip():
            parts.append(Markdown(self.tail.text, code_theme=CODE_THEME))
        yield Group(*parts)

    @staticmethod
    def _last_lines(text: str, console: Console, options: ConsoleOptions, n: int) -> Text:
        width = max(options.max_width - 2, 10)
        t = Text(text, style="dim")
        lines = t.wrap(console, width)
        return Text("\n", style="dim").join(lines[-n:])
