"""What the browser shows the tiny harmony model in its browsing example, rendered for real.

The stand-in web of the tests (tests/browser_web.py, its search results pointing at 127.0.0.1)
is started here and gptoss's own BrowserTool searches it and opens the first result, so the
training prompts hold exactly what `gptoss run --browser` hands the model. The server's port,
which differs from run to run, is replaced by `PORT` for the trainer to fill in.
"""

from __future__ import annotations

import json
from typing import Any

from gptoss_mlx.tools.browser import BrowserTool, Fetcher, SearxngBackend
from tests.browser_web import serve

PORT = "\x00port\x00"
QUERY = "gptoss test page"
# The stand-in web's sources, for the trainer's cache key (with the browser's rendering code).
SOURCES = (
    "scripts/tiny_browser_pages.py",
    "tests/browser_web.py",
    "tests/golden/browser/links.html",
    "gptoss_mlx/tools/browser/tool.py",
    "gptoss_mlx/tools/browser/page.py",
    "gptoss_mlx/tools/browser/display.py",
    "gptoss_mlx/tools/browser/backends.py",
)


def browser_pages(encoding: Any) -> tuple[str, str]:
    """The results page of `search(QUERY)` and the page `open(id=0)` shows, with `PORT`."""
    with serve(local=True) as web:
        tool = BrowserTool(
            SearxngBackend(web.url("127.0.0.1", "/searxng")),
            fetcher=Fetcher(allow_private=True),
            encoding=encoding,
        )
        texts = []
        for function, args in (("search", {"query": QUERY}), ("open", {"id": 0})):
            result = tool.call(function, json.dumps(args))
            if result.error:
                raise RuntimeError(f"the stand-in web failed: {result.text}")
            texts.append(result.text.replace(f"127.0.0.1:{web.port}", PORT))
    if any(str(web.port) in t for t in texts) or "Links and lists" not in texts[1]:
        raise RuntimeError(f"unexpected browser pages: {texts}")
    return texts[0], texts[1]


def with_port(text: str, port: int) -> str:
    return text.replace(PORT, f"127.0.0.1:{port}")
