"""Slash commands: one table of names, argument hints and help, completion with "did you mean",
and their handlers (a mixin the REPL inherits)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion, PathCompleter
from prompt_toolkit.document import Document

from .. import harmony
from ..errors import UserError
from ..session import store as chatstore
from ..units import human_bytes
from .render import REASONING_MODES, Renderer

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


class SlashCommands:
    """The handlers behind COMMANDS; the REPL provides session, renderer, saver and friends."""

    session: Any
    renderer: Renderer

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


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
