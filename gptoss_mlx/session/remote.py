"""A chat session whose model runs behind an OpenAI-compatible server (`gptoss chat --server URL`).

It offers what the REPL uses from ChatSession (send, retry, collect, undo, reset, settings,
messages, stats) over streaming Chat Completions, reading reasoning from `reasoning` or
`reasoning_content`. The key, if the server wants one, comes from GPTOSS_API_KEY (or
OPENAI_API_KEY). The conversation is kept here and resent whole each turn (the server's
prefix cache makes that cheap on `gptoss serve`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from .. import harmony
from ..errors import UserError
from ..model.generate import GenerationStats
from .chat import ChatSession, SessionSettings


def to_openai(messages: list[harmony.Message], instructions: str | None) -> list[dict[str, Any]]:
    """Chat Completions messages; analysis goes back as the next assistant message's reasoning."""
    out: list[dict[str, Any]] = (
        [{"role": "system", "content": instructions}] if instructions else []
    )
    thought = ""
    for m in messages:
        if m.role == "user":
            out.append({"role": "user", "content": m.content})
        elif m.role == "assistant" and m.channel == "analysis":
            thought += m.content
        elif m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.content}
            if thought:
                msg["reasoning"] = thought
            out.append(msg)
            thought = ""
    return out


class RemoteSession(ChatSession):
    def __init__(
        self, url: str, *, model: str = "", api_key: str | None = None,
        settings: SessionSettings | None = None,
    ) -> None:  # fmt: skip
        super().__init__(None, None, None, settings)
        self.url = url.rstrip("/")
        self.base = self.url if self.url.endswith("/v1") else self.url + "/v1"
        self.model_name = model
        self.api_key = (
            api_key or os.environ.get("GPTOSS_API_KEY") or os.environ.get("OPENAI_API_KEY")
        )
        self.model_path = self.url
        self._used = 0

    def prompt_tokens(self, messages: list[harmony.Message] | None = None) -> list[int]:
        return []  # the server renders the prompt

    def context_used(self) -> int:
        return self._used

    def _check_fits(self, prompt: list[int]) -> int:
        return self.settings.max_tokens or self.settings.context

    def _request(self) -> dict[str, Any]:
        s = self.settings
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": to_openai(self.messages, s.instructions),
            "stream": True,
            "stream_options": {"include_usage": True},
            "reasoning_effort": s.effort,
            "temperature": s.sampler.temperature,
            "top_p": s.sampler.top_p,
        }
        if s.sampler.seed is not None:
            body["seed"] = s.sampler.seed
        if s.max_tokens:
            body["max_tokens"] = s.max_tokens
        return body

    def _reply(self, prompt: list[int]) -> Iterator[harmony.Event]:
        import httpx

        stats = GenerationStats()
        self.last_stats = stats
        reasoning: list[str] = []
        final: list[str] = []
        t0 = time.perf_counter()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        done = False
        try:
            with httpx.Client(timeout=httpx.Timeout(600, connect=10)) as http, http.stream(
                "POST", self.base + "/chat/completions", json=self._request(), headers=headers
            ) as r:  # fmt: skip
                if r.status_code != 200:
                    r.read()
                    raise UserError(f"the server at {self.url} said {r.status_code}: {_message(r)}")
                for chunk in _chunks(r.iter_lines()):
                    yield from self._events(chunk, stats, reasoning, final, t0)
            done = True
        except httpx.HTTPError as e:
            raise UserError(f"cannot reach the server at {self.url}: {e}") from None
        finally:
            if not done:
                stats.finish_reason = stats.finish_reason or "interrupted"
            stats.wall_seconds = time.perf_counter() - t0
            self._keep("".join(reasoning), "".join(final), stats)

    def _events(self, chunk, stats, reasoning, final, t0) -> Iterator[harmony.Event]:  # noqa: ANN001
        if chunk.get("usage"):
            u = chunk["usage"]
            stats.prompt_tokens, stats.generated_tokens = u["prompt_tokens"], u["completion_tokens"]
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            details = u.get("completion_tokens_details") or {}
            stats.reasoning_tokens = details.get("reasoning_tokens") or 0
            stats.prefilled_tokens = stats.prompt_tokens - cached
            self._used = u.get("total_tokens", 0)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning") or delta.get("reasoning_content")
            if (thought or delta.get("content")) and not stats.time_to_first_token:
                stats.time_to_first_token = time.perf_counter() - t0
            if thought:
                reasoning.append(thought)
                yield harmony.ReasoningDelta(thought)
            if delta.get("content"):
                final.append(delta["content"])
                yield harmony.FinalDelta(delta["content"])
            if choice.get("finish_reason"):
                stats.finish_reason = {"length": "length"}.get(choice["finish_reason"], "stop")

    def _keep(self, reasoning: str, final: str, stats: GenerationStats) -> None:
        cut = stats.finish_reason in ("interrupted", "length")
        if reasoning:
            self.messages.append(harmony.Message("assistant", reasoning, channel="analysis",
                                                 interrupted=cut))  # fmt: skip
        if final or not reasoning:
            self.messages.append(harmony.Message("assistant", final, channel="final",
                                                 interrupted=cut))  # fmt: skip
        self.turns += 1


def _chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise UserError(f"the server failed: {chunk['error'].get('message')}")
        yield chunk


def _message(response: Any) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
