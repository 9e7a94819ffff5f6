"""POST /v1/chat/completions: requests to harmony, parser events to completions and chunks.

Reasoning goes out as both `reasoning` and `reasoning_content` (message and delta) and comes back
in as either; a tool call is one `tool_calls` entry whose `arguments` is the model's raw text
(valid JSON or not); preambles (commentary without a recipient) are content.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from .. import harmony
from ..session.chat import GenerationStats
from . import sse, tool_choice
from .engine import Finished, Generation, ServerEngine, Started
from .errors import ApiError, warn_once
from .schemas import ChatMessage, ChatRequest, normalise_effort, part_text
from .worker import Job

log = logging.getLogger("gptoss.server")

JSON_TYPE = "<|constrain|>json"


def function_call(name: str, arguments: str) -> harmony.Message:
    """An assistant tool call as the model writes it (commentary, to=functions.NAME, json)."""
    return harmony.Message(
        "assistant",
        arguments,
        channel="commentary",
        recipient=f"functions.{name}",
        content_type=JSON_TYPE,
    )


def function_name(recipient: str) -> str:
    return recipient.removeprefix("functions.")


def _assistant(m: ChatMessage, text: str, names: dict[str, str]) -> list[harmony.Message]:
    out = []
    thought = m.reasoning or m.reasoning_content
    if thought:
        out.append(harmony.Message("assistant", thought, channel="analysis"))
    if m.tool_calls:
        if text:  # a preamble before the calls; "final" would close the turn
            out.append(harmony.Message("assistant", text, channel="commentary"))
        for call in m.tool_calls:
            args = call.function.arguments
            args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            out.append(function_call(call.function.name, args))
            if call.id:
                names[call.id] = call.function.name
    elif text:
        out.append(harmony.Message("assistant", text, channel="final"))
    return out


def to_messages(messages: list[ChatMessage]) -> tuple[list[harmony.Message], str | None]:
    """Harmony messages and the developer instructions (system and developer messages)."""
    out: list[harmony.Message] = []
    instructions: list[str] = []
    names: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        text = part_text(m.content, f"{where}.content")
        if m.role in ("system", "developer"):
            instructions.append(text)
        elif m.role == "user":
            out.append(harmony.Message("user", text))
        elif m.role == "assistant":
            out.extend(_assistant(m, text, names))
        else:
            name = m.name or names.get(m.tool_call_id or "")
            if not name:
                raise ApiError(
                    400,
                    f"{where}: a tool message needs the tool_call_id of an earlier assistant "
                    "tool call (or the tool's name)",
                    param=f"{where}.tool_call_id",
                )
            out.append(harmony.tool_result(f"functions.{name}", text))
    return out, "\n\n".join(t for t in instructions if t) or None


def _tools(req: ChatRequest) -> list[harmony.ToolSpec]:
    if req.tool_choice == "none":
        return []
    specs = []
    for tool in req.tools or []:
        if tool.type != "function" or tool.function is None:
            warn_once(
                f"chat-tool:{tool.type}",
                "ignoring tools of type %r (only function tools are served)",
                tool.type,
            )
            continue
        f = tool.function
        specs.append(harmony.ToolSpec(f.name, f.description or "", f.parameters))
    return specs


def request_effort(req: ChatRequest) -> str | None:
    kwargs = req.chat_template_kwargs or {}
    for value, field in (
        (req.reasoning_effort, "reasoning_effort"),
        (req.reasoning.effort if req.reasoning else None, "reasoning.effort"),
        (kwargs.get("reasoning_effort"), "chat_template_kwargs.reasoning_effort"),
        (req.think, "think"),
    ):
        if value is not None:
            return normalise_effort(value, field)
    return None


def to_generation(req: ChatRequest, engine: ServerEngine) -> Generation:
    messages, instructions = to_messages(req.messages)
    tools = _tools(req)
    choice = tool_choice.parse(req.tool_choice, [t.name for t in tools])
    settings = engine.settings(
        effort=request_effort(req),
        instructions=instructions,
        tools=tools,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
    )
    return engine.prepare(Generation(messages, settings, tool_choice=choice))


# --------------------------------------------------------------------------- replies


class StopFilter:
    """Cuts the answer at the first `stop` string, holding back text that may start one."""

    def __init__(self, stop: str | list[str] | None) -> None:
        self.stops = [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        text = self.pending + text
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.pending, self.hit = "", True
            return text[:cut]
        keep = max(
            (n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0
        )
        self.pending = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def tool_call_item(call: harmony.ToolCall, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": function_name(call.recipient), "arguments": call.arguments},
    }


def usage(stats: GenerationStats | None) -> dict[str, Any]:
    return (stats or GenerationStats()).usage(cached=True)


def finish_reason(fin: Finished | None, calls: int, stopped: bool) -> str:
    if calls:
        return "tool_calls"
    if stopped or fin is None:
        return "stop"
    return "length" if fin.stats.finish_reason in ("length", "context_full") else "stop"


class Reply:
    """What the events of one generation amount to, as chat-completion deltas."""

    def __init__(self, req: ChatRequest) -> None:
        self.show_reasoning = not (req.reasoning and req.reasoning.exclude)
        self.stop = StopFilter(req.stop)
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.finished: Finished | None = None
        self.stats: GenerationStats | None = None

    def delta(self, item: Any) -> dict[str, Any] | None:
        """The delta for one item (None when there is nothing to send)."""
        if isinstance(item, Started):
            self.stats = item.stats
            return None
        if isinstance(item, Finished):
            self.finished = item
            tail = self.stop.flush()
            return self._content(tail) if tail and not self.stop.hit else None
        if isinstance(item, harmony.ReasoningDelta):
            self.reasoning.append(item.text)
            if self.show_reasoning:
                return {"reasoning": item.text, "reasoning_content": item.text}
        elif isinstance(item, harmony.FinalDelta | harmony.CommentaryDelta):
            return self._content(self.stop.feed(item.text))
        elif isinstance(item, harmony.ToolCall):
            call = tool_call_item(item, len(self.calls))
            self.calls.append(call)
            return {"tool_calls": [call]}
        return None

    def _content(self, text: str) -> dict[str, Any] | None:
        if not text:
            return None
        self.content.append(text)
        return {"content": text}

    def message(self) -> dict[str, Any]:
        content = "".join(self.content)
        msg: dict[str, Any] = {
            "role": "assistant",
            "content": content if content or not self.calls else None,
        }
        if self.show_reasoning and self.reasoning:
            msg["reasoning"] = msg["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            msg["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in self.calls]
        return msg

    @property
    def finish_reason(self) -> str:
        return finish_reason(self.finished, len(self.calls), self.stop.hit)


def _envelope(req: ChatRequest, cid: str, created: int, obj: str) -> dict[str, Any]:
    return {"id": cid, "object": obj, "created": created, "model": req.model or ""}


async def complete(job: Job, req: ChatRequest, model_id: str) -> dict[str, Any]:
    reply = Reply(req)
    async for item in job.results():
        reply.delta(item)
        if reply.stop.hit:
            break
    body = _envelope(req, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), "chat.completion")
    body["model"] = req.model or model_id
    body["choices"] = [
        {"index": 0, "message": reply.message(), "finish_reason": reply.finish_reason,
         "logprobs": None}
    ]  # fmt: skip
    body["usage"] = usage(reply.stats)
    return body


async def stream(job: Job, req: ChatRequest, model_id: str) -> AsyncIterator[str]:
    reply = Reply(req)
    base = _envelope(req, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), "chat.completion.chunk")
    base["model"] = req.model or model_id

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse.data_event({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for item in job.results():
            delta = reply.delta(item)
            if delta:
                yield chunk(delta)
            if reply.stop.hit:
                break
    except ApiError as e:
        yield sse.data_event(e.body())
        yield sse.DONE
        return
    except Exception as e:  # the generation failed after the stream began
        log.exception("chat completion stream failed")
        yield sse.data_event(ApiError(500, f"generation failed: {e}").body())
        yield sse.DONE
        return
    yield chunk({}, reply.finish_reason)
    if req.stream_options and req.stream_options.include_usage:
        yield sse.data_event({**base, "choices": [], "usage": usage(reply.stats)})
    yield sse.DONE
