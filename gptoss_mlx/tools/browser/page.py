"""Pages as the model reads them: HTML, PDF and plain text turned into 80-column text with
numbered links, following openai/gpt-oss's simple_browser (html2text over lxml).

Links become `【id†text】` (same domain) or `【id†text†domain】`, images `[Image N: alt]`, and a
literal 【 or 】 on a page becomes 〖 or 〗 so that it can never pose as a link or a citation.
"""

from __future__ import annotations

import contextlib
import html as html_lib
import io
import re
import textwrap
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

import html2text
import lxml.etree
import lxml.html

WRAP_WIDTH = 80

_SUP_RE = re.compile(r"<sup( [^>]*)?>([\w\-]+)</sup>")
_SUB_RE = re.compile(r"<sub( [^>]*)?>([\w\-]+)</sub>")
_TAGS_BETWEEN_WORDS_RE = re.compile(r"(?<=\w)((<[^>]*>)+)(?=\w)")
_BLANK_LINE_RE = re.compile(r"^\s+$", flags=re.MULTILINE)
_EXTRA_NEWLINES_RE = re.compile(r"\n(\s*\n)+")
_SMP_RE = re.compile(r"[\U00010000-\U0001FFFF]")
_SPECIAL_CHARS = {"【": "〖", "】": "〗", "◼": "◾", "\u200b": ""}
_SPECIAL_RE = re.compile("|".join(map(re.escape, _SPECIAL_CHARS)))
_XML_DECLARATION_RE = re.compile(r"^\s*<\?xml[^>]*\?>")
_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.IGNORECASE)


@dataclass
class Page:
    """One entry of the browser's page stack. `links` maps a link id to its URL; on a find page
    `snippet_lines` maps a result id to the line it points at (opening it scrolls there)."""

    url: str
    title: str
    text: str
    links: dict[int, str] = field(default_factory=dict)
    kind: str = "page"  # "page", "search" or "find"
    snippet_lines: dict[int, int] = field(default_factory=dict)
    truncated: str = ""  # why only part of the page was read ("" when complete)
    _lines: list[str] | None = field(default=None, repr=False, compare=False)

    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = wrap_lines(self.text)
        return self._lines


def get_domain(url: str) -> str:
    netloc = urlsplit(url).netloc
    return netloc or urlsplit("http://" + url).netloc


def wrap_lines(text: str, width: int = WRAP_WIDTH) -> list[str]:
    """Wrap each line at `width` columns keeping its whitespace; empty lines stay."""
    out: list[str] = []
    for line in text.split("\n"):
        if not line:
            out.append("")
            continue
        out.extend(
            textwrap.wrap(line, width=width, replace_whitespace=False, drop_whitespace=False)
            or [""]
        )
    return out


def clean_special_chars(text: str) -> str:
    return _SPECIAL_RE.sub(lambda m: _SPECIAL_CHARS[m.group(0)], text)


def _merge_whitespace(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\n", " "))


def _node_text(node: lxml.html.HtmlElement) -> str:
    return _merge_whitespace(" ".join(node.itertext()))


def _replace_with_text(node: lxml.html.HtmlElement, text: str) -> None:
    parent = node.getparent()
    if parent is None:
        return
    before = node.getprevious()
    joined = text + (node.tail or "")
    if before is None:
        parent.text = (parent.text or "") + joined
    else:
        before.tail = (before.tail or "") + joined
    parent.remove(node)


def _number_links(root: lxml.html.HtmlElement, page_url: str) -> dict[int, str]:
    """Replace every followable <a href> by its `【id†text(†domain)】` marker; same URL, same id."""
    page_domain = get_domain(page_url)
    ids: dict[str, int] = {}
    for anchor in root.findall(".//a[@href]"):
        href = anchor.attrib["href"].strip()
        if href.startswith(("mailto:", "javascript:", "tel:")):
            continue
        text = _node_text(anchor).replace("†", "‡")
        if not text.strip():  # an image link: its image is numbered instead
            continue
        if href.startswith("#"):
            _replace_with_text(anchor, text)
            continue
        try:
            target = urljoin(page_url, href)
            domain = get_domain(target)
        except ValueError:
            continue
        if not domain or urlsplit(target).scheme not in ("http", "https"):
            continue
        target = target.replace("arxiv.org", "ar5iv.org")  # as the reference: readable HTML
        link_id = ids.setdefault(target, len(ids))
        suffix = "" if domain == page_domain else f"†{domain}"
        _replace_with_text(anchor, f"【{link_id}†{text}{suffix}】")
    return {link_id: url for url, link_id in ids.items()}


def _number_images(root: lxml.html.HtmlElement) -> None:
    for n, img in enumerate(root.findall(".//img")):
        name = img.get("alt") or img.get("title")
        _replace_with_text(img, f"[Image {n}: {name}]" if name else f"[Image {n}]")


class _PlainHTML2Text(html2text.HTML2Text):
    """html2text without Markdown escaping: the reference meant to switch it off (its patch of
    html2text.utils does not reach the names html2text imported), and the model reads text."""

    def handle_data(self, data: str, entity_char: bool = False) -> None:
        super().handle_data(data, entity_char=True)


def html_to_text(html: str) -> str:
    html = _SUP_RE.sub(r"^{\2}", html)
    html = _SUB_RE.sub(r"_{\2}", html)
    html = _TAGS_BETWEEN_WORDS_RE.sub(r" \1", html)  # table cells and the like stay apart
    converter = _PlainHTML2Text()
    converter.ignore_links = True
    converter.ignore_images = True
    converter.ignore_tables = True
    converter.ignore_emphasis = True
    converter.unicode_snob = True
    converter.body_width = 0
    return converter.handle(html).strip()


def process_html(
    html: str, url: str, title: str | None = None, *, display_urls: bool = False
) -> Page:
    """Turn an HTML document into a Page (the reference's `process_html`)."""
    html = clean_special_chars(_SMP_RE.sub("", html))
    html = _XML_DECLARATION_RE.sub("", html)  # lxml refuses str input that declares an encoding
    try:
        root = lxml.html.fromstring(html)
    except (lxml.etree.ParserError, ValueError):
        root = lxml.html.fromstring("<html><body></body></html>")
    title_node = root.find(".//title")
    if title:
        final_title = title
    elif title_node is not None and (title_node.text or "").strip():
        final_title = _merge_whitespace(title_node.text or "").strip()
    else:
        final_title = get_domain(url) if url else ""
    links = _number_links(root, url)
    _number_images(root)
    for node in root.findall(".//math"):
        node.getparent().remove(node)
    text = html_to_text(lxml.etree.tostring(root, encoding="unicode"))
    text = _EXTRA_NEWLINES_RE.sub("\n\n", _BLANK_LINE_RE.sub("", text))
    prefix = f"\nURL: {url}\n" if display_urls else ""
    return Page(url=url, title=final_title, text=prefix + text, links=links)


def text_to_page(text: str, url: str, title: str | None = None) -> Page:
    """A plain-text page (text/plain, JSON, view-source)."""
    text = clean_special_chars(text.replace("\r\n", "\n").replace("\r", "\n"))
    return Page(url=url, title=title or _title_from_url(url), text=text.strip("\n"))


def pdf_to_page(data: bytes, url: str) -> Page:
    """Text of every PDF page, pages separated by a blank line. Raises ValueError if unreadable."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        texts = [(p.extract_text() or "").strip() for p in reader.pages]
        meta_title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"the PDF could not be read ({e})") from e
    page = text_to_page("\n\n".join(t for t in texts if t), url, str(meta_title or "") or None)
    return page


def _title_from_url(url: str) -> str:
    parts = urlsplit(url)
    name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    return name or parts.netloc or url


def decode_html(data: bytes, charset: str | None) -> str:
    """Decode with the header's charset, else a <meta charset>, else UTF-8 (lossy)."""
    if not charset and (m := _META_CHARSET_RE.search(data[:4096])):
        charset = m.group(1).decode("ascii")
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


@dataclass
class SearchHit:
    title: str
    url: str
    snippet: str = ""


def _plain(snippet: str) -> str:
    if "<" in snippet or "&" in snippet:
        with contextlib.suppress(lxml.etree.ParserError, ValueError):
            snippet = lxml.html.fromstring(f"<div>{snippet}</div>").text_content()
    return _merge_whitespace(snippet).strip()


def search_results_page(query: str, hits: list[SearchHit]) -> Page:
    """The results page the reference builds: an HTML list rendered like any page, so it reads
    `L2: # Search Results` then `L4:   * 【0†Title†domain】 snippet`."""
    items = "".join(
        f"<li><a href='{html_lib.escape(h.url, quote=True)}'>{html_lib.escape(_plain(h.title))}"
        f"</a> {html_lib.escape(_plain(h.snippet))}</li>"
        for h in hits
    )
    html = f"<html><body>\n<h1>Search Results</h1>\n<ul>\n{items}\n</ul>\n</body></html>"
    page = process_html(html, url="", title=query, display_urls=True)
    page.kind = "search"
    return page


_TEXT_TYPES = ("application/json", "application/xml", "application/javascript")


def document_to_page(
    body: bytes, content_type: str, charset: str | None, url: str, *, view_source: bool = False
) -> Page:
    """A fetched document as a Page: HTML, PDF or text. ValueError for anything else."""
    if view_source:
        source = decode_html(body, charset)
        return text_to_page(source, f"view-source:{url}", f"Source of {_title_from_url(url)}")
    if content_type == "application/pdf" or body[:5] == b"%PDF-":
        return pdf_to_page(body, url)
    looks_html = not content_type and body.lstrip()[:1] == b"<"
    if content_type in ("text/html", "application/xhtml+xml") or looks_html:
        return process_html(decode_html(body, charset), url)
    if content_type.startswith("text/") or content_type in _TEXT_TYPES or not content_type:
        return text_to_page(decode_html(body, charset), url)
    raise ValueError(f"its content type is `{content_type}`, not a web page, a PDF or text")
