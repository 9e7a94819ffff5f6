"""Message headers as the model really writes them: the channel, the recipient (in the role part or
after the channel) and the content type, read leniently."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .messages import CONSTRAIN_TEXT, ROLES
from .tokens import (
    FIRST_SPECIAL,
)


@dataclass
class Header:
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    leftover: str = ""  # header text that is no header field: it becomes content


_CHANNEL_RE = re.compile(r"<\|channel\|>\s*([^\s<]*)")
_RECIPIENT_RE = re.compile(r"(?<![^\s>])to=([^\s<]+)")
_CONSTRAIN_RE = re.compile(r"<\|constrain\|>([^\s<]*)")
_BARE_CONTENT_TYPES = ("json", "code")


def lenient_header(text: str) -> tuple[Header, str | None]:
    """Best-effort header fields from header text; also returns the role word if there is one."""
    header = Header()

    def take_channel(m: re.Match[str]) -> str:
        if m.group(1):
            header.channel = m.group(1)  # the last one wins
        return " "

    rest = _CHANNEL_RE.sub(take_channel, text)
    if m := _RECIPIENT_RE.search(rest):
        header.recipient = m.group(1)
        rest = f"{rest[: m.start()]} {rest[m.end() :]}"
    if m := _CONSTRAIN_RE.search(rest):
        header.content_type = CONSTRAIN_TEXT + m.group(1)
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


def plausible_header(header: Header, text: str) -> bool:
    """Whether openai-harmony's reading of a header is believable. It turns any lone word into
    a recipient and an unknown role into a tool author; we only accept `to=` recipients."""
    if header.recipient is not None and (
        f"to={header.recipient}" not in text or "<|" in header.recipient
    ):
        return False
    if header.content_type is not None:
        bare = header.content_type.removeprefix(CONSTRAIN_TEXT)
        if "<|" in bare or bare not in text:
            return False
    return True


def normalise_channel(channel: str | None, recipient: str | None) -> str:
    if channel:
        return channel
    if recipient is None:
        return "final"
    return "commentary" if recipient.startswith("functions.") else "analysis"


def could_be_role_part(text: str) -> bool:
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


def is_ordinary(token: int) -> bool:
    return 0 <= token < FIRST_SPECIAL
