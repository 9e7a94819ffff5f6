"""A chat session: the conversation, its settings and the model's caches. No terminal I/O here.

Prompt caching: the KV cache holds the tokens of the last prompt and reply (`cached_tokens`).
A new turn reuses the longest prefix it shares with the new prompt and prefills only the rest.
Because a finished turn's analysis is dropped from later prompts, the new prompt diverges from
the cache right after the previous prompt's `<|start|>assistant`. Sliding-window caches cannot be
rolled back, so the session snapshots all caches (plus the last logits) at the end of every
prefill and restores the latest snapshot at or before the divergence: no re-prefill of history.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import harmony
from ..errors import ContextFullError, UserError
from ..model.config import MAX_CONTEXT
from ..model.generate import GenerationStats, generate
from ..model.sampling import SAMPLER_KEYS, SamplerSettings, make_sampler

__all__ = ["ChatSession", "GenerationStats", "SessionSettings", "TurnResult"]
# What a saved chat keeps of its settings (besides the sampler's), and what loading one brings
# back: the context stays the one this run was opened with.
SAVED_SETTINGS = ("effort", "instructions", "max_tokens", "context", "date")
RESTORED_SETTINGS = ("effort", "instructions", "max_tokens", "date")
KEEP_SNAPSHOTS = 8


@dataclass
class SessionSettings:
    effort: str = "medium"
    instructions: str | None = None
    max_tokens: int | None = None
    context: int = MAX_CONTEXT
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    tools: list[harmony.ToolSpec] = field(default_factory=list)
    date: str = field(default_factory=lambda: _dt.date.today().isoformat())
    python_tool: bool = False
    python_description: str | None = None  # the python tool's own text (real timeout, dir)
    browser_tool: bool = False  # harmony's browser text in the system message

    def prompt_options(self) -> harmony.PromptOptions:
        return harmony.PromptOptions(
            effort=self.effort,
            date=self.date,
            instructions=self.instructions,
            tools=list(self.tools),
            python_tool=self.python_tool,
            python_description=self.python_description,
            browser_tool=self.browser_tool,
        )


@dataclass
class TurnResult:
    messages: list[harmony.Message]
    stats: GenerationStats
    final: str = ""
    reasoning: str = ""
    tool_calls: list[harmony.ToolCall] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        return self.stats.finish_reason


@dataclass
class _Snapshot:
    offset: int
    states: list
    logits: Any


class ChatSession:
    def __init__(
        self, model: Any, tokenizer: Any, encoding: Any, settings: SessionSettings | None = None
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.encoding = encoding
        self.settings = settings or SessionSettings()
        self.messages: list[harmony.Message] = []
        self.cache = model.make_cache() if model is not None else []
        self.progress: Callable[[int, int], None] | None = None  # prefill progress (done, total)
        self.cached_tokens: list[int] = []
        self._snapshots: list[_Snapshot] = []
        self.last_stats: GenerationStats | None = None
        self.turns = 0
        self.model_path: Path | None = None  # where the model was loaded from (set by open)
        self.max_context = MAX_CONTEXT  # the model's largest context (open_session sets it)

    # ---- conversation editing -------------------------------------------------------------
    def reset(self) -> None:
        self.messages = []
        self.last_stats = None
        self.turns = 0

    def drop_cache(self) -> None:
        """Forget the KV cache (the next turn prefills its whole prompt)."""
        self.cache = self.model.make_cache() if self.model is not None else []
        self.cached_tokens = []
        self._snapshots = []

    def undo(self) -> bool:
        """Drop the last exchange (the last user message and everything after it)."""
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "user":
                del self.messages[i:]
                return True
        return False

    def pop_reply(self) -> str | None:
        """Remove the last reply (everything after the last user message); return that user text."""
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "user":
                del self.messages[i + 1 :]
                return self.messages[i].content
        return None

    # ---- prompts ---------------------------------------------------------------------------
    def prompt_tokens(self, messages: list[harmony.Message] | None = None) -> list[int]:
        return harmony.render_prompt(
            self.messages if messages is None else messages,
            self.settings.prompt_options(),
            self.encoding,
        )

    def cache_bytes(self) -> int | None:
        """Bytes the KV cache holds, or None without a model."""
        if self.model is None:
            return None
        from ..model.cache import cache_nbytes

        return int(cache_nbytes(self.cache))

    def context_used(self) -> int:
        return len(self.cached_tokens)

    def _check_fits(self, prompt: list[int]) -> int:
        """Tokens the reply may use; ContextFullError if the prompt (plus --max-tokens) does not fit."""
        limit = self.settings.context
        room = limit - len(prompt)
        need = self.settings.max_tokens or 1
        if room < need:
            what = f"{len(prompt)} prompt tokens" + (
                f" + {need} --max-tokens" if self.settings.max_tokens else ""
            )
            grow = (
                f", or raise --context (up to {self.max_context})"
                if limit < self.max_context
                else ""
            )
            raise ContextFullError(
                f"context full: {what} exceed the {limit}-token context; shorten the input{grow}"
            )
        # Without --max-tokens the reply may fill the context; generate() stops it there.
        return self.settings.max_tokens or limit

    def _reuse(self, prompt: list[int]) -> tuple[int, Any]:
        """Bring the cache to the longest reusable prefix of `prompt`; return (its length, logits or None)."""
        common = 0
        for a, b in zip(self.cached_tokens, prompt, strict=False):
            if a != b:
                break
            common += 1
        if common == len(self.cached_tokens) and common < len(prompt):
            return common, None
        usable = [
            s
            for s in self._snapshots
            if s.offset <= common and (s.offset < len(prompt) or s.logits is not None)
        ]
        best = max(usable, key=lambda s: s.offset, default=None)
        if best is None:
            self.cache = self.model.make_cache()
            self.cached_tokens = []
            self._snapshots = []
            return 0, None
        from ..model.cache import restore

        restore(self.cache, best.states)
        del self.cached_tokens[best.offset :]
        self._snapshots = [s for s in self._snapshots if s.offset <= best.offset]
        return best.offset, (best.logits if best.offset == len(prompt) else None)

    def _snapshot(self, logits: Any) -> None:
        from ..model.cache import snapshot

        self._snapshots.append(_Snapshot(len(self.cached_tokens), snapshot(self.cache), logits))
        self._snapshots = self._snapshots[-KEEP_SNAPSHOTS:]

    # ---- turns -----------------------------------------------------------------------------
    def send(self, text: str) -> Iterator[harmony.Event]:
        """Add a user message and stream the reply's events. On error the message is taken back."""
        if not text.strip():
            raise UserError("empty message")
        self.messages.append(harmony.Message(role="user", content=text))
        try:
            prompt = self.prompt_tokens()
            self._check_fits(prompt)
        except BaseException:
            self.messages.pop()
            raise
        return self._reply(prompt)

    def retry(self) -> Iterator[harmony.Event]:
        """Regenerate the last answer."""
        last_user = max((i for i, m in enumerate(self.messages) if m.role == "user"), default=None)
        if last_user is None:
            raise UserError("nothing to retry yet")
        prompt = self.prompt_tokens(self.messages[: last_user + 1])
        self._check_fits(prompt)  # before dropping the answer: a refused retry keeps it
        self.pop_reply()
        return self._reply(prompt)

    def add_tool_result(
        self, name: str, output: str, channel: str = "commentary"
    ) -> Iterator[harmony.Event]:
        """Give the model a tool's output (on the call's channel) and let it continue the turn."""
        self.messages.append(harmony.tool_result(name, output, channel=channel))
        prompt = self.prompt_tokens()
        self._check_fits(prompt)
        return self._reply(prompt)

    def _reply(self, prompt: list[int], written_before: int = 0) -> Iterator[harmony.Event]:
        """The reply to `prompt`, whose last `written_before` tokens already belong to it (a header
        written for the model): the parser and the stored call tokens start with them."""
        max_tokens = self._check_fits(prompt)
        reused, logits = self._reuse(prompt)
        new = prompt[reused:]
        parser = harmony.ReplyParser(self.encoding)
        stats = GenerationStats()
        self.last_stats = stats
        fed = self.cached_tokens
        t0 = time.perf_counter()
        stop = {harmony.RETURN: "stop", harmony.CALL: "tool_call"}
        tokens = generate(
            self.model,
            new,
            self.cache,
            make_sampler(self.settings.sampler),
            max_tokens=max_tokens,
            stop_tokens=stop,
            context_limit=self.settings.context,
            prompt_tokens=len(prompt),
            progress=self.progress,
            fed=fed,
            stats=stats,
            first_logits=logits,
            on_prefilled=self._snapshot,
        )
        finished = False
        written: list[int] = list(prompt[len(prompt) - written_before :]) if written_before else []
        parser.feed_all(written)
        try:
            for tok in tokens:
                written.append(tok)
                if tok == harmony.END:
                    # A message boundary inside the reply (e.g. analysis before a tool call): the
                    # next prompt re-renders what follows it, so a snapshot here saves a re-prefill.
                    self._snapshot(None)
                yield from parser.feed(tok)
            tail = parser.finish()
            finished = True
            self._store(parser, stats, written)
            yield from tail
        finally:
            if not finished:
                # Interrupted (Ctrl-C, or the consumer stopped): keep what was written.
                tokens.close()
                parser.finish()
                stats.finish_reason = stats.finish_reason or "interrupted"
                self._store(parser, stats)
                self._repair_cache()
            stats.reasoning_tokens = parser.reasoning_tokens
            stats.wall_seconds = time.perf_counter() - t0

    def _repair_cache(self) -> None:
        """After an interruption mid-step some layers may hold a token the others lack: go back to a
        consistent snapshot (or start afresh)."""
        if all(c.offset == len(self.cached_tokens) for c in self.cache):
            return
        from ..model.cache import restore

        lowest = min(c.offset for c in self.cache)
        good = [s for s in self._snapshots if s.offset <= min(lowest, len(self.cached_tokens))]
        if not good:
            self.cache, self.cached_tokens, self._snapshots = self.model.make_cache(), [], []
            return
        best = max(good, key=lambda s: s.offset)
        restore(self.cache, best.states)
        del self.cached_tokens[best.offset :]
        self._snapshots = [s for s in self._snapshots if s.offset <= best.offset]

    def _store(self, parser: Any, stats: GenerationStats, written: list[int] | None = None) -> None:
        msgs = parser.messages()
        if stats.finish_reason in ("interrupted", "length", "context_full"):
            for m in msgs:
                m.interrupted = True
        if stats.finish_reason == "tool_call" and written and msgs and msgs[-1].recipient:
            msgs[-1].tokens = _call_tokens(written)
        self.messages.extend(msgs)
        self.turns += 1

    def turn(
        self, text: str, on_event: Callable[[harmony.Event], None] | None = None
    ) -> TurnResult:
        """Convenience: run a whole turn, collecting the reply."""
        return self.collect(self.send(text), on_event)

    def collect(
        self,
        events: Iterator[harmony.Event],
        on_event: Callable[[harmony.Event], None] | None = None,
    ) -> TurnResult:
        """Run an event stream to its end. Ctrl-C stops the reply; what was written is kept
        (marked interrupted) and returned with finish_reason "interrupted"."""
        before = len(self.messages)
        final: list[str] = []
        reasoning: list[str] = []
        calls: list[harmony.ToolCall] = []
        try:
            for ev in events:
                if on_event is not None:
                    on_event(ev)
                if isinstance(ev, harmony.FinalDelta):
                    final.append(ev.text)
                elif isinstance(ev, harmony.ReasoningDelta):
                    reasoning.append(ev.text)
                elif isinstance(ev, harmony.ToolCall):
                    calls.append(ev)
        except KeyboardInterrupt:
            events.close()  # type: ignore[attr-defined]
            if self.last_stats is not None:
                self.last_stats.finish_reason = "interrupted"
        new_msgs = self.messages[before:]
        return TurnResult(
            messages=[m for m in new_msgs if m.role == "assistant"],
            stats=self.last_stats or GenerationStats(),
            final="".join(final),
            reasoning="".join(reasoning),
            tool_calls=calls,
        )

    # ---- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        saved = {k: getattr(s, k) for k in SAVED_SETTINGS}
        saved.update({k: getattr(s.sampler, k) for k in SAMPLER_KEYS})
        return {"messages": [m.to_dict() for m in self.messages], "settings": saved}

    def load_dict(self, d: dict[str, Any]) -> None:
        self.messages = [harmony.Message.from_dict(m) for m in d.get("messages", [])]
        st = d.get("settings", {})
        for k in RESTORED_SETTINGS:
            if k in st:
                setattr(self.settings, k, st[k])
        for k in SAMPLER_KEYS:
            if k in st:
                setattr(self.settings.sampler, k, st[k])


def _call_tokens(written: list[int]) -> list[int]:
    """The reply's last message as written, `<|start|>` to `<|call|>` (the cache holds exactly
    these): what follows the last `<|end|>`, or the whole reply after the prompt's
    `<|start|>assistant`."""
    ends = [i for i, t in enumerate(written[:-1]) if t == harmony.END]
    if ends:
        return written[ends[-1] + 1 :]
    return [harmony.START, harmony.ASSISTANT, *written]
