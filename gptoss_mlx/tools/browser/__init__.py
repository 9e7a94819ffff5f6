"""The gpt-oss browser tool (`browser.search`, `browser.open`, `browser.find`), local and private:

- page.py: HTML, PDF and text to the numbered-link text the model reads;
- display.py: the numbered window, its header, and find results;
- fetch.py: safe fetching (http/https only, caps, redirects, no private addresses, offline);
- backends.py: SearXNG, Brave Search, Exa and DuckDuckGo (best-effort) search;
- tool.py: BrowserTool, the page stack;
- citations.py: `【cursor†Lx-Ly】` in answers to links, annotations or footnotes.
"""

from .backends import (
    BackendError,
    BraveBackend,
    DuckDuckGoBackend,
    ExaBackend,
    SearchBackend,
    SearxngBackend,
    make_backend,
)
from .citations import (
    CitationStream,
    Footnote,
    footnote_citations,
    format_footnotes,
    normalize_citations,
)
from .fetch import Fetcher, FetchError, OfflineError, is_offline
from .page import Page, SearchHit
from .tool import BrowserTool, PageRef

__all__ = [
    "BackendError",
    "BraveBackend",
    "BrowserTool",
    "CitationStream",
    "DuckDuckGoBackend",
    "ExaBackend",
    "FetchError",
    "Fetcher",
    "Footnote",
    "OfflineError",
    "Page",
    "PageRef",
    "SearchBackend",
    "SearchHit",
    "SearxngBackend",
    "footnote_citations",
    "format_footnotes",
    "is_offline",
    "make_backend",
    "normalize_citations",
]
