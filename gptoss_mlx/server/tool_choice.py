"""`tool_choice` for both APIs: "none", "auto", "required", or one named function.

"none" leaves the functions out of the prompt. "required" and a named function are enforced in
harmony terms, after the model has reasoned: when it starts anything but a call it may make (an
answer, a preamble, another function), the reply goes back to the end of its reasoning and the
call's header is written for it as gpt-oss writes one, `<|channel|>commentary
to=functions.NAME <|constrain|>json<|message|>`, so the model writes only the arguments. For
"required" with several functions the header stops where their headers part (the model then
writes the name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import harmony
from .errors import ApiError

_MODES = ("none", "auto", "required")


@dataclass(frozen=True)
class ToolChoice:
    """An enforced choice: any of `names` ("required"), or the one name given."""

    names: tuple[str, ...]

    def allows(self, event: harmony.Event) -> bool:
        """Whether `event` may pass before the call: reasoning, or a call to an allowed name (a
        built-in tool on the analysis channel is part of the reasoning)."""
        if isinstance(event, harmony.ReasoningDelta):
            return True
        if isinstance(event, harmony.ToolCall):
            if event.channel == "analysis" and not event.recipient.startswith("functions."):
                return True
            return event.recipient.removeprefix("functions.") in self.names
        if isinstance(event, harmony.MessageEnd):
            return event.channel == "analysis" or event.recipient is not None
        return False

    def header(self, encoding: Any) -> list[int]:
        """The reply's tokens after `<|start|>assistant` that open the call (see the module)."""
        headers = [
            encoding.encode(
                f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>",
                allowed_special="all",
            )
            for name in self.names
        ]
        n = len(headers[0])
        for other in headers[1:]:
            n = min(n, harmony.common_prefix_len(headers[0], other))
        return headers[0][:n]


def parse(choice: str | dict[str, Any] | None, functions: Sequence[str]) -> ToolChoice | None:
    """The enforced choice, or None when the model decides ("auto", "none", a built-in tool).
    A 400 for an unknown mode, a name that is not among `functions`, or "required" without any."""
    if choice is None or isinstance(choice, str):
        mode = choice or "auto"
        if mode not in _MODES:
            raise ApiError(
                400,
                f"tool_choice must be one of {', '.join(_MODES)} or a function, not {mode!r}",
                param="tool_choice",
            )
        if mode != "required":
            return None
        if not functions:
            raise ApiError(
                400, 'tool_choice "required" needs at least one function in tools',
                param="tool_choice",
            )  # fmt: skip
        return ToolChoice(tuple(functions))
    kind = choice.get("type")
    if kind == "allowed_tools":  # {"type": "allowed_tools", "mode": ..., "tools": [...]}
        allowed = [t.get("name") or (t.get("function") or {}).get("name")
                   for t in choice.get("tools") or []]  # fmt: skip
        names = [n for n in functions if n in allowed]
        return ToolChoice(tuple(names)) if choice.get("mode") == "required" and names else None
    if kind != "function":
        return None  # a built-in tool type: the model decides when to use it
    name = choice.get("name") or (choice.get("function") or {}).get("name")
    if name not in functions:
        served = ", ".join(functions) or "none"
        raise ApiError(
            400,
            f"tool_choice names the function {name!r}, which is not in tools (they are: {served})",
            param="tool_choice",
        )
    return ToolChoice((name,))
