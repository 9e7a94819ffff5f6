"""Citations in answers: Markdown links with url_citation annotations (exact indices), numbered
footnotes, and the streaming hold-back of a citation still being written."""

from __future__ import annotations

from gptoss_mlx.tools.browser import (
    CitationStream,
    Footnote,
    footnote_citations,
    format_footnotes,
    normalize_citations,
)


class Pages:
    """Stands in for BrowserTool's page stack: cursor -> (url, title)."""

    def __init__(self, pages: dict[int, tuple[str, str]]) -> None:
        self._pages = pages

    def page_url(self, cursor: int) -> str | None:
        return self._pages[cursor][0] or None if cursor in self._pages else None

    def page_title(self, cursor: int) -> str | None:
        return self._pages[cursor][1] if cursor in self._pages else None


PAGES = Pages(
    {
        0: ("", "paris population"),  # a search results page: no URL to cite
        1: ("https://en.wikipedia.org/wiki/Paris", "Paris - Wikipedia"),
        2: ("https://www.insee.fr/fr/statistiques/(2024)", "Populations légales 2024"),
    }
)


def test_citations_become_markdown_links_with_exact_annotations() -> None:
    text = "Paris has 2.1 million people【1†L9-L11】. INSEE agrees【2†L3】 and【1†L20】."
    new, annotations = normalize_citations(text, PAGES)
    wiki = " ([en.wikipedia.org](https://en.wikipedia.org/wiki/Paris))"
    insee = " ([www.insee.fr](https://www.insee.fr/fr/statistiques/%282024%29))"
    assert new == f"Paris has 2.1 million people{wiki}. INSEE agrees{insee} and{wiki}."
    assert [a["url"] for a in annotations] == [
        "https://en.wikipedia.org/wiki/Paris",
        "https://www.insee.fr/fr/statistiques/(2024)",
        "https://en.wikipedia.org/wiki/Paris",
    ]
    for a in annotations:
        assert a["type"] == "url_citation"
        assert new[a["start_index"] : a["end_index"]] in (wiki, insee)
    assert annotations[0]["start_index"] == len("Paris has 2.1 million people")
    assert annotations[0]["title"] == "Paris - Wikipedia"


def test_unknown_cursors_and_non_citations_stay_as_written() -> None:
    text = "See 【0†L4】 and 【9†L1】 and 【note】 and 【1†L2"
    new, annotations = normalize_citations(text, PAGES)
    assert new == text and annotations == []


def test_no_double_space_after_whitespace() -> None:
    new, annotations = normalize_citations("End. 【1†L2】", PAGES)
    assert new == "End. ([en.wikipedia.org](https://en.wikipedia.org/wiki/Paris))"
    assert annotations[0]["start_index"] == 5
    new, _ = normalize_citations("【1†L2】 first", PAGES)
    assert new.startswith("([en.wikipedia.org]")


def test_footnotes_number_each_url_once() -> None:
    text = "A【1†L1】, B【2†L2-L3】, C【1†L5】, D【0†L1】."
    new, notes = footnote_citations(text, PAGES)
    assert new == "A[1], B[2], C[1], D【0†L1】."
    assert notes == [
        Footnote(1, "Paris - Wikipedia", "https://en.wikipedia.org/wiki/Paris"),
        Footnote(2, "Populations légales 2024", "https://www.insee.fr/fr/statistiques/(2024)"),
    ]
    assert format_footnotes(notes) == (
        "[1] Paris - Wikipedia - https://en.wikipedia.org/wiki/Paris\n"
        "[2] Populations légales 2024 - https://www.insee.fr/fr/statistiques/(2024)"
    )


def test_streaming_holds_back_an_open_citation() -> None:
    stream = CitationStream(PAGES, style="footnotes")
    out = [stream.feed(d) for d in ["Paris is big", "【", "1", "†L", "9-L1", "1】 and old【2"]]
    assert out == ["Paris is big", "", "", "", "", "[1] and old"]
    assert stream.feed("†L3】.") == "[2]."
    assert stream.feed(" Text with 【bracket】 only") == " Text with 【bracket】 only"
    assert stream.feed(" cut 【1†L") == " cut "
    assert stream.finish() == "【1†L"  # an unfinished citation at the end is shown as written
    assert [f.number for f in stream.footnotes] == [1, 2]


def test_streaming_markdown_matches_the_one_shot_result() -> None:
    text = (
        "Paris has 2.1 million people【1†L9-L11】. INSEE agrees【2†L3】 and【1†L20】. Done【0†L1】"
    )
    expected, expected_annotations = normalize_citations(text, PAGES)
    for size in (1, 2, 3, 7):
        stream = CitationStream(PAGES, style="markdown")
        pieces = [stream.feed(text[i : i + size]) for i in range(0, len(text), size)]
        shown = "".join(pieces) + stream.finish()
        assert shown == expected
        assert stream.annotations == expected_annotations


def test_a_long_run_after_a_bracket_is_released() -> None:
    stream = CitationStream(PAGES)
    assert stream.feed("【12†") == ""
    assert stream.feed("x" * 300) == "【12†" + "x" * 300
