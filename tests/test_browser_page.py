"""What the model reads: HTML/PDF/text rendering against stored goldens, the window, find.

Goldens live in tests/golden/browser/<name>.txt (display, then the link map); rewrite them with
GPTOSS_UPDATE_GOLDEN=1 after a deliberate change, and read the diff.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from gptoss_mlx.tools.browser.display import (
    UsageError,
    approximate_token_offset,
    find_page,
    harmony_token_offset,
    show,
    strip_links,
)
from gptoss_mlx.tools.browser.page import (
    Page,
    SearchHit,
    document_to_page,
    pdf_to_page,
    process_html,
    search_results_page,
    wrap_lines,
)

from .browser_web import GOLDEN, minimal_pdf

BASE = "https://docs.example.org/"


def _golden_text(page: Page, display: str) -> str:
    links = "\n".join(f"{i} {url}" for i, url in sorted(page.links.items()))
    return f"{display}\n--- links\n{links}\n"


def _check_golden(name: str, actual: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("GPTOSS_UPDATE_GOLDEN") == "1":
        path.write_text(actual, encoding="utf-8")
    assert path.is_file(), f"missing golden {path}; run with GPTOSS_UPDATE_GOLDEN=1"
    assert actual == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["links", "article", "brackets"])
def test_html_pages_render_as_the_goldens(name: str) -> None:
    html = (GOLDEN / f"{name}.html").read_text(encoding="utf-8")
    page = process_html(html, f"{BASE}{name}.html")
    _check_golden(name, _golden_text(page, show(page, 0)))


def test_search_results_page_renders_as_the_golden() -> None:
    hits = [
        SearchHit(
            "Mixture of experts - Wikipedia",
            "https://en.wikipedia.org/wiki/MoE",
            "A <b>mixture</b> of experts &amp; routers.",
        ),
        SearchHit(
            "gpt-oss model card",
            "https://arxiv.org/abs/2508.10925",
            "We introduce gpt-oss-120b and gpt-oss-20b, two open-weight reasoning models that push the frontier.",
        ),
        SearchHit("Guide", "https://docs.example.org/guide", ""),
    ]
    page = search_results_page("mixture of experts", hits)
    display = show(page, 2)
    lines = display.split("\n")
    assert lines[0] == "[2] mixture of experts"  # a search page has no URL in its header
    assert lines[3:7] == ["L0: ", "L1: URL: ", "L2: # Search Results", "L3: "]
    assert lines[7].startswith(
        "L4:   * 【0†Mixture of experts - Wikipedia†en.wikipedia.org】 A mixture"
    )
    assert page.links[1] == "https://ar5iv.org/abs/2508.10925"
    _check_golden("search", _golden_text(page, display))


def test_special_brackets_never_pose_as_links() -> None:
    page = process_html((GOLDEN / "brackets.html").read_text(encoding="utf-8"), BASE + "b.html")
    assert "【0†fake link】" not in page.text and "〖0†fake link〗" in page.text
    assert page.text.count("【") == 1 and page.links == {0: BASE + "links.html"}
    text = document_to_page("cite 【1†L2】 here".encode(), "text/plain", None, BASE + "t.txt").text
    assert text == "cite 〖1†L2〗 here"


def test_lines_wrap_at_80_columns_keeping_whitespace() -> None:
    line = "word " * 40
    wrapped = wrap_lines(line + "\n\n  indented")
    assert all(len(x) <= 80 for x in wrapped)
    assert "".join(wrapped[:-2]) == line and wrapped[-2:] == ["", "  indented"]


def test_window_is_about_1024_tokens_and_scrolls() -> None:
    page = process_html((GOLDEN / "long.html").read_text(encoding="utf-8"), BASE + "long.html")
    total = len(page.lines())
    first = show(page, 0, token_offset=approximate_token_offset)
    head = first.split("\n")[1]
    assert head.startswith("**viewing lines [0 - ") and head.endswith(f"] of {total - 1}**")
    end = int(head.split(" - ")[1].split("]")[0])
    body = first.split("\n\n", 1)[1]
    assert 1024 * 4 - 100 <= len(body) <= 1024 * 4 + 200  # ~4 characters a token
    assert 0 < end < total - 1
    later = show(page, 0, end + 1, num_lines=5)
    assert later.split("\n")[1] == f"**viewing lines [{end + 1} - {end + 5}] of {total - 1}**"
    assert later.split("\n")[3].startswith(f"L{end + 1}: ")
    assert (
        show(page, 0, total - 1).split("\n")[1]
        == f"**viewing lines [{total - 1} - {total - 1}] of {total - 1}**"
    )
    with pytest.raises(UsageError, match=f"Cannot exceed page maximum of {total - 1}"):
        show(page, 0, total)


def test_window_counts_o200k_tokens_with_a_harmony_encoding() -> None:
    from gptoss_mlx import harmony

    from .golden import make_goldens

    with tempfile.TemporaryDirectory() as tmp:
        encoding = harmony.load_encoding(make_goldens.o200k_encodings_dir(Path(tmp)))
    page = process_html((GOLDEN / "long.html").read_text(encoding="utf-8"), BASE + "long.html")
    display = show(page, 0, token_offset=harmony_token_offset(encoding))
    body = display.split("\n\n", 1)[1]
    n = len(encoding.encode(body, disallowed_special=()))
    # the window ends on the line holding token 1024 (rounded up to whole lines)
    assert 1024 <= n <= 1024 + 40
    short = body.rsplit("\n", 1)[0]
    assert len(encoding.encode(short, disallowed_special=())) < 1024


def test_find_is_case_insensitive_with_four_lines_of_context() -> None:
    page = process_html((GOLDEN / "long.html").read_text(encoding="utf-8"), BASE + "long.html")
    result = find_page("NEEDLE", page)
    lines = page.lines()
    hits = [i for i, line in enumerate(lines) if "needle" in line.lower()]
    assert len(hits) == 2 and result.kind == "find"
    first, second = (
        f"# 【{n}†match at L{h}】\n" + "\n".join(lines[h : h + 4]) for n, h in enumerate(hits)
    )
    assert result.text == f"{first}\n\n{second}"
    assert result.snippet_lines == {0: hits[0], 1: hits[1]}
    assert result.title == f"Find results for text: `NEEDLE` in `{page.title}`"
    assert find_page("absent words", page).text == "No `find` results for pattern: `absent words`"


def test_find_matches_link_text_not_link_markup() -> None:
    page = process_html((GOLDEN / "links.html").read_text(encoding="utf-8"), BASE + "links.html")
    result = find_page("plain notes", page)
    assert "# 【0†match at L4】\nRead the plain notes, the long article" in result.text
    assert find_page("†", page).text.startswith("No `find` results")
    assert strip_links("end 【3†cut") == "end cut" and strip_links("x】 after") == " after"


def test_pdf_text_and_title() -> None:
    page = pdf_to_page(
        minimal_pdf(["Quarterly report", "Revenue grew by 12 percent."]), BASE + "q.pdf"
    )
    assert page.title == "Test PDF"
    assert "Quarterly report" in page.text and "Revenue grew by 12 percent." in page.text
    sniffed = document_to_page(minimal_pdf(["Sniffed"]), "application/octet-stream", None, "u")
    assert "Sniffed" in sniffed.text
    with pytest.raises(ValueError, match="PDF could not be read"):
        pdf_to_page(b"%PDF-1.4\nbroken", BASE + "bad.pdf")


def test_plain_text_json_and_unsupported_types() -> None:
    page = document_to_page(b"line one\r\nline two\n", "text/plain", None, BASE + "a/notes.txt")
    assert page.title == "notes.txt" and page.lines() == ["line one", "line two"]
    assert (
        "caf\u00e9" in document_to_page("café".encode("latin-1"), "text/plain", "latin-1", "u").text
    )
    assert document_to_page(b'{"a": 1}', "application/json", None, "u").text == '{"a": 1}'
    with pytest.raises(ValueError, match="image/png"):
        document_to_page(b"\x89PNG", "image/png", None, "u")
    source = document_to_page(b"<p>Hi</p>", "text/html", None, BASE, view_source=True)
    assert source.text == "<p>Hi</p>" and source.url == "view-source:" + BASE


def test_xhtml_with_an_encoding_declaration_and_empty_documents() -> None:
    xhtml = '<?xml version="1.0" encoding="utf-8"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><head><title>X</title></head><body><p>Körper</p></body></html>'
    page = document_to_page(xhtml.encode(), "application/xhtml+xml", None, BASE + "x.xhtml")
    assert page.title == "X" and page.text == "Körper"
    empty = document_to_page(b"", "text/html", None, BASE + "empty")
    assert empty.text == "" and show(empty, 0).endswith("**viewing lines [0 - 0] of 0**\n\nL0: ")
