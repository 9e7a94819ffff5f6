"""Search backends: SearXNG (self-hosted, private), Brave Search and Exa (API keys), and a keyless
DuckDuckGo HTML backend (best-effort: it scrapes a page made for people and may be refused).

A backend turns a query into SearchHits through the browser's Fetcher, so the offline switch,
the caps and the User-Agent apply to searches too. Its endpoint is trusted (a SearXNG on
localhost is the usual set-up), so private addresses are allowed for it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import lxml.html

from gptoss_mlx.errors import UserError

from .fetch import Fetcher, FetchError, Response
from .page import SearchHit

BACKENDS = ("searxng", "brave", "exa", "duckduckgo")


class BackendError(FetchError):
    """A search that failed; `str()` tells the model what to do, `reason` is for the user."""


class SearchBackend(ABC):
    name: str = ""
    label: str = ""  # for the user, e.g. "DuckDuckGo (best-effort)"
    source: str = "web"  # the `sources=` of the tool description

    @abstractmethod
    def search(self, query: str, topn: int, fetcher: Fetcher) -> list[SearchHit]:
        """Up to `topn` hits; raises BackendError (or FetchError) on failure."""

    def _call(
        self, fetcher: Fetcher, method: str, url: str, ok: tuple[int, ...] = (200,), **kwargs: Any
    ) -> Response:
        response = fetcher.request(method, url, allow_private=True, **kwargs)
        if response.status not in ok:
            raise self._status_error(response)
        if response.truncated:
            raise BackendError(
                f"The {self.label} answer was cut off ({response.truncated} cap). Try again.",
                f"{self.label}: answer too large or too slow",
            )
        return response

    def _status_error(self, response: Response) -> BackendError:
        status = response.status
        if status in (401, 403):
            hint = "the key or the server's settings refused the request"
            model = "Search is unavailable (the search service refused access). Answer without it."
        elif status == 429:
            hint = "rate-limited; wait a little"
            model = "Search is rate-limited right now. Wait before searching again, or answer without searching."
        elif status >= 500:
            hint = "the service failed"
            model = "The search service failed. Try the search again once, then answer without it."
        else:
            hint = "unexpected answer"
            model = "Search failed. Try a different query or answer without searching."
        return BackendError(
            f"{model} ({self.label}: HTTP {status})", f"{self.label}: HTTP {status}, {hint}"
        )

    def _json(self, response: Response) -> Any:
        try:
            return json.loads(response.body.decode(response.charset or "utf-8", "replace"))
        except ValueError as e:
            raise BackendError(
                f"The {self.label} answer was not JSON. Try again.",
                f"{self.label}: the answer was not JSON (is the URL right?)",
            ) from e


class SearxngBackend(SearchBackend):
    """GET {base_url}/search?q=...&format=json (needs `json` in the instance's search.formats)."""

    name, label = "searxng", "SearXNG"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/search")

    def search(self, query: str, topn: int, fetcher: Fetcher) -> list[SearchHit]:
        url = f"{self.base_url}/search?{urlencode({'q': query, 'format': 'json'})}"
        try:
            response = self._call(fetcher, "GET", url, headers={"Accept": "application/json"})
        except BackendError as e:
            if "HTTP 403" in e.reason:
                e.reason += " (enable `json` under search.formats in SearXNG's settings.yml)"
            raise
        results = self._json(response).get("results") or []
        return [
            SearchHit(r.get("title") or r["url"], r["url"], r.get("content") or "")
            for r in results[:topn]
            if isinstance(r, dict) and r.get("url")
        ]


class BraveBackend(SearchBackend):
    """Brave Search API: GET /res/v1/web/search with X-Subscription-Token; hits in web.results."""

    name, label = "brave", "Brave Search"

    def __init__(self, api_key: str, base_url: str = "https://api.search.brave.com") -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")

    def search(self, query: str, topn: int, fetcher: Fetcher) -> list[SearchHit]:
        params = urlencode({"q": query, "count": max(1, min(topn, 20))})
        response = self._call(
            fetcher,
            "GET",
            f"{self.base_url}/res/v1/web/search?{params}",
            headers={"Accept": "application/json", "X-Subscription-Token": self.api_key},
        )
        results = (self._json(response).get("web") or {}).get("results") or []
        return [
            SearchHit(r.get("title") or r["url"], r["url"], r.get("description") or "")
            for r in results[:topn]
            if isinstance(r, dict) and r.get("url")
        ]


class ExaBackend(SearchBackend):
    """Exa: POST /search with x-api-key; each result's summary, highlights or text is the snippet."""

    name, label = "exa", "Exa"

    def __init__(self, api_key: str, base_url: str = "https://api.exa.ai") -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")

    def search(self, query: str, topn: int, fetcher: Fetcher) -> list[SearchHit]:
        payload = {
            "query": query,
            "numResults": topn,
            "contents": {"text": {"maxCharacters": 400}},
        }
        response = self._call(
            fetcher,
            "POST",
            f"{self.base_url}/search",
            headers={"Content-Type": "application/json", "x-api-key": self.api_key},
            body=json.dumps(payload).encode(),
        )
        hits = []
        for r in (self._json(response).get("results") or [])[:topn]:
            if not isinstance(r, dict) or not r.get("url"):
                continue
            snippet = r.get("summary") or " ".join(r.get("highlights") or []) or r.get("text")
            hits.append(SearchHit(r.get("title") or r["url"], r["url"], snippet or ""))
        return hits


class DuckDuckGoBackend(SearchBackend):
    """Scrapes DuckDuckGo's HTML results page. Best-effort: no API, no promise, may be refused."""

    name, label = "duckduckgo", "DuckDuckGo (best-effort)"

    def __init__(self, base_url: str = "https://html.duckduckgo.com") -> None:
        self.base_url = base_url.rstrip("/")

    def search(self, query: str, topn: int, fetcher: Fetcher) -> list[SearchHit]:
        response = self._call(
            fetcher,
            "POST",
            f"{self.base_url}/html/",
            ok=(200, 202),  # 202: DuckDuckGo's "are you a bot" page, recognised below
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=urlencode({"q": query}).encode(),
        )
        root = lxml.html.fromstring(response.body.decode(response.charset or "utf-8", "replace"))
        hits = []
        for result in root.xpath("//div[contains(concat(' ', @class, ' '), ' result ')]"):
            anchors = result.xpath(".//a[contains(@class, 'result__a')]")
            if not anchors or "result--ad" in result.get("class", ""):
                continue
            url = _ddg_target(anchors[0].get("href", ""))
            if not url or "duckduckgo.com/y.js" in url:  # an ad
                continue
            snippets = result.xpath(".//*[contains(@class, 'result__snippet')]")
            snippet = snippets[0].text_content() if snippets else ""
            hits.append(SearchHit(anchors[0].text_content().strip(), url, snippet.strip()))
            if len(hits) >= topn:
                break
        if not hits and (response.status == 202 or b"anomaly" in response.body.lower()):
            raise BackendError(
                "Search is unavailable: DuckDuckGo refused the automated query. Answer without "
                "searching.",
                "DuckDuckGo refused the query (configure SearXNG, Brave or Exa for reliable search)",
            )
        return hits


def _ddg_target(href: str) -> str:
    """DuckDuckGo wraps result links as //duckduckgo.com/l/?uddg=<url>."""
    if href.startswith("//"):
        href = "https:" + href
    parts = urlsplit(href)
    if parts.path.startswith("/l/"):
        return parse_qs(parts.query).get("uddg", [""])[0]
    return href if parts.scheme in ("http", "https") else ""


def make_backend(
    name: str | None, *, searxng_url: str | None, env: Mapping[str, str]
) -> SearchBackend:
    """The backend called `name`, or with None the first configured of SearXNG (a URL), Brave
    (BRAVE_API_KEY), Exa (EXA_API_KEY), falling back to keyless DuckDuckGo."""
    brave_key = env.get("BRAVE_API_KEY", "").strip()
    exa_key = env.get("EXA_API_KEY", "").strip()
    choice = (name or "").strip().lower()
    if choice in ("ddg", "duckduckgo"):
        return DuckDuckGoBackend()
    if choice == "searxng" or (not choice and searxng_url):
        if not searxng_url:
            raise UserError(
                "the searxng search backend needs a URL: set GPTOSS_SEARXNG_URL (e.g. http://localhost:8888)"
            )
        return SearxngBackend(searxng_url)
    if choice == "brave" or (not choice and brave_key):
        if not brave_key:
            raise UserError("the brave search backend needs an API key: set BRAVE_API_KEY")
        return BraveBackend(brave_key)
    if choice == "exa" or (not choice and exa_key):
        if not exa_key:
            raise UserError("the exa search backend needs an API key: set EXA_API_KEY")
        return ExaBackend(exa_key)
    if not choice:
        return DuckDuckGoBackend()
    raise UserError(f"unknown search backend {name!r}: choose one of {', '.join(BACKENDS)}")
