"""The model behind the server: one loaded model, its harmony encoding, the served names, the
defaults from the command line, and a generation that reuses cached prefixes.

`ServerEngine.run` is called on the generation worker's thread only (MLX work stays on one
thread); it yields harmony parser events and, last, a `Finished` with the statistics.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .. import harmony
from ..errors import ContextFullError
from ..session.chat import GenerationStats, SessionSettings
from ..session.prompt_cache import CacheEntry, PromptCache, RequestSession
from . import builtin
from .errors import ApiError
from .tool_choice import ToolChoice

log = logging.getLogger("gptoss.server")

DEFAULT_CACHE_BYTES = 2 << 30
# What clients call gpt-oss models; requests may use these for the served model of that size.
ALIASES = {
    "20b": ("gpt-oss-20b", "gpt-oss:20b", "openai/gpt-oss-20b"),
    "120b": ("gpt-oss-120b", "gpt-oss:120b", "openai/gpt-oss-120b"),
}


@dataclass
class Started:
    """The first item of a generation: its statistics, filled in as it runs."""

    stats: GenerationStats


@dataclass
class Finished:
    """The end of a generation: its statistics (prompt, cached and generated token counts)."""

    stats: GenerationStats

    @property
    def cached_tokens(self) -> int:
        return self.stats.prompt_tokens - self.stats.prefilled_tokens


@dataclass
class Generation:
    """One request, in harmony terms."""

    messages: list[harmony.Message]
    settings: SessionSettings
    prompt: list[int] = field(default_factory=list)  # rendered by ServerEngine.prepare
    builtin: dict[str, Any] = field(default_factory=dict)  # enabled built-in tools by namespace
    tool_choice: ToolChoice | None = None  # a call the reply must make ("required" or named)


class _Cancelled(Exception):
    pass


def _check(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise _Cancelled


class ServerEngine:
    def __init__(
        self,
        model: Any,
        encoding: Any,
        *,
        model_id: str,
        aliases: Sequence[str] = (),
        defaults: SessionSettings | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.model = model
        self.encoding = encoding
        self.model_id = model_id
        self.aliases = [a for a in aliases if a != model_id]
        self.defaults = defaults or SessionSettings()
        self.prompt_cache = PromptCache(cache_bytes)
        self.lockstep: Any = None  # a server.lockstep.Lockstep when ranks serve together

    def check_model(self, name: str | None) -> None:
        """A 404 naming what is served unless `name` is the served model (or one of its aliases)."""
        if not name or name == self.model_id or name in self.aliases:
            return
        served = ", ".join([self.model_id, *self.aliases])
        raise ApiError(
            404,
            f"model {name!r} is not served here; this server serves {served}",
            param="model",
            code="model_not_found",
        )

    def settings(
        self,
        *,
        effort: str | None,
        instructions: str | None,
        tools: list[harmony.ToolSpec],
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
    ) -> SessionSettings:
        """The defaults from the command line, overridden by what the request gives."""
        d = self.defaults
        sampler = replace(
            d.sampler,
            temperature=d.sampler.temperature if temperature is None else temperature,
            top_p=d.sampler.top_p if top_p is None else top_p,
            seed=d.sampler.seed if seed is None else seed,
        )
        return SessionSettings(
            effort=effort or d.effort,
            instructions=instructions if instructions is not None else d.instructions,
            max_tokens=max_tokens or d.max_tokens,
            context=d.context,
            sampler=sampler,
            tools=list(tools),
            date=d.date,  # the server's start date: a stable, cacheable system message
        )

    def prepare(self, gen: Generation) -> Generation:
        """Render the prompt (on the request's thread); a 400 when it does not fit the context."""
        session = RequestSession(None, None, self.encoding, gen.settings)
        session.builtin = frozenset(gen.builtin)
        session.messages = list(gen.messages)
        try:
            gen.prompt = session.prepare()
        except ContextFullError as e:
            raise ApiError(400, str(e), code="context_length_exceeded") from None
        return gen

    def run(
        self, gen: Generation, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[harmony.Event | Finished]:
        """Generate the reply to `gen`; on the worker thread. Closing the iterator stops it, and
        so does `cancelled()` turning true during the prefill (checked after each chunk). With
        several ranks the lockstep shares the request and the stop decisions with the others."""
        if self.lockstep is not None:
            return self.lockstep.lead(self, gen, cancelled)
        return self.generate(gen, cancelled, self.prompt_cache.take(gen.prompt))

    def generate(
        self, gen: Generation, cancelled: Callable[[], bool], entry: CacheEntry | None
    ) -> Iterator[harmony.Event | Finished]:
        """`run` continuing from the prompt-cache `entry` (taken out of the cache by the caller)."""
        session = RequestSession(self.model, None, self.encoding, copy.copy(gen.settings))
        session.builtin = frozenset(gen.builtin)
        session.progress = lambda done, total: _check(cancelled)
        session.messages = list(gen.messages)
        session.adopt(entry)
        if gen.settings.sampler.seed is not None:
            import mlx.core as mx

            mx.random.seed(gen.settings.sampler.seed)
        prompt, written_before = gen.prompt, 0
        choice = gen.tool_choice
        functions = {spec.name for spec in gen.settings.tools}
        total: GenerationStats | None = None
        calls = 0
        while True:
            events = session.stream(prompt, written_before)
            before = len(session.messages)
            call = original = None
            refused = False
            try:
                for event in itertools.chain(events, [None]):
                    if total is None:  # the first event, or the end of a reply that had none
                        total = session.last_stats or GenerationStats()
                        session.count_history_prefill(total)
                        yield Started(total)
                    if event is None:
                        break
                    if choice is not None and not choice.allows(event):
                        refused = True
                        break
                    if isinstance(event, harmony.ToolCall):
                        original = event
                        call = builtin.as_builtin(event, gen.builtin, functions)
                    yield event
            except (GeneratorExit, _Cancelled) as stop:
                events.close()  # the session keeps what was written and repairs its cache
                self._keep(session, len(prompt))
                if isinstance(stop, GeneratorExit):
                    raise
                return
            if refused:  # back to the end of the reasoning, the call's header written
                events.close()
                _add_round(total, session.last_stats)
                _keep_reasoning(session, before)
                header = choice.header(self.encoding)
                prompt, written_before = [*self._prepare(session), *header], len(header)
                choice = None
                continue
            _add_round(total, session.last_stats)
            if call is None or calls == builtin.MAX_CALLS or cancelled():
                break
            calls += 1
            done = builtin.run(call, gen.builtin, cancelled)
            yield done
            assert original is not None  # the result answers the call as the model wrote it
            reply = harmony.tool_result(original.recipient, done.result.text, channel=call.channel)
            session.messages.append(reply)
            prompt, written_before = self._prepare(session), 0
        self._keep(session, len(prompt))
        yield Finished(total or GenerationStats())

    @staticmethod
    def _prepare(session: RequestSession) -> list[int]:
        try:
            return session.prepare()
        except ContextFullError as e:
            raise ApiError(400, str(e), code="context_length_exceeded") from None

    def _keep(self, session: RequestSession, prompt_len: int) -> None:
        if session.cached_tokens:
            self.prompt_cache.put(session.entry(prompt_len))


def _add_round(total: GenerationStats | None, stats: GenerationStats | None) -> None:
    """Fold a later round's statistics (after a built-in tool ran, or a call's header was
    written) into the first one's, which the reply reports."""
    if total is None or stats is None or stats is total:
        return
    total.generated_tokens += stats.generated_tokens
    total.reasoning_tokens += stats.reasoning_tokens
    total.decode_seconds += stats.decode_seconds + stats.prefill_seconds
    total.finish_reason = stats.finish_reason
    total.peak_memory_bytes = max(total.peak_memory_bytes, stats.peak_memory_bytes)


def _keep_reasoning(session: RequestSession, before: int) -> None:
    """Of the messages the refused reply added, keep the reasoning (complete: the refusal came
    after it ended) and drop what the model began instead of the call."""
    added = session.messages[before:]
    del session.messages[before:]
    for m in added:
        if m.channel == "analysis" and m.recipient is None:
            m.interrupted = False
            session.messages.append(m)
