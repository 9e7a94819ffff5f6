"""Request bodies as pydantic models. Unknown fields are accepted and ignored (clients send many);
wrong types and out-of-range values are a 400 with the field named."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ApiError


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- chat completions


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class FunctionCallIn(_Lenient):
    name: str
    arguments: str | dict[str, Any] = ""


class ToolCallIn(_Lenient):
    id: str | None = None
    type: str = "function"
    function: FunctionCallIn


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None


class FunctionDef(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatTool(_Lenient):
    type: str = "function"
    function: FunctionDef | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ReasoningOptions(_Lenient):
    effort: str | None = None
    exclude: bool = False
    summary: str | None = None


class SamplingFields(_Lenient):
    model: str | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    reasoning: ReasoningOptions | None = None


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    tools: list[ChatTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    think: bool | str | None = None


# --------------------------------------------------------------------------- responses


class ResponsesRequest(SamplingFields):
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    store: bool = True
    previous_response_id: str | None = None
    parallel_tool_calls: bool | None = None


class InputMessage(_Lenient):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]


class InputFunctionCall(_Lenient):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = ""


class InputFunctionOutput(_Lenient):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]


class InputCustomCall(_Lenient):
    type: Literal["custom_tool_call"]
    call_id: str
    name: str
    input: str = ""


class InputCustomOutput(_Lenient):
    type: Literal["custom_tool_call_output"]
    call_id: str
    output: str | list[ContentPart]


class InputReasoning(_Lenient):
    type: Literal["reasoning"]
    content: list[ContentPart] | None = None
    summary: list[ContentPart] | None = None
    encrypted_content: str | None = None


# --------------------------------------------------------------------------- shared helpers

_EFFORTS = {
    "minimal": "low",
    "none": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}


def normalise_effort(value: Any, field: str) -> str | None:
    """`low|medium|high` for any spelling clients use (`minimal` is low, `xhigh`/`max` high)."""
    if value is None:
        return None
    if isinstance(value, bool):  # ollama's think: true/false
        return "medium" if value else "low"
    effort = _EFFORTS.get(str(value).strip().lower())
    if effort is None:
        raise ApiError(
            400,
            f"{field} must be minimal, low, medium or high, not {value!r}",
            param=field,
            code="invalid_value",
        )
    return effort


def part_text(content: str | list[ContentPart] | None, field: str) -> str:
    """The text of a message's content: a string or a list of text parts (images are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.text is None:
            raise ApiError(
                400,
                f"{field}: content parts of type {part.type!r} are not supported (text only)",
                param=field,
                code="unsupported_content",
            )
        texts.append(part.text)
    return "".join(texts)
