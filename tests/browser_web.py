"""A stand-in for the web on 127.0.0.1, for the browser tests.

Pages: the golden HTML files under tests/golden/browser/ at /<name>.html; /doc.pdf (a PDF made
here); /notes.txt; /big (50 MB of text, streamed; bytes actually sent are counted in
`big_sent`); /slow (a page that sends its start, then stalls); /hang (no answer at all);
/loop (redirects to itself); /to-file (redirects to file://); /hop/<n> (n redirects, then /links.html); /missing (404);
/blob (application/octet-stream); /set-cookie and /echo (headers the client sent).

Search APIs, in the JSON their documentation gives: SearXNG at /searxng/search?format=json,
Brave at /brave/res/v1/web/search (X-Subscription-Token), Exa at /exa/search (POST, x-api-key),
DuckDuckGo's HTML at /ddg/html/ (POST; an ad first), and its bot check (202) at
/ddg-blocked/html/. A path under /fail<status>/ answers that status (so
`SearxngBackend(base + "/fail429")` meets a rate limit). Every request is kept in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

GOLDEN = Path(__file__).parent / "golden" / "browser"
BRAVE_KEY = "brave-test-key"
EXA_KEY = "exa-test-key"
BIG_SIZE = 50 * 1024 * 1024
RESULTS = [
    ("Links and lists", "http://docs.example.org:{port}/links.html", "A page of links."),
    (
        "Plain notes",
        "http://docs.example.org:{port}/notes.txt",
        "Some <b>plain</b> notes &amp; more.",
    ),
    ("A PDF", "http://files.example.net:{port}/doc.pdf", "The PDF."),
]
NOTES = "Notes\n\nFirst line of notes.\nThe answer is 42 and it is 【boxed】.\n"


def minimal_pdf(lines: list[str], title: str = "Test PDF") -> bytes:
    """A one-page PDF with `lines` of Helvetica text, written by hand (offsets computed)."""
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops += [f"({escaped}) Tj", "T*"]
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (" + title.encode("latin-1") + b") >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


class Web:
    def __init__(self, local: bool = False) -> None:
        self.local = local  # search results point at 127.0.0.1 (for subprocesses: no fake DNS)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.big_sent = 0
        self.stall = threading.Event()  # set to let /slow and /hang finish
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"

    def results(self) -> list[tuple[str, str, str]]:
        out = [(t, u.format(port=self.port), s) for t, u, s in RESULTS]
        if self.local:
            for host in ("docs.example.org", "files.example.net"):
                out = [(t, u.replace(f"//{host}:", "//127.0.0.1:"), s) for t, u, s in out]
        return out


def _handler(web: Web) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, data: object, status: int = 200) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def do_POST(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            web.requests.append((self.command, self.path, dict(self.headers), body))
            path = parts.path
            if path.startswith("/fail"):
                status = int(path[5:8])
                return self._send(status, b'{"error": "nope"}', "application/json")
            route = _ROUTES.get(path) or next(
                (f for p, f in _PREFIX_ROUTES if path.startswith(p)), None
            )
            if route is None:
                return self._send(404, b"<html><body>Not found</body></html>", "text/html")
            route(self, web, parts, body)

    return Handler


def _golden_page(h, web, parts, body) -> None:
    name = parts.path.lstrip("/")
    path = GOLDEN / name
    if not path.is_file():
        return h._send(404, b"not found", "text/plain")
    ctype = "text/html; charset=utf-8" if name.endswith(".html") else "text/plain"
    h._send(200, path.read_bytes(), ctype)


def _big(h, web, parts, body) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/plain")
    h.send_header("Content-Length", str(BIG_SIZE))
    h.end_headers()
    line = (b"x" * 99) + b"\n"
    block = line * 10_000  # 1 MB
    try:
        for _ in range(BIG_SIZE // len(block)):
            h.wfile.write(block)
            web.big_sent += len(block)
    except OSError:
        pass


def _slow(h, web, parts, body) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.end_headers()
    h.wfile.write(b"<html><head><title>Slow</title></head><body><p>The start arrives.</p>")
    h.wfile.flush()
    web.stall.wait(10)
    with suppress(OSError):
        h.wfile.write(b"<p>The end arrives late.</p></body></html>")
    h.close_connection = True


def _hang(h, web, parts, body) -> None:
    web.stall.wait(10)
    h.close_connection = True


def _redirect(h, web, parts, body) -> None:
    if parts.path == "/loop":
        target = "/loop"
    else:
        n = int(parts.path.rsplit("/", 1)[1])
        target = f"/hop/{n - 1}" if n > 1 else "/links.html"
    h._send(302, b"", "text/plain", {"Location": target})


def _searxng(h, web, parts, body) -> None:
    q = parse_qs(parts.query)
    if q.get("format") != ["json"]:
        return h._send(403, b"Forbidden", "text/html")
    results = [{"url": u, "title": t, "content": s, "engine": "x"} for t, u, s in web.results()]
    h._json({"query": q["q"][0], "number_of_results": len(results), "results": results})


def _brave(h, web, parts, body) -> None:
    if h.headers.get("X-Subscription-Token") != BRAVE_KEY:
        return h._json({"type": "ErrorResponse", "error": {"status": 401}}, 401)
    results = [{"title": t, "url": u, "description": s} for t, u, s in web.results()]
    h._json(
        {
            "type": "search",
            "query": {"original": "q"},
            "web": {"type": "search", "results": results},
        }
    )


def _exa(h, web, parts, body) -> None:
    if h.headers.get("x-api-key") != EXA_KEY or h.command != "POST":
        return h._json({"error": "Invalid API key"}, 401)
    req = json.loads(body)
    results = [
        {"id": u, "url": u, "title": t, "text": s, "score": 0.9}
        for t, u, s in web.results()[: req["numResults"]]
    ]
    h._json({"requestId": "r1", "results": results})


def _ddg(h, web, parts, body) -> None:
    items = "".join(
        f'<div class="result results_links web-result"><div class="links_main">'
        f'<h2 class="result__title"><a rel="nofollow" class="result__a" '
        f'href="//duckduckgo.com/l/?uddg={u.replace(":", "%3A").replace("/", "%2F")}&amp;rut=abc">{t}</a></h2>'
        f'<a class="result__snippet" href="#">{s}</a></div></div>'
        for t, u, s in web.results()
    )
    ad = (
        '<div class="result result--ad"><h2 class="result__title"><a class="result__a" '
        'href="https://duckduckgo.com/y.js?ad_domain=ads.example.com">An ad</a></h2></div>'
    )
    page = f"<html><body>{ad}{items}</body></html>"
    h._send(200, page.encode(), "text/html; charset=utf-8")


def _ddg_blocked(h, web, parts, body) -> None:
    page = b"<html><body><form id='challenge-form' action='//duckduckgo.com/anomaly.js'></form></body></html>"
    h._send(202, page, "text/html")


def _cookie(h, web, parts, body) -> None:
    h._send(200, b"<html><body>set</body></html>", "text/html", {"Set-Cookie": "sid=abc; Path=/"})


def _echo(h, web, parts, body) -> None:
    lines = [f"{k}: {v}" for k, v in h.headers.items()]
    h._send(200, "\n".join(lines).encode(), "text/plain")


_ROUTES = {
    "/doc.pdf": lambda h, w, p, b: h._send(
        200, minimal_pdf(["Quarterly report", "Revenue grew by 12 percent."]), "application/pdf"
    ),
    "/notes.txt": lambda h, w, p, b: h._send(200, NOTES.encode(), "text/plain; charset=utf-8"),
    "/blob": lambda h, w, p, b: h._send(200, b"\x00\x01\x02", "application/octet-stream"),
    "/big": _big,
    "/slow": _slow,
    "/hang": _hang,
    "/loop": _redirect,
    "/searxng/search": _searxng,
    "/brave/res/v1/web/search": _brave,
    "/exa/search": _exa,
    "/ddg/html/": _ddg,
    "/ddg-blocked/html/": _ddg_blocked,
    "/set-cookie": _cookie,
    "/to-file": lambda h, w, p, b: h._send(
        302, b"", "text/plain", {"Location": "file:///etc/passwd"}
    ),
    "/echo": _echo,
}
_PREFIX_ROUTES = [("/hop/", _redirect), ("/", _golden_page)]


@contextmanager
def serve(local: bool = False) -> Iterator[Web]:
    web = Web(local)
    thread = threading.Thread(target=web.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield web
    finally:
        web.stall.set()
        time.sleep(0.01)
        web.server.shutdown()
        web.server.server_close()
