"""POST /v1/responses as Codex CLI uses it: input items to harmony, parser events to output items
and the Responses SSE event sequence (always ending in response.completed or response.failed).

Reasoning items carry the text in `content` (reasoning_text) and again in `encrypted_content`, so
a client that replays either gets it back to the model; the chain-of-thought rule (reasoning of a
finished turn is dropped) is applied when rendering, as in chat.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .. import harmony
from ..session.chat import GenerationStats
from . import builtin, sse, tool_choice
from .chat_completions import function_call, function_name
from .engine import Finished, Generation, ServerEngine, Started
from .errors import ApiError, warn_once
from .schemas import (
    InputCustomCall,
    InputCustomOutput,
    InputFunctionCall,
    InputFunctionOutput,
    InputMessage,
    InputReasoning,
    ResponsesRequest,
    normalise_effort,
    part_text,
)
from .worker import Job

log = logging.getLogger("gptoss.server")

_ITEM_TYPES: dict[str, type[BaseModel]] = {
    "message": InputMessage,
    "function_call": InputFunctionCall,
    "function_call_output": InputFunctionOutput,
    "reasoning": InputReasoning,
    "custom_tool_call": InputCustomCall,
    "custom_tool_call_output": InputCustomOutput,
}
# A custom (freeform) tool, e.g. Codex's apply_patch, is shown to the model as a function taking
# its text as one string argument.
CUSTOM_PARAMETERS = {
    "type": "object",
    "properties": {"input": {"type": "string"}},
    "required": ["input"],
}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(req.input, str):
        return [{"type": "message", "role": "user", "content": req.input}] if req.input else []
    return list(req.input)


def _parse(item: dict[str, Any], where: str) -> BaseModel | None:
    kind = item.get("type", "message")
    model = _ITEM_TYPES.get(kind)
    if kind in builtin.OUTPUT_TYPES:  # replayed built-in calls: their results are not kept
        return None
    if model is None:
        log.warning("ignoring an input item of type %r", kind)
        return None
    try:
        return model.model_validate({**item, "type": kind})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ApiError(400, f"{where}.{loc}: {err['msg']}", param=f"{where}.{loc}") from None


def _reasoning_text(item: InputReasoning) -> str:
    for parts in (item.content, None, item.summary):
        if parts is None and item.encrypted_content:
            return item.encrypted_content
        if parts:
            return "".join(p.text or "" for p in parts)
    return ""


def to_messages(items: list[dict[str, Any]]) -> tuple[list[harmony.Message], list[str]]:
    """Harmony messages and the instructions that system/developer messages give."""
    parsed = [(f"input[{i}]", _parse(it, f"input[{i}]")) for i, it in enumerate(items)]
    out: list[harmony.Message] = []
    instructions: list[str] = []
    names: dict[str, str] = {}
    for n, (where, item) in enumerate(parsed):
        if isinstance(item, InputMessage):
            text = part_text(item.content, f"{where}.content")
            if item.role in ("system", "developer"):
                instructions.append(text)
            elif item.role == "user":
                out.append(harmony.Message("user", text))
            elif text:
                out.append(harmony.Message("assistant", text, channel=_channel(parsed[n + 1 :])))
        elif isinstance(item, InputFunctionCall):
            names[item.call_id] = item.name
            out.append(function_call(item.name, item.arguments))
        elif isinstance(item, InputCustomCall):
            names[item.call_id] = item.name
            out.append(function_call(item.name, json.dumps({"input": item.input})))
        elif isinstance(item, InputFunctionOutput | InputCustomOutput):
            name = names.get(item.call_id)
            if name is None:
                raise ApiError(
                    400,
                    f"{where}: no call with call_id {item.call_id!r} comes before it",
                    param=f"{where}.call_id",
                )
            text = part_text(item.output, f"{where}.output")
            out.append(harmony.tool_result(f"functions.{name}", text))
        elif isinstance(item, InputReasoning) and (text := _reasoning_text(item)):
            out.append(harmony.Message("assistant", text, channel="analysis"))
    return out, instructions


def _channel(rest: list[tuple[str, Any]]) -> str:
    """An assistant message followed by a call in the same turn is a preamble, not the answer."""
    for _, item in rest:
        if isinstance(item, InputMessage) and item.role == "user":
            break
        if isinstance(item, InputFunctionCall | InputCustomCall):
            return "commentary"
    return "final"


def custom_tool_names(req: ResponsesRequest) -> set[str]:
    return {t["name"] for t in req.tools or [] if t.get("type") == "custom" and t.get("name")}


def _tools(req: ResponsesRequest) -> list[harmony.ToolSpec]:
    if req.tool_choice == "none":
        return []
    specs = []
    for tool in req.tools or []:
        kind, name = tool.get("type"), tool.get("name")
        if kind in ("function", "custom") and isinstance(name, str):
            params = tool.get("parameters") if kind == "function" else CUSTOM_PARAMETERS
            specs.append(harmony.ToolSpec(name, tool.get("description") or "", params))
        elif kind not in builtin.TOOL_TYPES:
            warn_once(f"tool:{kind}", "ignoring tools of type %r (not served)", kind)
    return specs


def to_generation(
    req: ResponsesRequest,
    engine: ServerEngine,
    history: list[dict[str, Any]],
    builtin_tools: Mapping[str, Any] | None = None,
) -> tuple[Generation, list[dict[str, Any]]]:
    """The generation, and the conversation's items (stored ones, then this input)."""
    items = history + input_items(req)
    messages, instructions = to_messages(items)
    if req.instructions:
        instructions.insert(0, req.instructions)
    effort = normalise_effort(req.reasoning.effort if req.reasoning else None, "reasoning.effort")
    tools = _tools(req)
    choice = tool_choice.parse(req.tool_choice, [t.name for t in tools])
    settings = engine.settings(
        effort=effort,
        instructions="\n\n".join(t for t in instructions if t) or None,
        tools=tools,
        max_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
    )
    asked = req.tools if req.tool_choice != "none" else []
    enabled = builtin.select(asked, builtin_tools or {})
    describe = getattr(enabled.get("python"), "instruction", None)
    if callable(describe):  # the real timeout, directory and network in the prompt
        settings.python_description = describe()
    gen = Generation(messages, settings, builtin=enabled, tool_choice=choice)
    return engine.prepare(gen), items


# --------------------------------------------------------------------------- output


class ResponseBuilder:
    """Turns generation items into output items, and into SSE events through `emit`."""

    def __init__(
        self,
        req: ResponsesRequest,
        model_id: str,
        emit: Callable[..., None] | None = None,
        *,
        browser: Any = None,
    ) -> None:
        """`browser`: the response's BrowserTool, whose citations become url_citation
        annotations (and Markdown links in the text)."""
        self.req = req
        self.browser = browser
        self.id = _new_id("resp")
        self.model = req.model or model_id
        self.created = int(time.time())
        self.emit = emit or (lambda *a, **k: None)
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None
        self.stats: GenerationStats | None = None
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.custom = custom_tool_names(req)
        self.functions = {t.get("name") for t in req.tools or []
                          if t.get("type") in ("function", "custom")}  # fmt: skip
        self.builtin = {builtin.TOOL_TYPES[str(t.get("type"))] for t in req.tools or []
                        if t.get("type") in builtin.TOOL_TYPES}  # fmt: skip

    # ---- the response object
    def response(self) -> dict[str, Any]:
        r = self.req
        st = self.stats
        incomplete = self.status == "incomplete"
        return {
            "id": self.id, "object": "response", "created_at": self.created,
            "status": self.status, "model": self.model, "output": list(self.output),
            "output_text": "".join(
                p["text"] for o in self.output if o["type"] == "message" for p in o["content"]
            ),
            "error": self.error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": r.instructions, "previous_response_id": r.previous_response_id,
            "tools": r.tools or [], "tool_choice": r.tool_choice or "auto",
            "parallel_tool_calls": False, "temperature": r.temperature, "top_p": r.top_p,
            "max_output_tokens": r.max_output_tokens, "store": r.store, "metadata": {},
            "reasoning": {"effort": r.reasoning.effort if r.reasoning else None, "summary": None},
            "text": {"format": {"type": "text"}}, "truncation": "disabled",
            "usage": None if st is None else {
                "input_tokens": st.prompt_tokens,
                "input_tokens_details": {"cached_tokens": st.prompt_tokens - st.prefilled_tokens},
                "output_tokens": st.generated_tokens,
                "output_tokens_details": {"reasoning_tokens": st.reasoning_tokens},
                "total_tokens": st.prompt_tokens + st.generated_tokens,
            },
        }  # fmt: skip

    def start(self) -> None:
        self.emit("response.created", response=self.response())
        self.emit("response.in_progress", response=self.response())

    # ---- items
    def feed(self, item: Any) -> None:
        if isinstance(item, Started):
            self.stats = item.stats
        elif isinstance(item, harmony.ReasoningDelta):
            self._text("reasoning", item.text)
        elif isinstance(item, harmony.FinalDelta | harmony.CommentaryDelta):
            self._text("message", item.text)
        elif isinstance(item, harmony.MessageEnd):
            self._close()
        elif isinstance(item, harmony.ToolCall):
            self._close()
            if builtin.as_builtin(item, self.builtin, self.functions) is None:
                self._call(item)
        elif isinstance(item, builtin.BuiltinResult):
            self._builtin(item)
        elif isinstance(item, Finished):
            self._close()
            self.stats = item.stats
            cut = item.stats.finish_reason in ("length", "context_full")
            self.status = "incomplete" if cut else "completed"

    def _text(self, kind: str, text: str) -> None:
        if self.open is not None and self.open["type"] != kind:
            self._close()
        index = len(self.output)
        if self.open is None:
            if kind == "reasoning":
                item = {"type": "reasoning", "id": _new_id("rs"), "summary": [], "content": [],
                        "encrypted_content": None, "status": "in_progress"}  # fmt: skip
                part = {"type": "reasoning_text", "text": ""}
            else:
                item = {"type": "message", "id": _new_id("msg"), "role": "assistant",
                        "status": "in_progress", "content": []}  # fmt: skip
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self.open = {"type": kind, "item": item, "text": [], "index": index, "part": part,
                         "cite": builtin.citations(self.browser) if kind == "message" else None}  # fmt: skip
            self.emit("response.output_item.added", output_index=index, item=dict(item))
            self.emit("response.content_part.added", item_id=item["id"], output_index=index,
                      content_index=0, part=dict(part))  # fmt: skip
        cite = self.open["cite"]
        if cite is not None:
            text = cite.feed(text)
        self._delta(kind, text)

    def _delta(self, kind: str, text: str) -> None:
        assert self.open is not None
        if not text:
            return
        self.open["text"].append(text)
        event = (
            "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        )
        extra = {} if kind == "reasoning" else {"logprobs": []}
        self.emit(event, item_id=self.open["item"]["id"], output_index=self.open["index"],
                  content_index=0, delta=text, **extra)  # fmt: skip
        self._annotations()

    def _annotations(self) -> None:
        assert self.open is not None
        cite, part = self.open["cite"], self.open["part"]
        if cite is None:
            return
        for n in range(len(part["annotations"]), len(cite.annotations)):
            note = dict(cite.annotations[n])
            part["annotations"].append(note)
            self.emit("response.output_text.annotation.added", item_id=self.open["item"]["id"],
                      output_index=self.open["index"], content_index=0, annotation_index=n,
                      annotation=note)  # fmt: skip

    def _close(self) -> None:
        if self.open is None:
            return
        if self.open["cite"] is not None:  # a citation held back at the very end
            self._delta(self.open["type"], self.open["cite"].finish())
        o, self.open = self.open, None
        text, item, index = "".join(o["text"]), o["item"], o["index"]
        part = {**o["part"], "text": text}
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        if o["type"] == "reasoning":
            self.emit("response.reasoning_text.done", text=text, **ids)
            item.update(content=[part], encrypted_content=text)
        else:
            self.emit("response.output_text.done", text=text, logprobs=[], **ids)
            item.update(content=[part])
        self.emit("response.content_part.done", part=part, **ids)
        item["status"] = "completed"
        self.output.append(item)
        self.emit("response.output_item.done", output_index=index, item=item)

    def _call(self, call: harmony.ToolCall) -> None:
        if function_name(call.recipient) in self.custom:
            self._custom_call(call)
            return
        index = len(self.output)
        item = {"type": "function_call", "id": _new_id("fc"), "call_id": _new_id("call"),
                "name": function_name(call.recipient), "arguments": "", "status": "in_progress"}  # fmt: skip
        self.emit("response.output_item.added", output_index=index, item=dict(item))
        ids = {"item_id": item["id"], "output_index": index}
        self.emit("response.function_call_arguments.delta", delta=call.arguments, **ids)
        self.emit("response.function_call_arguments.done", arguments=call.arguments,
                  name=item["name"], **ids)  # fmt: skip
        item.update(arguments=call.arguments, status="completed")
        self.output.append(item)
        self.emit("response.output_item.done", output_index=index, item=item)

    def _builtin(self, done: builtin.BuiltinResult) -> None:
        index, item = len(self.output), builtin.output_item(done)
        kind = item["type"]  # code_interpreter_call or web_search_call
        self.emit(
            "response.output_item.added", output_index=index, item={**item, "status": "in_progress"}
        )
        ids = {"item_id": item["id"], "output_index": index}
        self.emit(f"response.{kind}.in_progress", **ids)
        if kind == "code_interpreter_call":
            self.emit("response.code_interpreter_call_code.delta", delta=item["code"], **ids)
            self.emit("response.code_interpreter_call_code.done", code=item["code"], **ids)
            self.emit("response.code_interpreter_call.interpreting", **ids)
        else:
            self.emit("response.web_search_call.searching", **ids)
        self.emit(f"response.{kind}.completed", **ids)
        self.output.append(item)
        self.emit("response.output_item.done", output_index=index, item=item)

    def _custom_call(self, call: harmony.ToolCall) -> None:
        index = len(self.output)
        text = custom_input(call.arguments)
        item = {"type": "custom_tool_call", "id": _new_id("ctc"), "call_id": _new_id("call"),
                "name": function_name(call.recipient), "input": ""}  # fmt: skip
        self.emit("response.output_item.added", output_index=index, item=dict(item))
        ids = {"item_id": item["id"], "output_index": index}
        self.emit("response.custom_tool_call_input.delta", delta=text, **ids)
        self.emit("response.custom_tool_call_input.done", input=text, **ids)
        item["input"] = text
        self.output.append(item)
        self.emit("response.output_item.done", output_index=index, item=item)

    def fail(self, error: ApiError) -> None:
        self._close()
        self.status = "failed"
        self.error = {"code": error.code or "server_error", "message": error.message}

    def finish(self) -> None:
        if self.status == "in_progress":
            self.status = "completed"
        kind = "response.failed" if self.status == "failed" else "response.completed"
        self.emit(kind, response=self.response())


def custom_input(arguments: str) -> str:
    """The text of a custom tool call: the `input` argument, or the model's raw text."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return (
        value["input"]
        if isinstance(value, dict) and isinstance(value.get("input"), str)
        else arguments
    )


def _as_api_error(e: Exception) -> ApiError:
    if isinstance(e, ApiError):
        return e
    log.exception("response generation failed")
    return ApiError(500, f"generation failed: {type(e).__name__}: {e}", code="server_error")


async def complete(job: Job, builder: ResponseBuilder) -> dict[str, Any]:
    builder.start()
    try:
        async for item in job.results():
            builder.feed(item)
    except Exception as e:
        builder.fail(_as_api_error(e))
    builder.finish()
    return builder.response()


async def stream(job: Job, builder: ResponseBuilder) -> AsyncIterator[str]:
    frames: list[str] = []
    events = sse.TypedEvents()
    builder.emit = lambda kind, **fields: frames.append(events(kind, **fields))
    builder.start()
    try:
        async for item in job.results():
            builder.feed(item)
            while frames:
                yield frames.pop(0)
    except Exception as e:
        builder.fail(_as_api_error(e))
    builder.finish()
    for frame in frames:
        yield frame
