"""The streaming reply parser: typed events from token ids, tolerant of what the model really
writes (recipients in the role part, calls on analysis, malformed or over-long headers)."""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import openai_harmony as oh

from .headers import (
    Header,
    could_be_role_part,
    is_ordinary,
    lenient_header,
    normalise_channel,
    plausible_header,
)
from .messages import Message
from .tokens import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    MESSAGE,
    RETURN,
    START,
    STOP_TOKENS,
)

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
    header: Header
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
        self.reasoning_tokens = 0  # tokens of analysis messages, headers and ends included
        self._message_tokens = 0  # tokens since the last message closed

    # public -------------------------------------------------------------------------------

    def feed(self, token: int) -> list[Event]:
        events: list[Event] = []
        token = int(token)  # numpy / mlx scalars from the sampler
        self._message_tokens += 1
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
        if is_ordinary(token):
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
        elif token in (CHANNEL, CONSTRAIN) or is_ordinary(token):
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
        elif is_ordinary(token):
            self._pending.append(token)
            if not could_be_role_part(self._enc.decode(self._pending)):
                self._open_unattributed(events)
        else:
            self._warn(f"dropped {self._special(token)} between messages")

    # messages -----------------------------------------------------------------------------

    def _parse_header(self, tokens: list[int]) -> tuple[Header, Any]:
        """Header fields, and openai-harmony's parser left in content state when it agreed."""
        text = self._enc.decode(tokens)
        try:
            decoder = oh.StreamableParser(self._enc, oh.Role.ASSISTANT, strict=False)
            for token in tokens:
                decoder.process(token)
            decoder.process(MESSAGE)
            header = Header(
                decoder.current_channel, decoder.current_recipient, decoder.current_content_type
            )
            if plausible_header(header, text):
                return header, decoder
            self._warn(f"malformed header {text!r}")
        except Exception as err:  # any failure of the library means: parse it ourselves
            self._warn(f"malformed header {text!r}: {err}")
        header, role = lenient_header(text)
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
        self._open = _Open(Header(), self._new_decoder())
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
        channel = normalise_channel(header.channel, None)
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
        channel = normalise_channel(header.channel, header.recipient)
        if channel == "analysis":
            self.reasoning_tokens += self._message_tokens
        self._message_tokens = 0
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
