"""Fetching untrusted pages safely: http(s) only, a size and a time cap, at most 5 redirects, no
loopback/private/link-local targets (checked on the resolved address, and the connection goes to
that very address, so a name cannot resolve one way for the check and another for the request),
cookies kept per Fetcher only, and no request at all when offline.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from gptoss_mlx import __version__

USER_AGENT = f"gptoss-mlx/{__version__} (+local browser tool)"
MAX_BYTES = 5 * 1024 * 1024
TIMEOUT_S = 15.0
MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024
_TRUE = {"1", "true", "yes", "on"}

Resolver = Callable[[str, int], list[str]]


class FetchError(Exception):
    """A fetch that failed; `str()` is for the model, `reason` one line for the user."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class OfflineError(FetchError):
    pass


def env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def is_offline(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env_flag(env, "GPTOSS_OFFLINE") or env_flag(env, "HF_HUB_OFFLINE")


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass
class Response:
    url: str  # after redirects
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    truncated: str = ""  # "" or why the body stops early ("size" or "time")
    redirects: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def charset(self) -> str | None:
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip("\"' ")
        return None


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address already checked, while Host (and TLS SNI) keep the name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


class Fetcher:
    """One browser's HTTP client. Create one per chat: its cookie jar dies with it."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        offline: bool = False,
        max_bytes: int = MAX_BYTES,
        timeout: float = TIMEOUT_S,
        max_redirects: int = MAX_REDIRECTS,
        resolver: Resolver | None = None,
        user_agent: str = USER_AGENT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.offline = offline
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.resolver = resolver or system_resolver
        self.user_agent = user_agent
        self._ssl = ssl_context
        self.cookies = http.cookiejar.CookieJar()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: object) -> Fetcher:
        """GPTOSS_BROWSER_ALLOW_PRIVATE=1 allows private targets; GPTOSS_OFFLINE/HF_HUB_OFFLINE
        make every request fail at once."""
        env = os.environ if env is None else env
        kwargs.setdefault("allow_private", env_flag(env, "GPTOSS_BROWSER_ALLOW_PRIVATE"))
        kwargs.setdefault("offline", is_offline(env))
        return cls(**kwargs)  # type: ignore[arg-type]

    def get(self, url: str, **kwargs: object) -> Response:
        return self.request("GET", url, **kwargs)  # type: ignore[arg-type]

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        allow_private: bool | None = None,
        cancel: threading.Event | None = None,
    ) -> Response:
        """Fetch `url`, following redirects. Raises FetchError with a message for the model."""
        if self.offline:
            raise OfflineError(
                "The web is unavailable: this machine is offline, so no page can be searched or "
                "opened. Answer from what you already know and say that you could not browse.",
                "browser: offline (GPTOSS_OFFLINE or HF_HUB_OFFLINE is set), no request made",
            )
        private_ok = self.allow_private if allow_private is None else allow_private
        deadline = time.monotonic() + self.timeout
        seen: list[str] = []
        for _hop in range(self.max_redirects + 1):
            response = self._one(method, url, headers, body, private_ok, deadline, cancel)
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or not location:
                response.redirects = seen
                return response
            seen.append(url)
            url = urljoin(url, location)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
        raise FetchError(
            f"Too many redirects: `{seen[0]}` redirected more than {self.max_redirects} times.",
            f"browser: redirect loop at {seen[0]}",
        )

    def _target(self, url: str, private_ok: bool) -> tuple[str, str, int, str, str]:
        """(scheme, host, port, address, path) of a URL that may be fetched, else FetchError."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            shown = f"`{scheme}:`" if scheme else "no scheme"
            raise FetchError(
                f"Cannot open `{url}`: only http and https URLs can be opened, not {shown}.",
                f"browser: refused a {scheme or 'scheme-less'} URL",
            )
        try:
            host, port = parts.hostname or "", parts.port or (443 if scheme == "https" else 80)
        except ValueError as e:
            raise FetchError(f"Cannot open `{url}`: {e}.") from e
        if not host:
            raise FetchError(f"Cannot open `{url}`: the URL has no host.")
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise FetchError(f"Cannot open `{url}`: `{host}` is not a valid host name.") from e
        address = self._resolve(host, port, url, private_ok)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return scheme, host, port, address, path

    def _resolve(self, host: str, port: int, url: str, private_ok: bool) -> str:
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                addresses = self.resolver(host, port)
            except (OSError, UnicodeError) as e:
                raise FetchError(
                    f"Cannot open `{url}`: the name `{host}` could not be resolved ({e}). Check "
                    "the address, or the network may be down.",
                    f"browser: cannot resolve {host}",
                ) from e
        if not addresses:
            raise FetchError(f"Cannot open `{url}`: the name `{host}` has no address.")
        if not private_ok:
            for address in addresses:
                if not is_public_address(address):
                    raise FetchError(
                        f"Refused to open `{url}`: `{host}` is a local or private network "
                        f"address ({address}), which the browser does not open.",
                        f"browser: refused {host} ({address}); "
                        "GPTOSS_BROWSER_ALLOW_PRIVATE=1 allows private addresses",
                    )
        return addresses[0]

    def _connection(
        self, scheme: str, host: str, port: int, address: str, timeout: float
    ) -> http.client.HTTPConnection:
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
            return _PinnedHTTPSConnection(host, port, address, timeout, context)
        return _PinnedHTTPConnection(host, port, address, timeout)

    def _one(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        private_ok: bool,
        deadline: float,
        cancel: threading.Event | None,
    ) -> Response:
        scheme, host, port, address, path = self._target(url, private_ok)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(url, self.timeout)
        request = urllib.request.Request(url, method=method)
        self.cookies.add_cookie_header(request)
        sent = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        sent.update(dict(request.header_items()))
        sent.update(headers or {})
        conn = self._connection(scheme, host, port, address, remaining)
        try:
            conn.request(method, path, body=body, headers=sent)
            raw = conn.getresponse()
            self.cookies.extract_cookies(raw, request)  # type: ignore[arg-type]
            response_headers = {k.lower(): v for k, v in raw.getheaders()}
            if raw.status in _REDIRECTS:
                return Response(url, raw.status, response_headers, b"")
            data, truncated = self._read(raw, conn, deadline, cancel)
            return Response(url, raw.status, response_headers, data, truncated)
        except TimeoutError as e:
            raise _timed_out(url, self.timeout) from e
        except ssl.SSLError as e:
            raise FetchError(f"Cannot open `{url}`: TLS failed ({e}).") from e
        except (OSError, http.client.HTTPException) as e:
            raise FetchError(
                f"Cannot open `{url}`: {type(e).__name__}: {e}".rstrip(": ") + ".",
                f"browser: {host} unreachable",
            ) from e
        finally:
            conn.close()

    def _read(
        self,
        raw: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        deadline: float,
        cancel: threading.Event | None,
    ) -> tuple[bytes, str]:
        chunks: list[bytes] = []
        total = 0
        while True:
            if cancel is not None and cancel.is_set():
                raise FetchError("The request was cancelled by the user.", "browser: cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), "time"
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            want = min(_CHUNK, self.max_bytes - total)
            try:
                chunk = raw.read1(want) if want > 0 else raw.read1(1)
            except TimeoutError:
                return b"".join(chunks), "time"
            if not chunk:
                return b"".join(chunks), ""
            if want <= 0:
                return b"".join(chunks), "size"
            chunks.append(chunk)
            total += len(chunk)


def _timed_out(url: str, timeout: float) -> FetchError:
    return FetchError(
        f"Cannot open `{url}`: no answer within {timeout:g} s. Try another source.",
        f"browser: {url} timed out",
    )
