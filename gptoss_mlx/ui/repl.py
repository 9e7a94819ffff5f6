"""The interactive chat loop: reads input with prompt_toolkit, prints with render.py, saves with
chatstore.py. The conversation itself lives in session.ChatSession."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.application.current import get_app
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.filters import Condition, is_searching
from prompt_toolkit.formatted_text import HTML
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console

from .. import harmony
from ..errors import ContextFullError, Terminated, UserError
from ..session import store as chatstore
from ..session.tool_loop import ToolLoop
from .commands import ALIASES, SlashCommands, SlashCompleter, closest_command
from .render import Renderer
from .repl_tools import ToolCommands

PROMPT = ">>> "
CONTINUATION = "... "
BLOCK = '"""'


def open_block(text: str) -> bool:
    """True while the input is a \"\"\" block that has not been closed yet."""
    s = text.lstrip()
    return s.startswith(BLOCK) and not s[len(BLOCK) :].rstrip().endswith(BLOCK)


def message_text(text: str) -> str:
    """The message an input line stands for: a \"\"\" block loses its markers."""
    s = text.strip()
    if s.startswith(BLOCK) and len(s) >= 2 * len(BLOCK) and s.endswith(BLOCK):
        return s[len(BLOCK) : -len(BLOCK)].strip()
    return s


def key_bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("escape", "enter")
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add("enter", filter=Condition(lambda: open_block(get_app().current_buffer.text)))
    def _block_line(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    @kb.add("c-c", filter=~is_searching)
    def _clear(event: Any) -> None:
        if event.current_buffer.text:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt)

    return kb


class Repl(SlashCommands):
    """`gptoss chat`. Pass prompt_toolkit `input`/`output` and a rich `console` to drive it from
    tests; `on_event` sees every reply event once it is shown (a test hook). `lines` reads
    plain lines instead (stdin that is not a terminal)."""

    def __init__(
        self,
        session: Any,
        *,
        input: Any = None,
        output: Any = None,
        console: Console | None = None,
        history: History | Path | str | None = None,
        saver: chatstore.Autosaver | None = None,
        autosave: bool = True,
        reasoning: str = "collapse",
        plain: bool | None = None,
        model_name: str | None = None,
        on_event: Callable[[harmony.Event], None] | None = None,
        lines: TextIO | None = None,
        loop: Any = None,
    ) -> None:
        self.session = session
        self.loop = loop if loop is not None else ToolLoop(session)
        self.tools = ToolCommands(self)
        self._view: Any = None
        self.console = console or Console()
        self.renderer = Renderer(self.console, reasoning=reasoning, plain=plain)
        self.saver = saver or chatstore.Autosaver()
        self.autosave = autosave
        self.model_name = model_name or str(getattr(session, "model_path", "") or "model")
        self.on_event = on_event
        self.lines = lines
        self._history = history
        self._io = (input, output)
        self._prompt: PromptSession | None = None
        self.commands: dict[str, Callable[[str], bool | None]] = {
            "/help": self.cmd_help,
            "/effort": self.cmd_effort,
            "/reasoning": self.cmd_reasoning,
            "/instructions": self.cmd_instructions,
            "/reset": self.cmd_reset,
            "/undo": self.cmd_undo,
            "/retry": self.cmd_retry,
            "/save": self.cmd_save,
            "/load": self.cmd_load,
            "/stats": self.cmd_stats,
            "/context": self.cmd_context,
            "/model": self.cmd_model,
            "/tools": self.tools.command,
            "/exit": self.cmd_exit,
        }

    @property
    def prompt(self) -> PromptSession:
        """Built on first use: a PromptSession grabs the terminal (and warns on a pipe)."""
        if self._prompt is None:
            history = self._history
            if history is None:
                history = InMemoryHistory()
            elif not isinstance(history, History):
                Path(history).parent.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(history))
            self._prompt = PromptSession(
                history=history,
                auto_suggest=AutoSuggestFromHistory(),
                completer=SlashCompleter(),
                complete_while_typing=True,
                key_bindings=key_bindings(),
                prompt_continuation=lambda width, line, wrap: CONTINUATION.rjust(width),
                placeholder=HTML(
                    "<style fg='ansibrightblack'>Send a message (/help for commands)</style>"
                ),
                input=self._io[0],
                output=self._io[1],
            )
        return self._prompt

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> bool:
        """The chat loop; False when the chat could not be kept (its autosave failed)."""
        self.banner()
        while not Terminated.requested:  # SIGTERM: save and leave
            try:
                line = self.read()
            except KeyboardInterrupt:
                if not Terminated.requested:
                    self.renderer.info("(Ctrl-D or /exit to leave)")
                continue
            except EOFError:
                break
            try:
                if not self.handle(line):
                    break
            except ContextFullError as e:
                self.renderer.error(f"{e}; /undo or /reset make room")
            except UserError as e:
                self.renderer.error(str(e))
            except KeyboardInterrupt:
                self.renderer.warn("interrupted")
        try:
            return self._leave()
        finally:
            if Terminated.requested:
                raise Terminated

    def _leave(self) -> bool:
        saved = self.save()
        self.saver.release()
        if self.session.messages and self.autosave:
            if saved:
                self.renderer.info(f"chat saved: resume with gptoss chat --resume {self.saver.id}")
            else:
                self.renderer.error(
                    f"chat not saved: autosave to {self.saver.path} failed (see above);"
                    " before leaving a chat, keep it with /save PATH"
                )
                return False
        return True

    def read(self) -> str:
        if self.lines is None:
            return self.prompt.prompt(PROMPT)
        line = self.lines.readline()
        if not line:
            raise EOFError
        while open_block(line):
            more = self.lines.readline()
            if not more:
                break
            line += more
        self.renderer.say(PROMPT + line.rstrip("\n"))
        return line

    def handle(self, line: str) -> bool:
        """Act on one input; False means leave."""
        text = message_text(line)
        if not text:
            return True
        if text.startswith("//"):
            return self.send(text[1:])
        if text.startswith("/"):
            name, _, arg = text.partition(" ")
            if "\n" in name:
                name, _, rest = name.partition("\n")
                arg = (rest + " " + arg).strip()
            name = ALIASES.get(name.lower(), name.lower())
            command = self.commands.get(name)
            if command is None:
                hint = closest_command(name)
                did_you_mean = f"; did you mean {hint}?" if hint else ""
                raise UserError(
                    f"unknown command {name}{did_you_mean} (/help lists them; // sends a message starting with /)"
                )
            return command(arg.strip()) is not False
        return self.send(text)

    def banner(self) -> None:
        s = self.session.settings
        head = f"gptoss chat · {self.model_name} · effort {s.effort} · context {s.context:,} tokens"
        tail = "/help for commands, Ctrl-D to exit"
        # Two lines rather than one the terminal would break mid-word.
        if len(head) + 3 + len(tail) <= self.console.width:
            self.renderer.info(f"{head} · {tail}")
        else:
            self.renderer.info(head)
            self.renderer.info(tail)
        self.tools.announce()

    # ---- replies ------------------------------------------------------------------------
    def send(self, text: str) -> bool:
        self.stream(self.loop.send(text))
        return True

    def stream(self, events: Iterator[harmony.Event]) -> Any:
        view = self.renderer.turn()
        hook = self.on_event
        citations = self.tools.citations()

        def on_event(ev: harmony.Event) -> None:
            if citations is not None and isinstance(ev, harmony.FinalDelta):
                shown = citations.feed(ev.text)
                if shown:
                    view.on_event(harmony.FinalDelta(shown))
            else:
                view.on_event(ev)
            if hook is not None:
                hook(ev)

        self.session.progress = view.progress
        self._view = view
        try:
            with quiet_keyboard(self._real_terminal()), view:
                try:
                    result = self.session.collect(events, on_event)
                finally:
                    rest = citations.finish() if citations is not None else ""
                    if rest:  # a citation held back at the very end
                        view.on_event(harmony.FinalDelta(rest))
        finally:
            self.session.progress = None
            self._view = None
            self.save()
        if citations is not None and citations.footnotes:
            self.tools.footnotes(citations.footnotes)
        self.renderer.footer(
            result.stats, self.session.context_used(), self.session.settings.context
        )
        return result

    def _real_terminal(self) -> bool:
        return self._io[0] is None and self.lines is None and sys.stdin.isatty()

    def save(self) -> bool:
        """Autosave; False (and the reason shown) when it failed."""
        if not self.autosave:
            return False
        try:
            self.saver.save(self.session)
            self.note_fork()
        except UserError as e:
            self.renderer.error(f"autosave failed: {e}; keep this chat with /save PATH")
            return False
        return True

    # ---- commands -----------------------------------------------------------------------


@contextlib.contextmanager
def quiet_keyboard(enabled: bool) -> Iterator[None]:
    """While the model writes, keys typed ahead are not echoed into the streaming output (they
    still reach the next prompt); Ctrl-C still interrupts."""
    try:
        import termios
    except ImportError:
        enabled = False
    if not enabled:
        yield
        return
    fd = sys.stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
