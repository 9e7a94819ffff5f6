"""The harmony chat format: conversations, prompt rendering and reply parsing for gpt-oss.

The engine below knows token ids only; the CLI above works with `Message` objects and parser
events. Rendering is delegated to openai-harmony so prompts are token-exact with it; the one
deliberate difference is the chain-of-thought rule (`visible_messages`).
"""

from __future__ import annotations

import codecs
import datetime as _dt
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import openai_harmony as oh

from ..errors import UserError

# Formatting tokens of the o200k_harmony vocabulary.
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012
ENDOFTEXT = 199999
ASSISTANT = 173781  # "assistant" is a single ordinary token
FIRST_SPECIAL = 199998  # ids below this are ordinary text tokens

# The engine stops sampling on these. `<|end|>` is NOT a stop: it closes one message and the
# model goes on with the next (typically the final answer after the analysis).
STOP_TOKENS = (RETURN, CALL)

ROLES = ("user", "assistant", "tool", "developer", "system")
CHANNELS = ("analysis", "commentary", "final")
EFFORTS = ("low", "medium", "high")
KNOWLEDGE_CUTOFF = "2024-06"

_EFFORT = {
    "low": oh.ReasoningEffort.LOW,
    "medium": oh.ReasoningEffort.MEDIUM,
    "high": oh.ReasoningEffort.HIGH,
}
_NO_AUTO_DROP = oh.RenderConversationConfig(auto_drop_analysis=False)
_CONSTRAIN_TEXT = "<|constrain|>"


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


# --------------------------------------------------------------------------- encoding

_VOCAB_FILE = "o200k_base.tiktoken"
_ENCODINGS_VAR = "TIKTOKEN_ENCODINGS_BASE"
_encodings: dict[Path, oh.HarmonyEncoding] = {}
_encodings_lock = threading.Lock()


def load_encoding(encodings_dir: Path) -> oh.HarmonyEncoding:
    """The gpt-oss harmony encoding, read from `encodings_dir/o200k_base.tiktoken`; cached per dir.

    openai-harmony otherwise downloads the vocabulary at first use. It reads a local copy from the
    folder named by TIKTOKEN_ENCODINGS_BASE (undocumented, openai/harmony#95; the file's SHA-256
    must match o200k_base's), so the variable is set for the load only and restored after.
    """
    directory = Path(encodings_dir).expanduser().resolve()
    with _encodings_lock:
        cached = _encodings.get(directory)
        if cached is not None:
            return cached
        if not (directory / _VOCAB_FILE).is_file():
            raise UserError(f"the harmony vocabulary {directory / _VOCAB_FILE} is missing")
        saved = os.environ.get(_ENCODINGS_VAR)
        os.environ[_ENCODINGS_VAR] = str(directory)
        try:
            encoding = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
        except oh.HarmonyError as err:
            raise UserError(
                f"cannot load the harmony vocabulary {directory / _VOCAB_FILE}: {err}"
            ) from err
        finally:
            if saved is None:
                os.environ.pop(_ENCODINGS_VAR, None)
            else:
                os.environ[_ENCODINGS_VAR] = saved
        _encodings[directory] = encoding
        return encoding


def encoding_for_model(model_dir: Path) -> oh.HarmonyEncoding:
    """The harmony encoding built from the model's own tokenizer files (no network)."""
    import tempfile

    from .tokenizer import TIKTOKEN_FILE, CacheNotWritable, harmony_encodings_dir

    try:
        return load_encoding(harmony_encodings_dir(Path(model_dir)))
    except CacheNotWritable as e:
        # A read-only cache dir costs a re-derivation at each start, not the run: openai-harmony
        # reads the file while loading, so a temporary folder is enough.
        with tempfile.TemporaryDirectory(prefix="gptoss-encodings-") as tmp:
            (Path(tmp) / TIKTOKEN_FILE).write_bytes(e.content)
            return load_encoding(Path(tmp))


# --------------------------------------------------------------------------- rendering


def visible_messages(messages: Sequence[Message]) -> list[Message]:
    """The messages a prompt shows: chain of thought survives only in the open turn.

    A turn is the messages after a user message. Analysis-channel messages (reasoning, and
    built-in tool calls and results on that channel) are kept only in the last turn and only
    while it has no final answer (it is still calling tools). A turn that has a final answer,
    or that was interrupted by a newer user message, loses all of its analysis. openai-harmony
    0.0.8's auto_drop_analysis only drops analysis before the conversation's first final
    message, so it would leak the reasoning of every later turn into the prompt.
    """
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    open_turn = messages[last_user + 1 :]
    turn_is_open = not any(m.role == "assistant" and m.channel == "final" for m in open_turn)
    return [
        m
        for i, m in enumerate(messages)
        if m.channel != "analysis" or (turn_is_open and i > last_user)
    ]


def to_harmony(message: Message) -> oh.Message:
    """The openai-harmony message for one of ours."""
    return oh.Message(
        author=oh.Author(role=oh.Role(message.role), name=message.name),
        content=[oh.TextContent(text=message.content)],
        channel=message.channel,
        recipient=message.recipient,
        content_type=message.content_type,
    )


def header_messages(options: PromptOptions) -> list[oh.Message]:
    """The system message and, with instructions or tools, the developer message."""
    system = (
        oh.SystemContent.new()
        .with_reasoning_effort(_EFFORT[options.effort])
        .with_knowledge_cutoff(options.knowledge_cutoff)
    )
    if options.date:
        system = system.with_conversation_start_date(options.date)
    if options.browser_tool:
        system = system.with_browser_tool()
    if options.python_tool and options.python_description is not None:
        system = system.with_tools(
            oh.ToolNamespaceConfig(name="python", description=options.python_description, tools=[])
        )
    elif options.python_tool:
        system = system.with_python_tool()
    out = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    if options.instructions or options.tools:
        developer = oh.DeveloperContent.new()
        if options.instructions:
            developer = developer.with_instructions(options.instructions)
        if options.tools:
            developer = developer.with_function_tools(
                [oh.ToolDescription.new(t.name, t.description, t.parameters) for t in options.tools]
            )
        out.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer))
    return out


def _harmony_conversation(messages: Sequence[Message], options: PromptOptions) -> oh.Conversation:
    shown = [to_harmony(m) for m in visible_messages(messages)]
    return oh.Conversation.from_messages(header_messages(options) + shown)


def render_prompt(
    messages: Sequence[Message], options: PromptOptions, encoding: oh.HarmonyEncoding
) -> list[int]:
    """The completion prompt for the next assistant reply; ends with `<|start|>assistant`.

    Token-exact with openai-harmony's render_conversation_for_completion of the system and
    developer messages built from `options` followed by `visible_messages(messages)`.
    Stored assistant messages end in `<|end|>` (or `<|call|>` for tool calls), never
    `<|return|>`.
    """
    if any(m.tokens for m in messages):
        return [*render_history(messages, options, encoding), START, ASSISTANT]
    conversation = _harmony_conversation(messages, options)
    return encoding.render_conversation_for_completion(
        conversation, oh.Role.ASSISTANT, _NO_AUTO_DROP
    )


def render_history(
    messages: Sequence[Message], options: PromptOptions, encoding: oh.HarmonyEncoding
) -> list[int]:
    """`render_prompt` without the trailing `<|start|>assistant`."""
    if not any(m.tokens for m in messages):
        return encoding.render_conversation(_harmony_conversation(messages, options), _NO_AUTO_DROP)
    # Message by message (the same tokens as one conversation), generated calls verbatim.
    header = oh.Conversation.from_messages(header_messages(options))
    out = encoding.render_conversation(header, _NO_AUTO_DROP)
    render_options = oh.RenderOptions(conversation_has_function_tools=bool(options.tools))
    for m in visible_messages(messages):
        out.extend(m.tokens if m.tokens else encoding.render(to_harmony(m), render_options))
    return out


def render_messages(messages: Sequence[Message], encoding: oh.HarmonyEncoding) -> list[int]:
    """The messages exactly as given (no system header, nothing dropped), token-exact."""
    conversation = oh.Conversation.from_messages([to_harmony(m) for m in messages])
    return encoding.render_conversation(conversation, _NO_AUTO_DROP)


def history_prefix(
    messages: Sequence[Message], options: PromptOptions, encoding: oh.HarmonyEncoding
) -> list[int]:
    """The tokens up to the end of the last user message: a prefix of this prompt and of every
    later one in the conversation, so a KV cache holding them can always be reused.

    Everything after it (the open turn) may change: its analysis is dropped once the turn ends.
    The first prompt of a turn is `history_prefix + [START, ASSISTANT]`.
    """
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return render_history(messages[: last_user + 1], options, encoding)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share (cached tokens vs. a new prompt)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# --------------------------------------------------------------------------- parser events


@dataclass(frozen=True)
class ReasoningDelta:
    """Text of the analysis channel (chain of thought; never the answer)."""

    text: str


@dataclass(frozen=True)
class FinalDelta:
    """Text of the answer: the final channel, a message without a (known) channel, or text the
    model wrote outside any message."""

    text: str


@dataclass(frozen=True)
class CommentaryDelta:
    """Text of a commentary-channel message without a recipient (a preamble before tool calls)."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """A complete message addressed to a tool, e.g. recipient `functions.get_weather` (arguments
    usually JSON, content_type `<|constrain|>json`) or `python` / `browser.search` on the
    analysis channel. Emitted when the message ends; a call cut off by the token limit is not."""

    recipient: str
    arguments: str
    channel: str
    content_type: str | None


@dataclass(frozen=True)
class MessageEnd:
    """A message ended; `incomplete` when the reply was cut off inside it."""

    channel: str
    recipient: str | None
    incomplete: bool = False


Event = ReasoningDelta | FinalDelta | CommentaryDelta | ToolCall | MessageEnd


# --------------------------------------------------------------------------- header parsing


@dataclass
class _Header:
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    leftover: str = ""  # header text that is no header field: it becomes content


_CHANNEL_RE = re.compile(r"<\|channel\|>\s*([^\s<]*)")
_RECIPIENT_RE = re.compile(r"(?<![^\s>])to=([^\s<]+)")
_CONSTRAIN_RE = re.compile(r"<\|constrain\|>([^\s<]*)")
_BARE_CONTENT_TYPES = ("json", "code")


def _lenient_header(text: str) -> tuple[_Header, str | None]:
    """Best-effort header fields from header text; also returns the role word if there is one."""
    header = _Header()

    def take_channel(m: re.Match[str]) -> str:
        if m.group(1):
            header.channel = m.group(1)  # the last one wins
        return " "

    rest = _CHANNEL_RE.sub(take_channel, text)
    if m := _RECIPIENT_RE.search(rest):
        header.recipient = m.group(1)
        rest = f"{rest[: m.start()]} {rest[m.end() :]}"
    if m := _CONSTRAIN_RE.search(rest):
        header.content_type = _CONSTRAIN_TEXT + m.group(1)
        rest = f"{rest[: m.start()]} {rest[m.end() :]}"
    rest = rest.strip()
    role = None
    if (m := re.match(r"(\S+)\s*", rest)) and m.group(1) in ROLES:
        role = m.group(1)
        rest = rest[m.end() :]
    if header.content_type is None and rest in _BARE_CONTENT_TYPES:
        header.content_type, rest = rest, ""
    header.leftover = rest
    return header, role


def _plausible(header: _Header, text: str) -> bool:
    """Whether openai-harmony's reading of a header is believable. It turns any lone word into
    a recipient and an unknown role into a tool author; we only accept `to=` recipients."""
    if header.recipient is not None and (
        f"to={header.recipient}" not in text or "<|" in header.recipient
    ):
        return False
    if header.content_type is not None:
        bare = header.content_type.removeprefix(_CONSTRAIN_TEXT)
        if "<|" in bare or bare not in text:
            return False
    return True


def _normalise_channel(channel: str | None, recipient: str | None) -> str:
    if channel:
        return channel
    if recipient is None:
        return "final"
    return "commentary" if recipient.startswith("functions.") else "analysis"


def _could_be_role_part(text: str) -> bool:
    """Whether text written outside a message may still become a header (`assistant to=x`)."""
    words = text.split()
    if len(words) > 2 or (len(words) == 2 and words[0] != "assistant"):
        return False
    for i, word in enumerate(words):
        if i == 0 and "assistant".startswith(word):
            continue
        if word.startswith("to=") or "to=".startswith(word):
            continue
        return False
    return True


def _is_ordinary(token: int) -> bool:
    return 0 <= token < FIRST_SPECIAL


# --------------------------------------------------------------------------- reply parser


class _State(Enum):
    HEADER = "header"
    CONTENT = "content"
    BETWEEN = "between"  # after a message ended, expecting <|start|>


_MESSAGE_ENDS = (END, RETURN, CALL, ENDOFTEXT)
# Headers are a handful of tokens; a longer one is an answer whose <|message|> went missing.
_MAX_HEADER_TOKENS = 48


@dataclass
class _Open:
    header: _Header
    decoder: Any  # oh.StreamableParser in content state, or None after it failed
    parts: list[str] = field(default_factory=list)
    fallback: Any = None  # incremental UTF-8 decoder used if the library decoder fails
    decoded_chars: int = 0  # characters the library decoder has produced so far
    separate: bool = False  # put a space between header leftover and the content


class ReplyParser:
    """Turns the tokens the model writes after `<|start|>assistant` into events and messages.

    Feed tokens one at a time with `feed`, call `finish` when generation stops, then store
    `messages()` in the history. Never raises on model output: openai-harmony's
    StreamableParser (non-strict) parses headers and decodes content; what it rejects or
    misreads is handled here (recipient in the role or channel part, missing channel, missing
    `<|start|>` or `<|end|>`, malformed headers, stray special tokens, text outside messages,
    a reply cut off by the token limit). `warnings` lists what was repaired.
    """

    def __init__(self, encoding: oh.HarmonyEncoding) -> None:
        self._enc = encoding
        self._state = _State.HEADER
        self._header: list[int] = []
        self._pending: list[int] = []
        self._open: _Open | None = None
        self._messages: list[Message] = []
        self.warnings: list[str] = []
        self.stop_token: int | None = None
        self.incomplete = False

    # public -------------------------------------------------------------------------------

    def feed(self, token: int) -> list[Event]:
        events: list[Event] = []
        token = int(token)  # numpy / mlx scalars from the sampler
        self.stop_token = token if token in STOP_TOKENS else None
        if self._state is _State.CONTENT:
            self._in_content(token, events)
        elif self._state is _State.HEADER:
            self._in_header(token, events)
        else:
            self._between(token, events)
        return events

    def feed_all(self, tokens: Iterable[int]) -> list[Event]:
        events: list[Event] = []
        for token in tokens:
            events.extend(self.feed(token))
        return events

    def finish(self) -> list[Event]:
        """End of generation: flush what was written. `incomplete` is set unless the last
        token was a stop token (the reply was cut off, e.g. by the token limit)."""
        events: list[Event] = []
        if self._state is _State.CONTENT:
            self._close(events, complete=False)
        elif self._state is _State.HEADER and self._header:
            self._flush_header(events, complete=False)
        elif self._state is _State.BETWEEN:
            self._flush_pending(events, complete=False)
        self._header, self._pending = [], []
        self._state = _State.BETWEEN
        self.incomplete = self.stop_token is None
        return events

    def messages(self) -> list[Message]:
        """The assistant messages parsed so far (channels normalised: missing -> final)."""
        return list(self._messages)

    # states -------------------------------------------------------------------------------

    def _in_content(self, token: int, events: list[Event]) -> None:
        if _is_ordinary(token):
            self._emit(self._decode(token), events)
        elif token in _MESSAGE_ENDS:
            self._close(events, complete=True)
            self._state = _State.BETWEEN
        elif token in (START, CHANNEL):
            self._warn(f"message not ended before {self._special(token)}")
            self._close(events, complete=True)
            self._state = _State.HEADER
            self._header = [CHANNEL] if token == CHANNEL else []
        else:
            self._warn(f"dropped {self._special(token)} inside a message")

    def _in_header(self, token: int, events: list[Event]) -> None:
        if token == MESSAGE:
            self._open_message(self._header, events, separate=True)
            self._header = []
            self._state = _State.CONTENT
        elif token in _MESSAGE_ENDS:
            if self._header:
                self._warn("message ended inside its header")
                self._open_message(self._header, events, separate=True)
                self._close(events, complete=True)
            self._header = []
            self._state = _State.BETWEEN
        elif token == START:
            if self._header:
                self._warn(f"header abandoned: {self._enc.decode(self._header)!r}")
                self._flush_header(events)
            self._header = []
        elif token in (CHANNEL, CONSTRAIN) or _is_ordinary(token):
            self._header.append(token)
            # Wait for whole UTF-8 characters, but not forever: bad bytes may never complete.
            n = len(self._header)
            if n > _MAX_HEADER_TOKENS and (
                self._decodes(self._header) or n > _MAX_HEADER_TOKENS + 8
            ):
                self._warn("header too long: treating it as content")
                self._open_message(self._header, events, separate=False)
                self._header = []
                self._state = _State.CONTENT
        else:
            self._warn(f"dropped {self._special(token)} inside a header")

    def _between(self, token: int, events: list[Event]) -> None:
        if token == START:
            if self._enc.decode(self._pending).strip():
                self._warn(f"dropped {self._enc.decode(self._pending)!r} before <|start|>")
            self._pending = []
            self._state = _State.HEADER
        elif token in (CHANNEL, CONSTRAIN):
            self._warn("<|start|> missing")
            self._header, self._pending = [*self._pending, token], []
            self._state = _State.HEADER
        elif token == MESSAGE:
            self._warn("<|start|> missing")
            self._open_message(self._pending, events, separate=True)
            self._pending = []
            self._state = _State.CONTENT
        elif token in _MESSAGE_ENDS:
            self._flush_pending(events, complete=True)
        elif _is_ordinary(token):
            self._pending.append(token)
            if not _could_be_role_part(self._enc.decode(self._pending)):
                self._open_unattributed(events)
        else:
            self._warn(f"dropped {self._special(token)} between messages")

    # messages -----------------------------------------------------------------------------

    def _parse_header(self, tokens: list[int]) -> tuple[_Header, Any]:
        """Header fields, and openai-harmony's parser left in content state when it agreed."""
        text = self._enc.decode(tokens)
        try:
            decoder = oh.StreamableParser(self._enc, oh.Role.ASSISTANT, strict=False)
            for token in tokens:
                decoder.process(token)
            decoder.process(MESSAGE)
            header = _Header(
                decoder.current_channel, decoder.current_recipient, decoder.current_content_type
            )
            if _plausible(header, text):
                return header, decoder
            self._warn(f"malformed header {text!r}")
        except Exception as err:  # any failure of the library means: parse it ourselves
            self._warn(f"malformed header {text!r}: {err}")
        header, role = _lenient_header(text)
        if role not in (None, "assistant"):
            self._warn(f"model wrote a {role} message; kept as assistant")
        return header, self._new_decoder()

    def _new_decoder(self) -> Any:
        try:
            decoder = oh.StreamableParser(self._enc, oh.Role.ASSISTANT, strict=False)
            decoder.process(MESSAGE)
            return decoder
        except Exception as err:
            self._warn(f"openai-harmony parser unavailable: {err}")
            return None

    def _open_message(self, header_tokens: list[int], events: list[Event], separate: bool) -> None:
        header, decoder = self._parse_header(header_tokens)
        if header.recipient == "all":  # harmony's "everyone", rendered as no recipient
            header.recipient = None
        self._open = _Open(header, decoder)
        if header.leftover:
            self._emit(header.leftover, events)
            self._open.separate = separate

    def _flush_header(self, events: list[Event], complete: bool = True) -> None:
        """A header that never got its <|message|>: keep its text, if any, as a message."""
        self._open_message(self._header, events, separate=True)
        assert self._open is not None
        if self._open.parts:
            self._close(events, complete)
        else:
            self._open = None

    def _open_unattributed(self, events: list[Event]) -> None:
        self._warn("text outside a message: treated as the answer")
        self._open = _Open(_Header(), self._new_decoder())
        pending, self._pending = self._pending, []
        self._state = _State.CONTENT
        for token in pending:
            self._emit(self._decode(token), events)

    def _flush_pending(self, events: list[Event], complete: bool) -> None:
        if self._enc.decode(self._pending).strip():
            self._open_unattributed(events)
            self._close(events, complete)
        self._pending = []
        self._state = _State.BETWEEN

    def _decode(self, token: int) -> str:
        assert self._open is not None
        if self._open.decoder is not None:
            try:
                self._open.decoder.process(token)
                delta = self._open.decoder.last_content_delta or ""
                self._open.decoded_chars += len(delta)
                return delta
            except Exception as err:
                self._warn(f"openai-harmony decoder failed: {err}")
                self._open.decoder = None
        if self._open.fallback is None:
            self._open.fallback = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # surrogateescape keeps the raw bytes of a token that ends inside a UTF-8 sequence
        raw = self._enc.decode([token], errors="surrogateescape").encode("utf-8", "surrogateescape")
        return self._open.fallback.decode(raw)

    def _emit(self, text: str, events: list[Event]) -> None:
        assert self._open is not None
        if not text:
            return
        if self._open.separate:
            text = " " + text
            self._open.separate = False
        self._open.parts.append(text)
        header = self._open.header
        if header.recipient is not None:
            return  # tool-call arguments are reported whole, in ToolCall
        channel = _normalise_channel(header.channel, None)
        if channel == "analysis":
            events.append(ReasoningDelta(text))
        elif channel == "commentary":
            events.append(CommentaryDelta(text))
        else:
            events.append(FinalDelta(text))

    def _close(self, events: list[Event], complete: bool) -> None:
        opened = self._open
        assert opened is not None
        opened.separate = False
        self._emit(self._flush_decoder(opened), events)
        header = opened.header
        channel = _normalise_channel(header.channel, header.recipient)
        content = "".join(opened.parts)
        self._messages.append(
            Message("assistant", content, channel, header.recipient, header.content_type)
        )
        if header.recipient is not None and complete:
            events.append(ToolCall(header.recipient, content, channel, header.content_type))
        events.append(MessageEnd(channel, header.recipient, incomplete=not complete))
        self._open = None

    def _flush_decoder(self, opened: _Open) -> str:
        """Bytes still held back at the end of a message (a cut multi-byte character)."""
        if opened.decoder is not None:
            try:
                opened.decoder.process_eos()
                return opened.decoder.messages[-1].content[0].text[opened.decoded_chars :]
            except Exception as err:
                self._warn(f"openai-harmony decoder failed at the end: {err}")
                return ""
        if opened.fallback is not None:
            return opened.fallback.decode(b"", final=True)
        return ""

    # helpers ------------------------------------------------------------------------------

    def _decodes(self, tokens: list[int]) -> bool:
        try:
            self._enc.decode_utf8(tokens)
            return True
        except Exception:
            return False

    def _special(self, token: int) -> str:
        try:
            return self._enc.decode([token])
        except Exception:
            return f"token {token}"

    def _warn(self, text: str) -> None:
        self.warnings.append(text)


def parse_reply(tokens: Iterable[int], encoding: oh.HarmonyEncoding) -> list[Message]:
    """The assistant messages in a complete reply (the tokens after `<|start|>assistant`)."""
    parser = ReplyParser(encoding)
    parser.feed_all(tokens)
    parser.finish()
    return parser.messages()
