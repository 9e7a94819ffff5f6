"""`browser.search`, `browser.open` and `browser.find` over a page stack, as openai/gpt-oss's
SimpleBrowserTool: every call pushes a page and its index is the cursor the model cites."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..base import Tool, ToolResult
from .backends import SearchBackend, make_backend
from .display import (
    VIEW_TOKENS,
    TokenOffset,
    UsageError,
    approximate_token_offset,
    find_page,
    harmony_token_offset,
    show,
)
from .fetch import Fetcher, FetchError
from .page import Page, document_to_page, search_results_page

MAX_SEARCH_RESULTS = 20
FUNCTIONS = ("search", "open", "find")
_ACCEPT = "text/html,application/xhtml+xml,application/pdf;q=0.9,text/plain;q=0.8,*/*;q=0.5"


@dataclass(frozen=True)
class PageRef:
    """A page on the stack as citations need it."""

    cursor: int
    url: str
    title: str


class BrowserTool(Tool):
    """The gpt-oss browser. One instance per chat: its pages and cookies end with it."""

    name = "browser"
    needs_approval = False

    def __init__(
        self,
        backend: SearchBackend | None = None,
        *,
        fetcher: Fetcher | None = None,
        env: Mapping[str, str] | None = None,
        encoding: Any = None,
        view_tokens: int = VIEW_TOKENS,
        max_search_results: int = MAX_SEARCH_RESULTS,
    ) -> None:
        env = os.environ if env is None else env
        self.backend = backend or make_backend(
            env.get("GPTOSS_SEARCH") or None, searxng_url=env.get("GPTOSS_SEARXNG_URL"), env=env
        )
        self.fetcher = fetcher or Fetcher.from_env(env)
        self.token_offset: TokenOffset = (
            harmony_token_offset(encoding) if encoding is not None else approximate_token_offset
        )
        self.view_tokens = view_tokens
        self.max_search_results = max_search_results
        self._stack: list[Page] = []
        self._cache: dict[str, Page] = {}

    @property
    def source(self) -> str:
        return self.backend.source

    def pages(self) -> list[PageRef]:
        return [PageRef(i, p.url, p.title) for i, p in enumerate(self._stack)]

    def page_url(self, cursor: int) -> str | None:
        """The URL cited as `【cursor†...】`, or None (no such page, or a search page)."""
        if not 0 <= cursor < len(self._stack):
            return None
        page = self._stack[cursor]
        url = page.url.removeprefix("view-source:")
        if page.kind == "find":  # cite the page that was searched, not the results
            url = url.rsplit("/find?pattern=", 1)[0]
        return url or None

    def page_title(self, cursor: int) -> str | None:
        if not 0 <= cursor < len(self._stack):
            return None
        page = self._stack[cursor]
        searched = self._cache.get(self.page_url(cursor) or "") if page.kind == "find" else None
        return (searched or page).title

    def call(
        self, function: str, arguments: str, *, cancel: threading.Event | None = None
    ) -> ToolResult:
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            return _error(json.dumps({"error": "Invalid function arguments"}), "bad arguments")
        if function not in FUNCTIONS:
            return _error(
                json.dumps({"error": f"Unknown function: {function}"}), "unknown function"
            )
        handler: Callable[[dict[str, Any], threading.Event | None], ToolResult] = getattr(
            self, f"_{function}"
        )
        asked = {"action": function}
        for key in ("query", "pattern", "id"):
            if isinstance(args.get(key), str):
                asked["url" if key == "id" else key] = args[key]
        try:
            return handler(args, cancel)
        except UsageError as e:
            return _error(str(e), str(e).splitlines()[0][:120], asked)
        except FetchError as e:
            return _error(str(e), e.reason, asked)
        except Exception as e:  # untrusted pages must not crash the chat
            return _error(f"The browser failed: {type(e).__name__}: {e}", f"browser: {e}", asked)

    # -- the three functions ------------------------------------------------------------------

    def _search(self, args: dict[str, Any], cancel: threading.Event | None) -> ToolResult:
        query = args.get("query")
        if not isinstance(query, str) or not query.strip():
            raise UsageError('`search` needs a `query` string, e.g. {"query": "..."}.')
        try:
            hits = self.backend.search(query, self.max_search_results, self.fetcher)
        except FetchError as e:
            raise FetchError(f"Error during search for `{query}`: {e}", e.reason) from e
        page = search_results_page(query, hits)
        text = self._push_and_show(page, 0, -1)
        details = {"action": "search", "query": query, "title": page.title, "results": len(hits)}
        return ToolResult(text, summary=f"{len(hits)} results for {query}", details=details)

    def _open(self, args: dict[str, Any], cancel: threading.Event | None) -> ToolResult:
        link = args.get("id", -1)
        cursor = _int(args, "cursor", -1)
        loc = _int(args, "loc", -1)
        num_lines = _int(args, "num_lines", -1)
        view_source = bool(args.get("view_source", False))
        if isinstance(link, str) and link.strip().lstrip("-").isdigit():
            link = int(link)  # the model sometimes quotes a link id
        if isinstance(link, str):
            page = self._fetch(_as_url(link), view_source, refresh=True, cancel=cancel)
        elif isinstance(link, int) and not isinstance(link, bool):
            current = self._page(cursor)
            if link >= 0:
                if link not in current.links:
                    raise UsageError(f"Invalid link id `{link}`.")
                if loc < 0 and link in current.snippet_lines:
                    line = current.snippet_lines[link]
                    loc = line - 4 if line > 4 else line
                page = self._fetch(current.links[link], view_source, refresh=False, cancel=cancel)
            elif view_source:
                page = self._fetch(current.url, True, refresh=False, cancel=cancel)
            else:
                page = current  # scroll: the same page, pushed again
        else:
            raise UsageError(f"`id` should be a link number or a URL, not `{type(link).__name__}`.")
        text = self._push_and_show(page, max(loc, 0), num_lines)
        details = {"action": "open", "url": page.url, "title": page.title, "loc": max(loc, 0)}
        if page.truncated:
            details["truncated"] = page.truncated
        return ToolResult(text, summary=page.title or page.url, details=details)

    def _find(self, args: dict[str, Any], cancel: threading.Event | None) -> ToolResult:
        pattern = args.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise UsageError('`find` needs a `pattern` string, e.g. {"pattern": "..."}.')
        page = self._page(_int(args, "cursor", -1))
        if page.kind != "page":
            raise UsageError("Cannot run `find` on search results page or find results page")
        result = find_page(pattern, page)
        text = self._push_and_show(result, 0, -1)
        matches = len(result.snippet_lines)
        details = {"action": "find", "pattern": pattern, "url": page.url, "title": page.title}
        details["matches"] = matches
        return ToolResult(text, summary=f"{matches} matches for {pattern}", details=details)

    # -- helpers ------------------------------------------------------------------------------

    def _page(self, cursor: int) -> Page:
        if not self._stack:
            raise UsageError("No pages to access! Search or open a URL first.")
        if cursor == -1:
            return self._stack[-1]
        if not 0 <= cursor < len(self._stack):
            raise UsageError(
                f"Cursor `{cursor}` is out of range. "
                f"Available cursor indices: [0 - {len(self._stack) - 1}]."
            )
        return self._stack[cursor]

    def _push_and_show(self, page: Page, loc: int, num_lines: int) -> str:
        self._stack.append(page)
        try:
            return show(
                page,
                len(self._stack) - 1,
                loc,
                num_lines,
                view_tokens=self.view_tokens,
                token_offset=self.token_offset,
            )
        except UsageError:
            self._stack.pop()
            raise

    def _fetch(
        self, url: str, view_source: bool, *, refresh: bool, cancel: threading.Event | None
    ) -> Page:
        key = f"view-source:{url}" if view_source else url
        if not refresh and key in self._cache:
            return self._cache[key]
        try:
            response = self.fetcher.get(url, headers={"Accept": _ACCEPT}, cancel=cancel)
        except FetchError as e:
            raise FetchError(f"Error fetching URL `{url}`: {e}", e.reason) from e
        if response.status >= 400:
            raise FetchError(
                f"Error fetching URL `{url}`: the server answered HTTP {response.status}.",
                f"browser: {url} answered HTTP {response.status}",
            )
        try:
            page = document_to_page(
                response.body,
                response.content_type,
                response.charset,
                response.url,
                view_source=view_source,
            )
        except ValueError as e:
            note = " (only its first part was read)" if response.truncated else ""
            raise FetchError(f"Cannot display `{url}`{note}: {e}.", f"browser: {e}") from e
        if response.truncated:
            page.truncated = response.truncated
            page.text += "\n\n" + self._truncation_notice(response.truncated)
        self._cache[key] = self._cache[page.url] = page
        return page

    def _truncation_notice(self, why: str) -> str:
        if why == "size":
            size = self.fetcher.max_bytes / (1024 * 1024)
            return f"[Page truncated: only the first {size:g} MB of this page were read.]"
        return (
            f"[Page truncated: the page did not finish loading within "
            f"{self.fetcher.timeout:g} s; only what arrived is shown.]"
        )


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(?!\d)")


def _as_url(text: str) -> str:
    """A URL as given, or `https://` + a bare `example.com/page` (`file:`, `data:`... stay, to be
    refused by the fetcher)."""
    text = text.strip()
    return text if _SCHEME.match(text) else "https://" + text


def _int(args: dict[str, Any], key: str, default: int) -> int:
    value = args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UsageError(f"`{key}` should be an integer, not `{type(value).__name__}`")
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"`{key}` should be an integer, not `{value}`") from None


def _error(text: str, summary: str, details: dict[str, Any] | None = None) -> ToolResult:
    return ToolResult(
        text, error=True, summary=summary, details={**(details or {}), "error": summary}
    )
