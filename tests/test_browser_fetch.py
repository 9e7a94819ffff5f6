"""The browser's fetcher against a local stand-in for the web: schemes, private addresses after
DNS, redirects, the size and time caps, cookies, the User-Agent and the offline switch."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from gptoss_mlx.tools.browser.fetch import (
    USER_AGENT,
    Fetcher,
    FetchError,
    OfflineError,
    is_public_address,
)

from .browser_web import BIG_SIZE, Web, serve


def fake_dns(host: str, port: int) -> list[str]:
    """Public-looking names of the tests, all pointing at the local stand-in."""
    if host.endswith((".example.org", ".example.net")):
        return ["127.0.0.1"]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with serve() as web:
        yield web


def local(**kwargs: object) -> Fetcher:
    return Fetcher(allow_private=True, resolver=fake_dns, **kwargs)  # type: ignore[arg-type]


def test_a_public_name_resolving_to_loopback_is_refused(web: Web) -> None:
    before = len(web.requests)
    fetcher = Fetcher(resolver=fake_dns)
    with pytest.raises(FetchError, match=r"local or private network address \(127\.0\.0\.1\)") as e:
        fetcher.get(web.url("docs.example.org", "/links.html"))
    assert "GPTOSS_BROWSER_ALLOW_PRIVATE=1" in e.value.reason
    assert len(web.requests) == before  # refused before connecting


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/links.html",
        "http://localhost:{port}/",
        "http://[::1]:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://0.0.0.0:{port}/",
        "http://[::ffff:127.0.0.1]:{port}/",
    ],
)
def test_loopback_private_and_link_local_addresses_are_refused(web: Web, url: str) -> None:
    fetcher = Fetcher()  # the system resolver: localhost is loopback everywhere
    with pytest.raises(FetchError, match="local or private network address"):
        fetcher.get(url.format(port=web.port))


def test_address_classes() -> None:
    assert is_public_address("8.8.8.8") and is_public_address("2606:4700::1111")
    for address in (
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.1.1",
        "fe80::1",
        "fc00::1",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::ffff:10.0.0.1",
    ):
        assert not is_public_address(address), address


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.org/x",
        "gopher://example.org/",
        "data:text/html,hi",
        "javascript:alert(1)",
        "/relative/path",
    ],
)
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(FetchError, match="only http and https URLs can be opened"):
        local().get(url)


def test_allowed_private_fetch_sends_the_user_agent(web: Web) -> None:
    response = local().get(web.url("docs.example.org", "/echo"))
    assert response.status == 200 and response.truncated == ""
    headers = response.body.decode()
    assert f"User-Agent: {USER_AGENT}" in headers
    assert USER_AGENT.startswith("gptoss-mlx/") and USER_AGENT.endswith("(+local browser tool)")
    assert f"Host: docs.example.org:{web.port}" in headers  # the name, not the pinned address


def test_redirects_are_followed_at_most_five_times(web: Web) -> None:
    ok = local().get(web.url("docs.example.org", "/hop/5"))
    assert ok.status == 200 and ok.url.endswith("/links.html") and len(ok.redirects) == 5
    with pytest.raises(FetchError, match="redirected more than 5 times"):
        local().get(web.url("docs.example.org", "/hop/6"))
    before = len(web.requests)
    with pytest.raises(FetchError, match="Too many redirects"):
        local().get(web.url("docs.example.org", "/loop"))
    assert len(web.requests) - before == 6


def test_a_redirect_to_another_scheme_is_refused(web: Web) -> None:
    with pytest.raises(FetchError, match="only http and https"):
        local().get(web.url("docs.example.org", "/to-file"))


def test_a_50_mb_page_is_cut_at_5_mb_without_reading_it_all(web: Web) -> None:
    start = time.monotonic()
    response = local().get(web.url("docs.example.org", "/big"))
    assert response.truncated == "size" and len(response.body) == 5 * 1024 * 1024
    time.sleep(0.2)
    assert web.big_sent < BIG_SIZE // 2  # the sender was stopped, not drained
    assert time.monotonic() - start < 10


def test_a_slow_page_is_cut_at_the_time_cap(web: Web) -> None:
    start = time.monotonic()
    response = local(timeout=0.5).get(web.url("docs.example.org", "/slow"))
    assert time.monotonic() - start < 3
    assert response.truncated == "time"
    assert b"The start arrives." in response.body and b"late" not in response.body


def test_a_server_that_never_answers_times_out(web: Web) -> None:
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"no answer within 0\.5 s"):
        local(timeout=0.5).get(web.url("docs.example.org", "/hang"))
    assert time.monotonic() - start < 3


def test_cookies_stay_with_one_fetcher(web: Web) -> None:
    first = local()
    first.get(web.url("docs.example.org", "/set-cookie"))
    assert b"Cookie: sid=abc" in first.get(web.url("docs.example.org", "/echo")).body
    assert b"Cookie" not in local().get(web.url("docs.example.org", "/echo")).body


@pytest.mark.parametrize("var", ["GPTOSS_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_makes_no_request(web: Web, var: str) -> None:
    before = len(web.requests)
    fetcher = Fetcher.from_env({var: "1", "GPTOSS_BROWSER_ALLOW_PRIVATE": "1"}, resolver=fake_dns)
    assert fetcher.allow_private
    with pytest.raises(OfflineError, match="The web is unavailable"):
        fetcher.get(web.url("docs.example.org", "/links.html"))
    assert len(web.requests) == before
    assert not Fetcher.from_env({var: "0"}).offline


def test_a_name_that_does_not_resolve() -> None:
    with pytest.raises(FetchError, match="could not be resolved"):
        local().get("http://no-such-host.invalid/")


@pytest.fixture(scope="module")
def tls_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Web, ssl.SSLContext]]:
    """The stand-in web over TLS, with a certificate for secure.example.org only."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=secure.example.org",
         "-addext", "subjectAltName=DNS:secure.example.org"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    web = Web()
    web.server.socket = server_side.wrap_socket(web.server.socket, server_side=True)
    thread = threading.Thread(target=web.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield web, ssl.create_default_context(cafile=str(cert))
    finally:
        web.server.shutdown()
        web.server.server_close()


def test_https_connects_to_the_checked_address_and_verifies_the_name(
    tls_web: tuple[Web, ssl.SSLContext],
) -> None:
    web, trust = tls_web
    fetcher = local(ssl_context=trust)
    response = fetcher.get(f"https://secure.example.org:{web.port}/links.html")
    assert response.status == 200 and b"Links and lists" in response.body
    with pytest.raises(FetchError, match="TLS failed"):  # the certificate names another host
        fetcher.get(f"https://docs.example.org:{web.port}/links.html")
