"""The interactive chat loop: reads input with prompt_toolkit, prints with render.py, saves with
chatstore.py. The conversation itself lives in session.ChatSession."""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.application.current import get_app
from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition, is_searching
from prompt_toolkit.formatted_text import HTML
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console

from .. import harmony
from ..errors import ContextFullError, Terminated, UserError
from ..session import store as chatstore
from ..session.tool_loop import ToolLoop
from ..units import human_bytes
from .render import REASONING_MODES, Renderer
from .repl_tools import ToolCommands

PROMPT = ">>> "
CONTINUATION = "... "
BLOCK = '"""'

# name -> (argument hint, help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "/help": ("", "show this help"),
    "/effort": ("low|medium|high", "reasoning effort for the next replies"),
    "/reasoning": ("show|hide|collapse", "how the reasoning is shown"),
    "/instructions": ("[TEXT|off]", "developer instructions (no text shows them, off clears)"),
    "/reset": ("", "start a new conversation (the old one stays saved)"),
    "/undo": ("", "drop the last exchange"),
    "/retry": ("", "write the last answer again"),
    "/save": ("PATH [--force]", "save the conversation to a file (--force replaces another file)"),
    "/load": ("PATH", "load a conversation from a file"),
    "/stats": ("", "timings and token counts of the last reply"),
    "/context": ("", "context used, its limit and memory"),
    "/model": ("", "the model and its settings"),
    "/tools": ("[NAME on|off]", "the tools the model may call; turn one on or off"),
    "/exit": ("", "leave (also /quit, /bye, Ctrl-D)"),
}
ALIASES = {"/quit": "/exit", "/bye": "/exit", "/?": "/help"}
ARGUMENTS = {"/effort": harmony.EFFORTS, "/reasoning": REASONING_MODES, "/instructions": ("off",)}

KEYS_HELP = """\
Enter sends · Alt-Enter (or Esc then Enter) adds a new line · pasted text stays one message
\"\"\" starts a multi-line message that ends with a line \"\"\" · // sends a message starting with /
Ctrl-R searches history · → accepts a suggestion · Ctrl-C clears the line or stops a reply · Ctrl-D exits"""


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


def closest_command(name: str) -> str | None:
    names = list(COMMANDS) + list(ALIASES)
    match = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if match:
        return ALIASES.get(match[0], match[0])
    prefixed = [n for n in names if n.startswith(name[:2])] if len(name) > 1 else []
    return prefixed[0] if len(prefixed) == 1 else None


class SlashCompleter(Completer):
    """Completes command names, their fixed arguments, and paths for /save and /load."""

    def __init__(self) -> None:
        self.paths = PathCompleter(expanduser=True)

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        if not text.startswith("/") or "\n" in text:
            return
        if " " not in text:
            for name in COMMANDS:
                if name.startswith(text):
                    yield Completion(
                        name, start_position=-len(text), display_meta=COMMANDS[name][1]
                    )
            return
        command, _, arg = text.partition(" ")
        command = ALIASES.get(command, command)
        if command in ("/save", "/load"):
            yield from self.paths.get_completions(Document(arg, len(arg)), complete_event)
            return
        for choice in ARGUMENTS.get(command, ()):
            if choice.startswith(arg) and choice != arg:
                yield Completion(choice, start_position=-len(arg))


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


class Repl:
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
    def cmd_help(self, arg: str) -> None:
        width = max(len(f"{n} {a}".strip()) for n, (a, _) in COMMANDS.items())
        for name, (args, text) in COMMANDS.items():
            self.renderer.say(f"  {f'{name} {args}'.strip():<{width}}  {text}")
        self.renderer.info(KEYS_HELP)

    def cmd_effort(self, arg: str) -> None:
        if not arg:
            self.renderer.say(
                f"reasoning effort: {self.session.settings.effort} (/effort low|medium|high)"
            )
            return
        value = arg.lower()
        if value not in harmony.EFFORTS:
            raise UserError(f"effort must be low, medium or high, not {arg!r}")
        self.session.settings.effort = value
        self.save()
        self.renderer.info(f"reasoning effort: {value} (from the next reply)")

    def cmd_reasoning(self, arg: str) -> None:
        if not arg:
            self.renderer.say(
                f"reasoning: {self.renderer.reasoning} (/reasoning show|hide|collapse)"
            )
            return
        value = arg.lower()
        if value not in REASONING_MODES:
            raise UserError(f"reasoning display must be show, hide or collapse, not {arg!r}")
        self.renderer.reasoning = value
        self.renderer.info(f"reasoning: {value}")

    def cmd_instructions(self, arg: str) -> None:
        s = self.session.settings
        if not arg:
            if s.instructions:
                self.renderer.say(f"instructions: {s.instructions}")
            else:
                self.renderer.say("no instructions (set them with /instructions TEXT)")
            return
        s.instructions = None if arg.lower() in ("off", "none", "clear") else arg
        self.save()
        self.renderer.info(
            "instructions cleared"
            if s.instructions is None
            else "instructions set (from the next reply)"
        )

    def cmd_reset(self, arg: str) -> None:
        old = self.saver.id if self.session.messages else None
        self.save()
        self.session.reset()
        self.saver.restart()
        saved = f" (the previous one is saved as {old})" if old and self.autosave else ""
        self.renderer.info(f"new conversation{saved}")

    def cmd_undo(self, arg: str) -> None:
        users = [m for m in self.session.messages if m.role == "user"]
        if not self.session.undo():
            raise UserError("nothing to undo")
        self.save()
        first = users[-1].content.strip().splitlines()[0] if users[-1].content.strip() else ""
        self.renderer.info(
            f"removed the last exchange ({_clip(first, 60)!r}); {len(users) - 1} left"
        )

    def cmd_retry(self, arg: str) -> None:
        kept = list(self.session.messages)
        try:
            events = self.loop.retry()
        except BaseException:
            self.session.messages = kept  # retry() drops the reply before checking the context
            raise
        self.stream(events)

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise UserError("/save needs a file name, e.g. /save chat.json")
        words = arg.split()
        force = "--force" in words
        target = " ".join(w for w in words if w != "--force") if force else arg
        if not target:
            raise UserError("/save needs a file name, e.g. /save chat.json")
        existing = Path(target).expanduser()
        if existing.is_file() and not force and not self._same_chat(existing):
            raise UserError(
                f"{existing} already exists; /save {target} --force replaces it, or pick another name"
            )
        record = chatstore.to_record(
            self.session, chat_id=self.saver.id, created=self.saver.created
        )
        path = chatstore.write(target, record)
        self.renderer.info(f"saved {len(self.session.messages)} messages to {path}")

    def note_fork(self) -> None:
        """Say when this chat continues under a new id (its file is open in another gptoss)."""
        if self.saver.forked_from:
            self.renderer.warn(
                f"chat {self.saver.forked_from} is open in another gptoss; this one continues as"
                f" {self.saver.id} so that neither loses turns"
            )
            self.saver.forked_from = None

    def _same_chat(self, path: Path) -> bool:
        """A file that holds this very chat (an earlier /save of it) is updated without asking."""
        try:
            return chatstore.read(path).get("id") == self.saver.id
        except UserError:
            return False

    def cmd_load(self, arg: str) -> None:
        if not arg:
            raise UserError("/load needs a file name, e.g. /load chat.json")
        record = chatstore.read(arg)
        self.save()
        chatstore.apply_record(self.session, record)
        self.saver.adopt(record)
        self.save()
        self.renderer.info(f"loaded {len(self.session.messages)} messages from {arg}")
        self.renderer.recap(self.session.messages)

    def cmd_stats(self, arg: str) -> None:
        st = self.session.last_stats
        if st is None:
            self.renderer.say("no reply yet")
            return
        rows = [
            (
                "prompt tokens",
                f"{st.prompt_tokens:,} ({st.prompt_tokens - st.prefilled_tokens:,} from the cache)",
            ),
            ("generated tokens", f"{st.generated_tokens:,}"),
            ("time to first token", f"{st.time_to_first_token:.2f} s"),
            ("prompt speed", f"{st.prefill_tps:.1f} tok/s"),
            ("generation speed", f"{st.decode_tps:.1f} tok/s"),
            ("total time", f"{st.wall_seconds:.2f} s"),
            ("peak memory", human_bytes(st.peak_memory_bytes)),
            ("finish reason", st.finish_reason or "-"),
        ]
        for k, v in rows:
            self.renderer.say(f"  {k:<20} {v}")

    def cmd_context(self, arg: str) -> None:
        used, limit = self.session.context_used(), self.session.settings.context
        prompt = len(self.session.prompt_tokens())
        self.renderer.say(f"  {'context':<20} {used:,} of {limit:,} tokens ({used / limit:.0%})")
        self.renderer.say(f"  {'next prompt':<20} {prompt:,} tokens before your message")
        self.renderer.say(f"  {'messages':<20} {len(self.session.messages)}")
        cache = self.session.cache_bytes()
        if cache is not None:
            self.renderer.say(f"  {'KV cache memory':<20} {human_bytes(cache)}")
        if self.session.last_stats is not None:
            self.renderer.say(
                f"  {'peak memory':<20} {human_bytes(self.session.last_stats.peak_memory_bytes)}"
            )

    def cmd_model(self, arg: str) -> None:
        s = self.session.settings
        sp = s.sampler
        self.renderer.say(f"  {'model':<20} {self.model_name}")
        self.renderer.say(f"  {'context':<20} {s.context:,} tokens")
        self.renderer.say(f"  {'effort':<20} {s.effort}")
        self.renderer.say(
            f"  {'sampling':<20} temperature {sp.temperature}, top-p {sp.top_p}, top-k {sp.top_k}, min-p {sp.min_p}, seed {sp.seed}"
        )
        self.renderer.say(f"  {'max tokens':<20} {s.max_tokens or 'what the context allows'}")

    def cmd_exit(self, arg: str) -> bool:
        return False


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


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
