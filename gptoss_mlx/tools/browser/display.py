"""What the model reads: a window of a page's numbered lines under a header, and find results.

    [3] Title (https://example.com/page)
    **viewing lines [0 - 41] of 120**

    L0: ...

Without `num_lines` the window holds about `view_tokens` (1,024) tokens, as in the reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from .page import Page

VIEW_TOKENS = 1024
CHARS_PER_TOKEN_ESTIMATE = 4
MAX_CHARS_PER_TOKEN = 128  # the longest o200k token, bounds how much text needs counting
FIND_MAX_RESULTS = 50
FIND_CONTEXT_LINES = 4

# Given text and n, the index of the character where token n starts (None: n tokens or fewer).
TokenOffset = Callable[[str, int], int | None]

_PARTIAL_START_LINK = re.compile(r"^[^【】]*】")
_PARTIAL_END_LINK = re.compile(r"【\d*(?:†(?P<content>[^†】]*)(?:†[^†】]*)?)?$")
_LINK = re.compile(r"【\d+†(?P<content>[^†】]+)(?:†[^†】]+)?】")


class UsageError(Exception):
    """A call the model got wrong; the message tells it what to do instead."""


def approximate_token_offset(text: str, n: int) -> int | None:
    """~4 characters a token (ollama's estimate), used when no o200k encoding is at hand."""
    end = n * CHARS_PER_TOKEN_ESTIMATE
    return end if len(text) > end else None


def harmony_token_offset(encoding: Any) -> TokenOffset:
    """Exact o200k counting with an openai_harmony encoding (what the session already loaded)."""

    def offset(text: str, n: int) -> int | None:
        tokens = encoding.encode(text, disallowed_special=())
        if len(tokens) <= n:
            return None
        return len(encoding.decode(tokens[:n]))

    return offset


def numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"L{first + i}: {line}" for i, line in enumerate(lines))


def window_end(
    lines: list[str], loc: int, num_lines: int, view_tokens: int, token_offset: TokenOffset
) -> int:
    """One past the last line to show from `loc`."""
    total = len(lines)
    if num_lines > 0:
        return min(loc + num_lines, total)
    text = numbered(lines[loc:], loc)
    if len(text) <= view_tokens:  # at least one character a token: it all fits
        return total
    end = token_offset(text[: (view_tokens + 1) * MAX_CHARS_PER_TOKEN], view_tokens)
    if end is None:
        return total
    return min(loc + text[:end].count("\n") + 1, total)


def show(
    page: Page,
    cursor: int,
    loc: int = 0,
    num_lines: int = -1,
    *,
    view_tokens: int = VIEW_TOKENS,
    token_offset: TokenOffset = approximate_token_offset,
) -> str:
    """The browsing display of `page` from line `loc`; UsageError past the end."""
    lines = page.lines()
    total = len(lines)
    if loc >= total:
        raise UsageError(
            f"Invalid location parameter: `{loc}`. Cannot exceed page maximum of {total - 1}."
        )
    end = window_end(lines, loc, num_lines, view_tokens, token_offset)
    header = f"[{cursor}] {page.title}"
    if page.url:
        header += f" ({_shorten(unquote(page.url))})"
    scrollbar = f"**viewing lines [{loc} - {end - 1}] of {total - 1}**"
    return f"{header}\n{scrollbar}\n\n{numbered(lines[loc:end], loc)}"


def _shorten(text: str, limit: int = 1024) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def strip_links(text: str) -> str:
    """`【3†the docs†x.org】` -> `the docs`, also for a link cut at the start or end of `text`."""
    text = _PARTIAL_START_LINK.sub("", text)
    text = _PARTIAL_END_LINK.sub(lambda m: m.group("content") or "", text)
    return _LINK.sub(lambda m: m.group("content"), text)


def find_page(pattern: str, page: Page) -> Page:
    """Case-insensitive matches of `pattern` over the wrapped lines (links reduced to their text),
    each with 4 lines of context under `# 【i†match at Ln】`; the result is a page of its own."""
    needle = pattern.lower()
    lines = strip_links("\n".join(page.lines())).split("\n")
    chunks: list[str] = []
    snippet_lines: dict[int, int] = {}
    i = 0
    while i < len(lines) and len(chunks) < FIND_MAX_RESULTS:
        if needle not in lines[i].lower():
            i += 1
            continue
        n = len(chunks)
        context = "\n".join(lines[i : i + FIND_CONTEXT_LINES])
        chunks.append(f"# 【{n}†match at L{i}】\n{context}")
        snippet_lines[n] = i
        i += FIND_CONTEXT_LINES
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return Page(
        url=f"{page.url}/find?pattern={quote(pattern)}",
        title=f"Find results for text: `{pattern}` in `{page.title}`",
        text=text,
        links={n: page.url for n in snippet_lines},
        kind="find",
        snippet_lines=snippet_lines,
    )
