"""BrowserTool end to end against the local stand-in web and search APIs: the page stack,
search/open/find/scroll, the backends (and their failures), errors the model can act on."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from gptoss_mlx.errors import UserError
from gptoss_mlx.tools.base import ToolResult
from gptoss_mlx.tools.browser import (
    BraveBackend,
    BrowserTool,
    DuckDuckGoBackend,
    ExaBackend,
    Fetcher,
    SearchBackend,
    SearxngBackend,
    make_backend,
    normalize_citations,
)

from .browser_web import BRAVE_KEY, EXA_KEY, Web, serve
from .test_browser_fetch import fake_dns


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with serve() as web:
        yield web


def browser(web: Web, backend: SearchBackend | None = None, **fetch: object) -> BrowserTool:
    fetcher = Fetcher(allow_private=True, resolver=fake_dns, **fetch)  # type: ignore[arg-type]
    backend = backend or SearxngBackend(web.url("127.0.0.1", "/searxng"))
    return BrowserTool(backend, fetcher=fetcher, env={})


def call(tool: BrowserTool, function: str, **args: object) -> ToolResult:
    return tool.call(function, json.dumps(args))


def header(result: ToolResult) -> list[str]:
    return result.text.split("\n")[:2]


def test_search_open_by_id_find_and_scroll(web: Web) -> None:
    tool = browser(web)
    results = call(tool, "search", query="plain notes", topn=3)
    assert not results.error, results.text
    assert header(results) == ["[0] plain notes", "**viewing lines [0 - 6] of 6**"]
    assert "L2: # Search Results" in results.text
    assert (
        f"L4:   * 【0†Links and lists†docs.example.org:{web.port}】 A page of links."
        in results.text
    )
    assert "【1†Plain notes†" in results.text and "Some plain notes & more." in results.text
    assert results.details == {
        "action": "search",
        "query": "plain notes",
        "title": "plain notes",
        "results": 3,
    }

    page = call(tool, "open", id=0)  # link 0 of the search page (cursor 0)
    assert header(page)[0] == f"[1] Links and lists (http://docs.example.org:{web.port}/links.html)"
    assert "L4: Read the 【2†plain notes】" in page.text
    assert page.details["action"] == "open" and page.details["title"] == "Links and lists"

    notes = call(tool, "open", id=2)  # link 2 on the current page (cursor 1): notes.txt
    assert header(notes)[0] == f"[2] notes.txt (http://docs.example.org:{web.port}/notes.txt)"
    assert "The answer is 42 and it is 〖boxed〗." in notes.text

    found = call(tool, "find", pattern="ANSWER")
    assert header(found)[0].startswith("[3] Find results for text: `ANSWER` in `notes.txt`")
    assert "# 【0†match at L3】" in found.text and found.details["matches"] == 1

    back = call(tool, "open", cursor=1, id=1)  # link 1 on page 1: the article
    assert header(back)[0].startswith("[4] Mixture of Experts — A Practical Guide (")

    scrolled = call(tool, "open", cursor=4, loc=10, num_lines=3)
    assert header(scrolled) == [
        "[5] Mixture of Experts — A Practical Guide "
        f"(http://docs.example.org:{web.port}/article.html)",
        "**viewing lines [10 - 12] of 57**",
    ]
    assert [line.split(":")[0] for line in scrolled.text.split("\n")[3:]] == ["L10", "L11", "L12"]
    assert [p.cursor for p in tool.pages()] == [0, 1, 2, 3, 4, 5]
    assert tool.page_url(0) is None and tool.page_url(4) == tool.page_url(5)
    assert tool.page_url(2) == f"http://docs.example.org:{web.port}/notes.txt"
    assert tool.page_url(3) == tool.page_url(2) and tool.page_url(6) is None
    assert tool.page_title(1) == "Links and lists"
    answer, notes = normalize_citations("Notes say 42【3†L0-L1】; see【0†L4】.", tool)
    host = f"docs.example.org:{web.port}"
    assert answer == f"Notes say 42 ([{host}](http://{host}/notes.txt)); see【0†L4】."
    assert notes[0]["title"] == "notes.txt" and notes[0]["start_index"] == len("Notes say 42")


def test_open_a_url_a_pdf_and_view_source(web: Web) -> None:
    tool = browser(web)
    pdf = call(tool, "open", id=web.url("files.example.net", "/doc.pdf"))
    assert header(pdf)[0] == f"[0] Test PDF (http://files.example.net:{web.port}/doc.pdf)"
    assert "Revenue grew by 12 percent." in pdf.text
    source = call(tool, "open", id=web.url("docs.example.org", "/links.html"), view_source=True)
    assert "L0: <!DOCTYPE html>" in source.text and "[1] Source of links.html" in source.text
    from_find = call(tool, "find", pattern="revenue", cursor=0)
    opened = call(tool, "open", id=0)  # a find result opens its page at the match
    assert "Revenue grew" in opened.text and from_find.details["matches"] == 1


def test_find_result_opens_four_lines_above_the_match(web: Web) -> None:
    tool = browser(web)
    call(tool, "open", id=web.url("docs.example.org", "/long.html"))
    found = call(tool, "find", pattern="needle")
    line = int(re.search(r"# 【1†match at L(\d+)】", found.text).group(1))
    opened = call(tool, "open", id=1)
    assert header(opened)[1].startswith(f"**viewing lines [{line - 4} - ")


def test_errors_come_back_as_text(web: Web) -> None:
    tool = browser(web)
    assert call(tool, "open", id=3).text == "No pages to access! Search or open a URL first."
    bad = tool.call("search", "{not json")
    assert bad.error and bad.text == '{"error": "Invalid function arguments"}'
    assert tool.call("search", "[1, 2]").text == '{"error": "Invalid function arguments"}'
    assert tool.call("browse", "{}").text == '{"error": "Unknown function: browse"}'
    assert call(tool, "search").text.startswith("`search` needs a `query` string")
    call(tool, "open", id=web.url("docs.example.org", "/links.html"))
    assert call(tool, "open", id=99).text == "Invalid link id `99`."
    out_of_range = call(tool, "open", cursor=7, id=0)
    assert out_of_range.text == "Cursor `7` is out of range. Available cursor indices: [0 - 0]."
    assert call(tool, "open", cursor="x").text == "`cursor` should be an integer, not `x`"
    assert (
        call(tool, "open", loc=500).text
        == "Invalid location parameter: `500`. Cannot exceed page maximum of 17."
    )
    assert len(tool.pages()) == 1  # failed calls leave the stack as it was
    missing = call(tool, "open", id=web.url("docs.example.org", "/missing"))
    assert missing.error and "HTTP 404" in missing.text
    blob = call(tool, "open", id=web.url("docs.example.org", "/blob"))
    assert "application/octet-stream" in blob.text
    local_file = call(tool, "open", id="file:///etc/passwd")
    assert local_file.error and "only http and https" in local_file.text
    assert (
        local_file.details["action"] == "open" and local_file.details["url"] == "file:///etc/passwd"
    )
    search_page = browser(web)
    call(search_page, "search", query="x")
    assert "Cannot run `find` on search results page" in call(search_page, "find", pattern="x").text


def test_refused_private_page_and_offline(web: Web) -> None:
    strict = BrowserTool(
        SearxngBackend(web.url("127.0.0.1", "/searxng")),
        fetcher=Fetcher(resolver=fake_dns),
        env={},
    )
    call(strict, "search", query="q")  # the configured search endpoint may be local
    refused = call(strict, "open", id=0)
    assert refused.error and "local or private network address" in refused.text
    assert "GPTOSS_BROWSER_ALLOW_PRIVATE" in refused.summary
    offline = BrowserTool(
        env={"GPTOSS_OFFLINE": "1", "GPTOSS_SEARXNG_URL": web.url("127.0.0.1", "/searxng")}
    )
    before = len(web.requests)
    result = call(offline, "search", query="anything")
    assert result.error and "The web is unavailable" in result.text and "offline" in result.summary
    assert len(web.requests) == before


def test_truncated_pages_say_so(web: Web) -> None:
    tool = browser(web, timeout=0.5)
    slow = call(tool, "open", id=web.url("docs.example.org", "/slow"))
    assert slow.details["truncated"] == "time"
    assert "The start arrives." in slow.text
    assert "[Page truncated: the page did not finish loading within 0.5 s" in slow.text
    big = browser(web)
    first = call(big, "open", id=web.url("docs.example.org", "/big"))
    assert first.details["truncated"] == "size"
    last = int(re.search(r"of (\d+)\*\*", first.text).group(1))
    end = call(big, "open", loc=last)
    assert end.text.endswith(
        f"L{last}: [Page truncated: only the first 5 MB of this page were read.]"
    )


@pytest.mark.parametrize("kind", ["searxng", "brave", "exa", "duckduckgo"])
def test_each_backend_gives_the_same_results_page(web: Web, kind: str) -> None:
    backend = {
        "searxng": lambda: SearxngBackend(web.url("127.0.0.1", "/searxng/")),
        "brave": lambda: BraveBackend(BRAVE_KEY, base_url=web.url("127.0.0.1", "/brave")),
        "exa": lambda: ExaBackend(EXA_KEY, base_url=web.url("127.0.0.1", "/exa")),
        "duckduckgo": lambda: DuckDuckGoBackend(base_url=web.url("127.0.0.1", "/ddg")),
    }[kind]()
    tool = browser(web, backend)
    result = call(tool, "search", query="notes")
    assert not result.error, result.text
    titles = re.findall(r"【\d+†([^†]+)†", result.text)
    assert titles == ["Links and lists", "Plain notes", "A PDF"]
    assert tool._stack[0].links[2] == web.url("files.example.net", "/doc.pdf")
    method, path, headers, body = web.requests[-1]
    if kind == "exa":
        assert method == "POST" and json.loads(body)["query"] == "notes"
    if kind == "searxng":
        assert "format=json" in path and "q=notes" in path


@pytest.mark.parametrize("status", [401, 429, 500])
@pytest.mark.parametrize("kind", ["searxng", "brave", "exa"])
def test_backend_failures_are_text_for_the_model_and_a_reason(
    web: Web, kind: str, status: int
) -> None:
    base = web.url("127.0.0.1", f"/fail{status}")
    backend = {
        "searxng": lambda: SearxngBackend(base),
        "brave": lambda: BraveBackend("k", base_url=base),
        "exa": lambda: ExaBackend("k", base_url=base),
    }[kind]()
    result = call(browser(web, backend), "search", query="q")
    assert result.error and result.text.startswith("Error during search for `q`: ")
    assert f"HTTP {status}" in result.text and f"HTTP {status}" in result.summary
    expected = {401: "refused access", 429: "rate-limited", 500: "failed"}[status]
    assert expected in result.text
    assert "\n" not in result.summary


def test_a_wrong_brave_key_is_a_401(web: Web) -> None:
    backend = BraveBackend("wrong", base_url=web.url("127.0.0.1", "/brave"))
    result = call(browser(web, backend), "search", query="q")
    assert result.error and "Brave Search: HTTP 401" in result.summary


def test_make_backend_picks_by_name_then_configuration() -> None:
    assert isinstance(make_backend(None, searxng_url=None, env={}), DuckDuckGoBackend)
    assert make_backend(None, searxng_url=None, env={}).label == "DuckDuckGo (best-effort)"
    searx = make_backend(None, searxng_url="http://localhost:8888/", env={"BRAVE_API_KEY": "b"})
    assert isinstance(searx, SearxngBackend) and searx.base_url == "http://localhost:8888"
    brave = make_backend(None, searxng_url=None, env={"BRAVE_API_KEY": "b", "EXA_API_KEY": "e"})
    assert isinstance(brave, BraveBackend) and brave.api_key == "b"
    assert isinstance(make_backend(None, searxng_url=None, env={"EXA_API_KEY": "e"}), ExaBackend)
    assert isinstance(make_backend("ddg", searxng_url="http://x", env={}), DuckDuckGoBackend)
    assert isinstance(make_backend("Exa", searxng_url=None, env={"EXA_API_KEY": "e"}), ExaBackend)
    for name, message in [
        ("brave", "BRAVE_API_KEY"),
        ("exa", "EXA_API_KEY"),
        ("searxng", "GPTOSS_SEARXNG_URL"),
        ("google", "choose one of"),
    ]:
        with pytest.raises(UserError, match=message):
            make_backend(name, searxng_url=None, env={})


def test_duckduckgo_refusal_is_explained(web: Web) -> None:
    backend = DuckDuckGoBackend(base_url=web.url("127.0.0.1", "/ddg-blocked"))
    result = call(browser(web, backend), "search", query="q")
    assert result.error and "DuckDuckGo refused" in result.text
    assert "configure SearXNG, Brave or Exa" in result.summary


def test_scheme_less_urls_get_https_and_others_are_refused(web: Web) -> None:
    tool = browser(web)
    bare = call(tool, "open", id=f"docs.example.org:{web.port}/links.html")
    # https to a plain-HTTP stand-in fails, which shows the scheme that was added
    assert bare.error and f"`https://docs.example.org:{web.port}/links.html`" in bare.text
    for url in ("javascript:alert(1)", "data:text/html,<b>x</b>", "mailto:a@b.c"):
        refused = call(tool, "open", id=url)
        assert refused.error and "only http and https" in refused.text, url
    quoted = call(tool, "open", id=web.url("docs.example.org", "/links.html"))
    assert "【2†plain notes】" in quoted.text
    assert "notes.txt" in call(tool, "open", id="2").text  # a quoted link id is still an id


def test_a_cancelled_fetch_stops(web: Web) -> None:
    import threading

    cancel = threading.Event()
    cancel.set()
    result = browser(web).call(
        "open", json.dumps({"id": web.url("docs.example.org", "/big")}), cancel=cancel
    )
    assert result.error and "cancelled" in result.text
