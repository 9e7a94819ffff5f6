"""End to end with the tiny harmony model: `gptoss run --browser` searches the stand-in web
(SearXNG on 127.0.0.1), opens the first result and answers citing it, the citation turned into
a Markdown link and, with --json, a url_citation annotation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.tiny_browser_pages import QUERY

from .browser_web import Web, serve
from .conftest import isolated_env, run_gptoss

QUESTION = "Search the web for the gptoss test page."
ANSWER = "The gptoss test page is titled Links and lists"


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with serve(local=True) as web:
        yield web


def gptoss(web: Web, model: Path, tmp: Path, *flags: str):
    env = isolated_env(
        tmp,
        GPTOSS_BROWSER_ALLOW_PRIVATE="1",
        GPTOSS_SEARXNG_URL=web.url("127.0.0.1", "/searxng"),
    )
    for key in ("GPTOSS_SEARCH", "GPTOSS_OFFLINE", "HF_HUB_OFFLINE", "BRAVE_API_KEY"):
        env.pop(key, None)
    args = ("run", "--browser", "--search", "searxng", "-m", str(model), "-t", "0", *flags)
    return run_gptoss(*args, QUESTION, env=env, timeout=180)


@pytest.mark.slow  # two runs of the CLI with the model: about 12 s
def test_run_browser_searches_opens_and_cites(web: Web, harmony_model: Path, tmp_path: Path):
    page = web.url("127.0.0.1", "/links.html")
    link = f" ([127.0.0.1:{web.port}]({page}))"
    r = gptoss(web, harmony_model, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{ANSWER}{link}.\n"
    searched = [p for _, p, _, _ in web.requests if p.startswith("/searxng/search")]
    assert len(searched) == 1 and "gptoss+test+page" in searched[0]
    assert any(p == "/links.html" for _, p, _, _ in web.requests)

    r = gptoss(web, harmony_model, tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["final"] == f"{ANSWER}{link}."
    [note] = out["annotations"]
    assert note["type"] == "url_citation" and note["url"] == page
    assert note["title"] == "Links and lists"
    assert (note["start_index"], note["end_index"]) == (len(ANSWER), len(ANSWER) + len(link))
    calls = [(c["recipient"], json.loads(c["arguments"])) for c in out["tool_calls"]]
    assert calls == [("browser.search", {"query": QUERY}), ("browser.open", {"id": 0})]
    assert out["tool_calls"][1]["error"] is False
    assert out["tool_calls"][1]["output"].startswith(f"[1] Links and lists ({page})")
