"""The HTTP layer under JiraClient: urllib3, with one cookie jar per thread.

Why urllib3 and not requests on top of it: requests costs about 1.2 ms of CPU per call on the
2-core machines this is measured on, urllib3 alone about 0.4 ms, and a sweep makes three calls
per new avatar (README, Performance). What requests added that matters here is small: the
cookie jar (the standard library's, as requests uses), proxies from the environment (read
once), and encoding a query string or a JSON body.

Why a jar per thread: Jira keeps the temporary avatar in the HTTP session (docs/jira-api.md §1.3),
so one thread's upload and crop-confirm must carry the same session cookie, and two threads
must not share a session (one's upload would replace the other's temporary image).
"""

from __future__ import annotations

import base64
import http.cookiejar
import json as jsonlib
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import urllib3
from cachetools import LRUCache
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from . import deadlines
from .config import HttpPhotoSettings, JiraSettings
from .per_process import PerProcess

# No answer the service asks for is anywhere near this: a page of 1000 users is about 1 MB.
MAX_ANSWER_BYTES = 16 * 2**20
# No retries and no redirects (the client decides); made once, as urllib3 would make it per call
NO_RETRIES = urllib3.Retry(False, redirect=False)


class AnswerTooLarge(urllib3.exceptions.HTTPError):
    """Jira (or what answers in its place) sent more than MAX_ANSWER_BYTES, once decompressed."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: urllib3.HTTPHeaderDict
    body: bytes

    def json(self):
        """The body as JSON; ValueError when it is not."""
        return jsonlib.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class JiraHttp:
    """Calls to one Jira base URL (or, with HttpPhotoSettings, a photo server: the same fields
    of credentials, TLS and timeouts). Pools are made lazily in each process (after a fork)."""

    def __init__(
        self, settings: JiraSettings | HttpPhotoSettings, max_body: int = MAX_ANSWER_BYTES, name: str = "Jira"
    ):
        self.settings, self.max_body, self.name = settings, max_body, name
        # this process's connection pool and its threads' cookie jars: never a parent's sockets
        self._per_process: PerProcess[tuple[urllib3.PoolManager, threading.local, dict[str, HTTPConnectionPool]]]
        self._per_process = PerProcess(lambda: (self._make_pool(), threading.local(), {}))
        self._timeout = urllib3.Timeout(connect=settings.connect_timeout, read=settings.timeout)
        self._deadline = settings.connect_timeout + settings.timeout  # a whole call, body included
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",  # as requests sent
            "User-Agent": "jira-avatar-sync",
            "X-Atlassian-Token": "no-check",
        }  # XSRF: mutating calls need it (§1.2)
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        elif settings.username or settings.password:  # sent pre-emptively: Jira never challenges (§6)
            headers["Authorization"] = _basic(settings.username, settings.password)
        self._headers = headers

    def request(
        self,
        method: str,
        url: str,
        *,
        params: dict | None = None,
        data: bytes | None = None,
        json=None,
        headers: dict | None = None,
    ) -> Response:
        """One call, no retries and no redirects followed; urllib3's exceptions pass through."""
        session = self._session()
        cookie_request, cookie = session.cookie_for(url)
        if params:
            url = f"{url}?{urlencode(params)}"
        all_headers = dict(self._headers)
        if headers:
            all_headers.update(headers)
        if json is not None:
            data = jsonlib.dumps(json).encode()
            all_headers["Content-Type"] = "application/json"
        if cookie:
            all_headers["Cookie"] = cookie
        call = _calls.call = _Call(time.monotonic() + self._deadline)
        try:
            host_pool, target = self._host_pool(url)
            resp = host_pool.urlopen(
                method,
                target,
                body=data,
                headers=all_headers,
                timeout=self._timeout,
                retries=NO_RETRIES,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError:
            if call.fired:  # the watchdog cut a status line or headers sent too slowly
                raise self._too_slow(url) from None
            raise
        finally:
            _calls.call = None
        try:
            session.extract(resp, cookie_request)
            with deadlines.guard(call.sock, call.deadline - time.monotonic()) as guard:
                try:
                    body = self._body(resp, url, call.deadline)
                except (urllib3.exceptions.HTTPError, OSError):
                    if guard.fired:
                        raise self._too_slow(url) from None
                    raise
            return Response(resp.status, resp.reason or "", resp.headers, body)
        finally:
            resp.release_conn()

    def _too_slow(self, url: str) -> urllib3.exceptions.ReadTimeoutError:
        message = f"no whole answer within {self._deadline:g}s"
        return urllib3.exceptions.ReadTimeoutError(None, url, message)  # type: ignore[arg-type]  # no pool here

    def _body(self, resp: urllib3.BaseHTTPResponse, url: str, deadline: float) -> bytes:
        """The whole body by ``deadline`` (the watchdog also cuts a read that would pass it).
        A late answer closes the connection."""
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                resp.close()
                raise self._too_slow(url)
            chunk = resp.read1(64 * 1024)  # decompressed: a gzip bomb counts by what it inflates to
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_body:
                resp.close()
                raise AnswerTooLarge(f"{self.name}'s answer is over {self.max_body} bytes")
            chunks.append(chunk)

    def _host_pool(self, url: str) -> tuple[urllib3.PoolManager | HTTPConnectionPool, str]:
        """Where to send a call, and what to ask for there: the host's own connection pool and
        the path, straight (PoolManager.urlopen parses the whole URL and looks the pool up again
        at every call: a tenth of a sweep's HTTP CPU), or, through a proxy, the manager and the
        whole URL, as the proxy needs it."""
        manager, _, pools = self._per_process.get()
        if isinstance(manager, urllib3.ProxyManager):
            return manager, url
        end = url.find("/", url.find("//") + 2)
        origin, target = (url, "/") if end < 0 else (url[:end], url[end:])
        pool = pools.get(origin)
        if pool is None or pool.pool is None:  # not yet, or closed as the manager let it go
            pool = pools[origin] = manager.connection_from_url(origin)
        return pool, target

    def forget_session(self) -> None:
        """Start this thread's next call in a new Jira session."""
        self._session().clear()

    def _session(self) -> _Session:
        local = self._per_process.get()[1]
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = _Session()
        return session

    def _make_pool(self) -> urllib3.PoolManager:
        s = self.settings
        tls: dict[str, Any]
        if s.ca_file:
            tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": s.ca_file}
        elif s.verify_tls:
            tls = {"cert_reqs": "CERT_REQUIRED"}  # the system's trusted CAs
        else:
            tls = {"cert_reqs": "CERT_NONE"}
        size: dict[str, Any] = {"num_pools": 2, "maxsize": max(1, s.max_concurrency)}
        proxy = _environ_proxy(s.url)  # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read once
        manager: urllib3.PoolManager
        if proxy:
            url, headers = _proxy_and_credentials(proxy)
            manager = urllib3.ProxyManager(url, proxy_headers=headers, **size, **tls)
        else:
            manager = urllib3.PoolManager(**size, **tls)
        manager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
        return manager


class _Session:
    """One thread's cookies: the standard library's jar, and the Cookie header it gave each URL.

    The header is made again only after an answer set a cookie, or a second later (a cookie
    may expire): the jar's policy checks and expiry sweep at every call were a tenth of a
    sweep's HTTP CPU. The Request the jar needs (its host and path, without the query) is kept
    too: building one parses the URL."""

    REUSE_SECONDS = 1.0

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        # url -> (the Request the jar reads, its Cookie header or None, when it was made)
        self._made: LRUCache[str, tuple[urllib.request.Request, str | None, float]] = LRUCache(maxsize=32)

    def cookie_for(self, url: str) -> tuple[urllib.request.Request, str | None]:
        now = time.monotonic()
        made = self._made.get(url)
        if made is not None and now - made[2] < self.REUSE_SECONDS:
            return made[0], made[1]
        request = made[0] if made is not None else urllib.request.Request(url)
        request.remove_header("Cookie")  # the jar adds it only when absent
        self.jar.add_cookie_header(request)
        header = request.get_header("Cookie")
        self._made[url] = (request, header, now)
        return request, header

    def extract(self, resp: urllib3.BaseHTTPResponse, request: urllib.request.Request) -> None:
        if "Set-Cookie" in resp.headers or "Set-Cookie2" in resp.headers:
            self.jar.extract_cookies(resp, request)  # type: ignore[arg-type]  # reads them via resp.info()
            self._made.clear()

    def clear(self) -> None:
        self.jar.clear()
        self._made.clear()


@dataclass
class _Call:
    """The call under way on this thread: its overall deadline, and the socket it uses."""

    deadline: float
    sock: socket.socket | None = None
    fired: bool = False


_calls = threading.local()


class _GuardedResponse:
    """getresponse() (the status line and headers) within the call's overall deadline. A mixin
    ahead of urllib3's connection classes: ``sock`` and the super() call are theirs."""

    sock: socket.socket

    def getresponse(self):
        call = getattr(_calls, "call", None)
        if call is None:
            return super().getresponse()  # type: ignore[misc]
        call.sock = self.sock
        with deadlines.guard(self.sock, call.deadline - time.monotonic()) as guard:
            try:
                return super().getresponse()  # type: ignore[misc]
            finally:
                call.fired = guard.fired


class _GuardedHTTPConnection(_GuardedResponse, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedResponse, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


def _basic(username: str, password: str) -> str:
    """Basic credentials in ISO-8859-1, which servlet containers assume, or else in UTF-8
    (a character Latin-1 lacks would otherwise stop the service from starting)."""
    pair = f"{username}:{password}"
    try:
        raw = pair.encode("latin-1")
    except UnicodeEncodeError:
        raw = pair.encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _proxy_and_credentials(proxy: str) -> tuple[str, dict | None]:
    """``http://user:pass@proxy:3128`` -> the proxy's URL without them, and the
    Proxy-Authorization header that carries them (urllib3 leaves credentials in the URL unused,
    and keeping them out of the URL keeps them out of its error messages)."""
    parts = urlsplit(proxy)
    if parts.username is None:
        return proxy, None
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    hostname = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    host = f"[{hostname}]{port}" if ":" in hostname else f"{hostname}{port}"  # IPv6 in brackets
    return urlunsplit((parts.scheme, host, parts.path, "", "")), urllib3.make_headers(proxy_basic_auth=credentials)


def _environ_proxy(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)
