"""Citations in the model's answer (`【6†L9-L11】`: cursor 6, lines 9 to 11) turned into links.

- `normalize_citations`: Markdown ` ([domain](url))` plus OpenAI `url_citation` annotations with
  start/end indices into the new text (for `run` and `run --json`);
- `footnote_citations`: numbered markers `[1]` plus the footnotes (title, URL) for the chat;
- `CitationStream`: either style over streamed text, holding back a citation still being written.

A citation whose cursor is no page with a URL (a search results page, a cursor never shown) is
left as the model wrote it, as the reference does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

CITATION = re.compile(r"【(?P<cursor>\d+)†(?P<content>[^†】]+)(?:†[^†】]+)?】")
PARTIAL_CITATION = re.compile(r"【\d*(?:†[^†】]*(?:†[^†】]*)?)?$")  # an unfinished one at the end
MAX_HELD = 256  # past this a "citation" is just text with a bracket in it


class CitationSource(Protocol):
    """What a citation needs from the browser (BrowserTool has these)."""

    def page_url(self, cursor: int) -> str | None: ...

    def page_title(self, cursor: int) -> str | None: ...


@dataclass(frozen=True)
class Footnote:
    number: int
    title: str
    url: str


def _domain(url: str) -> str:
    return urlsplit(url).netloc or url


def _markdown_url(url: str) -> str:
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


class _Rewriter:
    """Rewrites citations chunk by chunk, keeping indices and footnote numbers across chunks."""

    def __init__(self, source: CitationSource, style: str) -> None:
        if style not in ("markdown", "footnotes"):
            raise ValueError(f"unknown citation style {style!r}")
        self.source = source
        self.style = style
        self.annotations: list[dict[str, Any]] = []
        self.footnotes: list[Footnote] = []
        self._numbers: dict[str, int] = {}
        self._emitted = 0  # characters of output so far
        self._last = ""  # the last character of output so far

    def rewrite(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        for m in CITATION.finditer(text):
            self._append(out, text[pos : m.start()])
            cursor = int(m.group("cursor"))
            url = self.source.page_url(cursor)
            if url is None:
                self._append(out, m.group(0))
            else:
                title = self.source.page_title(cursor) or _domain(url)
                self._cite(out, url, title)
            pos = m.end()
        self._append(out, text[pos:])
        return "".join(out)

    def _append(self, out: list[str], piece: str) -> None:
        if piece:
            out.append(piece)
            self._emitted += len(piece)
            self._last = piece[-1]

    def _cite(self, out: list[str], url: str, title: str) -> None:
        if self.style == "footnotes":
            number = self._numbers.get(url)
            if number is None:
                number = self._numbers[url] = len(self._numbers) + 1
                self.footnotes.append(Footnote(number, title, url))
            self._append(out, f"[{number}]")
            return
        space = "" if not self._last or self._last.isspace() else " "
        replacement = f"{space}([{_domain(url)}]({_markdown_url(url)}))"
        start = self._emitted
        self._append(out, replacement)
        self.annotations.append(
            {
                "type": "url_citation",
                "start_index": start,
                "end_index": start + len(replacement),
                "url": url,
                "title": title,
            }
        )


def normalize_citations(text: str, browser: CitationSource) -> tuple[str, list[dict[str, Any]]]:
    """`text` with each citation as ` ([domain](url))`, and its `url_citation` annotations
    (`start_index`/`end_index` in characters of the returned text)."""
    rewriter = _Rewriter(browser, "markdown")
    return rewriter.rewrite(text), rewriter.annotations


def footnote_citations(text: str, browser: CitationSource) -> tuple[str, list[Footnote]]:
    """`text` with each citation as `[n]` (one number per URL) and the footnotes in order."""
    rewriter = _Rewriter(browser, "footnotes")
    return rewriter.rewrite(text), rewriter.footnotes


def format_footnotes(footnotes: list[Footnote]) -> str:
    """`[1] Title - https://...` lines, for below an answer."""
    return "\n".join(f"[{f.number}] {f.title} - {f.url}" for f in footnotes)


class CitationStream:
    """Rewrites streamed text as it comes. `feed` returns what can be shown now; text from an
    unfinished `【...` on is held back until it closes (or clearly is no citation)."""

    def __init__(self, browser: CitationSource, *, style: str = "footnotes") -> None:
        self._rewriter = _Rewriter(browser, style)
        self._held = ""

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return self._rewriter.annotations

    @property
    def footnotes(self) -> list[Footnote]:
        return self._rewriter.footnotes

    def feed(self, delta: str) -> str:
        text = self._held + delta
        partial = PARTIAL_CITATION.search(text)
        if partial is not None and len(text) - partial.start() <= MAX_HELD:
            text, self._held = text[: partial.start()], text[partial.start() :]
        else:
            self._held = ""
        return self._rewriter.rewrite(text)

    def finish(self) -> str:
        """Whatever is still held, rewritten; call once at the end of the message."""
        text, self._held = self._held, ""
        return self._rewriter.rewrite(text)
