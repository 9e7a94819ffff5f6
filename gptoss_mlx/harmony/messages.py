"""Conversation data: messages, function tool specs and what goes into the system and developer
messages (PromptOptions)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

ROLES = ("user", "assistant", "tool", "developer", "system")
CHANNELS = ("analysis", "commentary", "final")
EFFORTS = ("low", "medium", "high")
KNOWLEDGE_CUTOFF = "2024-06"

CONSTRAIN_TEXT = "<|constrain|>"

# --------------------------------------------------------------------------- conversation data


@dataclass
class Message:
    """One harmony message. For tool results `name` is the tool's full name as called, e.g.
    `functions.get_weather` or `browser.search`; `recipient` is then usually `assistant`."""

    role: str
    content: str
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    name: str | None = None
    interrupted: bool = False  # the reply was cut (Ctrl-C, --max-tokens, full context)
    # A tool call's tokens exactly as the model wrote them, `<|start|>` to `<|call|>`: rendered
    # verbatim, since re-rendering moves the recipient and breaks the KV-cache prefix.
    tokens: list[int] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be a string, not {type(self.content).__name__}")
        if self.role == "tool" and not self.name:
            raise ValueError("a tool message needs the tool's name, e.g. 'functions.get_weather'")

    @classmethod
    def user(cls, text: str) -> Message:
        return cls("user", text)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        for key in ("channel", "recipient", "content_type", "name"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.interrupted:
            out["interrupted"] = True
        if self.tokens is not None:
            out["tokens"] = list(self.tokens)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        return cls(
            role=data["role"],
            content=data["content"],
            channel=data.get("channel"),
            recipient=data.get("recipient"),
            content_type=data.get("content_type"),
            name=data.get("name"),
            interrupted=bool(data.get("interrupted", False)),
            tokens=_token_list(data.get("tokens")),
        )


def _token_list(value: Any) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value
    ):
        raise ValueError("a message's tokens must be a list of token ids")
    return list(value)


def tool_result(name: str, output: str, *, channel: str = "commentary") -> Message:
    """The message that hands a tool's output back to the model.

    `name` is the call's recipient (`ToolCall.recipient`); pass the call's channel for built-in
    tools called on the analysis channel.
    """
    return Message("tool", output, channel=channel, recipient="assistant", name=name)


@dataclass
class ToolSpec:
    """A function tool, declared in the developer message under `namespace functions`."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None  # JSON schema of the arguments object

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolSpec:
        return cls(data["name"], data.get("description", ""), data.get("parameters"))


def _today() -> str:
    return _dt.date.today().isoformat()


@dataclass
class PromptOptions:
    """What goes into the system and developer messages.

    `date` defaults to the day the options are created, not the day of each render, so a chat
    that runs past midnight keeps a stable (cacheable) system message; None omits the line.
    """

    effort: str = "medium"
    date: str | None = field(default_factory=_today)
    knowledge_cutoff: str = KNOWLEDGE_CUTOFF
    instructions: str | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    browser_tool: bool = False
    python_tool: bool = False
    # The python tool's text in the system message; None keeps openai-harmony's default.
    python_description: str | None = None

    def __post_init__(self) -> None:
        if self.effort not in EFFORTS:
            raise ValueError(f"reasoning effort must be low, medium or high, not {self.effort!r}")
        if isinstance(self.date, _dt.date):
            self.date = self.date.isoformat()

    def to_dict(self) -> dict[str, Any]:
        out = {
            "effort": self.effort,
            "date": self.date,
            "knowledge_cutoff": self.knowledge_cutoff,
            "instructions": self.instructions,
            "tools": [t.to_dict() for t in self.tools],
            "browser_tool": self.browser_tool,
            "python_tool": self.python_tool,
        }
        if self.python_description is not None:
            out["python_description"] = self.python_description
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptOptions:
        return cls(
            effort=data.get("effort", "medium"),
            date=data["date"] if "date" in data else _today(),
            knowledge_cutoff=data.get("knowledge_cutoff", KNOWLEDGE_CUTOFF),
            instructions=data.get("instructions"),
            tools=[ToolSpec.from_dict(t) for t in data.get("tools", [])],
            browser_tool=bool(data.get("browser_tool", False)),
            python_tool=bool(data.get("python_tool", False)),
            python_description=data.get("python_description"),
        )


@dataclass
class Conversation:
    """A saved chat: the prompt options and the messages (without system/developer headers)."""

    messages: list[Message] = field(default_factory=list)
    options: PromptOptions = field(default_factory=PromptOptions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options.to_dict(),
            "messages": [m.to_dict() for m in self.messages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conversation:
        return cls(
            messages=[Message.from_dict(m) for m in data.get("messages", [])],
            options=PromptOptions.from_dict(data.get("options", {})),
        )
