"""A small HTTP/1.1 client for one origin: kept-alive connections, responses parsed by httptools.

LoopMessage's opt-in link is requested on every landing-page visit, so the call's own CPU is a
large part of the link endpoint's. aiohttp spends ~110-120 µs of the event loop's CPU on a call
(request and response objects, cookie jar, tracing, timers, header multidicts), this client ~50
(16 calls at a time against the same fake; README, Performance): it writes one prebuilt request
and lets httptools (the C parser uvicorn uses for requests) read the answer, on connections it
keeps open between calls.

What it does: HTTP/1.1 to one `http://` or `https://` origin (TLS verified against the system's
CA store, with SNI); request bodies sent with Content-Length; responses with Content-Length,
chunked, or delimited by the server closing; a timeout for the whole call and one for
connecting; at most `max_connections` open, extra callers waiting for one; a connection that
the server closed while it was idle is noticed and the call sent again on a new one (only when
not a byte of an answer came back). What it leaves out: redirects (never followed: neither API
answers with one), proxies, compression (none is asked for), cookies, HTTP/2.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from urllib.parse import urlsplit

import httptools

MAX_BODY_BYTES = 4 * 1024 * 1024  # neither API answers anything near this


class HttpCallError(Exception):
    """The call failed before a whole answer arrived: not connected, cut off, not HTTP."""


class HttpCallTimeout(HttpCallError):
    """No whole answer within the call's timeout (or no connection within the connect one)."""


class HttpResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # names in lower case; a repeated header keeps its last value
        self.body = body


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its answer handed to `waiter`."""

    def __init__(self, pool: OriginPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[HttpResponse] | None = None
        self.answered = False  # a byte of the current answer has arrived
        self.closed = False
        self._counted = True  # in the pool's count of open connections
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._headers_done = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing was asked: not a server to keep talking to
            self.close()
            return
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpCallError(f"not an HTTP answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.uncount()
        if self._headers_done and self.waiter is not None and not self._has_length():
            self._complete(keep_alive=False)  # the body ended with the connection
            return
        self._fail(HttpCallError("the connection closed before a whole answer came"))

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY_BYTES:
            self._fail(HttpCallError(f"an answer over {MAX_BODY_BYTES} bytes"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # 1xx: the real answer follows
            self._reset()
            return
        self._complete(keep_alive=self._parser.should_keep_alive())

    # the rest
    def _has_length(self) -> bool:
        return "content-length" in self._headers or "transfer-encoding" in self._headers

    def _reset(self) -> None:
        self._headers = {}
        self._body = []
        self._size = 0
        self._headers_done = False

    def _complete(self, keep_alive: bool) -> None:
        waiter = self.waiter
        self.waiter = None
        response = HttpResponse(self._parser.get_status_code(), self._headers, b"".join(self._body))
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if keep_alive and not self.closed:
            self._pool._release(self)
        else:
            self.close()

    def _fail(self, error: Exception) -> None:
        waiter = self.waiter
        self.waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def send(self, payload: bytes, waiter: asyncio.Future[HttpResponse]) -> None:
        assert self.transport is not None
        self.waiter = waiter
        self.answered = False
        self.transport.write(payload)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.uncount()
            if self.transport is not None:
                self.transport.close()

    def uncount(self) -> None:
        """Out of the pool (idle list and count of open connections), once."""
        if self._counted:
            self._counted = False
            self._pool._forget(self)


class OriginPool:
    """Requests to one origin (`base_url`: scheme, host, port and an optional path prefix)."""

    def __init__(
        self,
        base_url: str,
        timeout_seconds: float,
        connect_timeout_seconds: float,
        max_connections: int = 100,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the base URL must be http:// or https:// with a host")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        host_header = self._host if default_port else f"{self._host}:{self._port}"
        if ":" in self._host and not default_port:  # an IPv6 literal keeps its brackets
            host_header = f"[{self._host}]:{self._port}"
        self._host_line = f"Host: {host_header}\r\n".encode("idna")
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout_seconds
        self._connect_timeout = min(connect_timeout_seconds, timeout_seconds)
        self._max_connections = max_connections
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []  # most recently used last
        self._open = 0  # connections open or being opened
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def request(
        self, method: str, path: str, header_lines: bytes = b"", body: bytes = b""
    ) -> HttpResponse:
        """`method` `path` (after the base URL's own path) with `header_lines` (each
        "Name: value\\r\\n", prebuilt by the caller) and `body`; the whole answer, whatever its
        status, or HttpCallError / HttpCallTimeout."""
        payload = b"".join(
            (
                f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("latin-1"),
                self._host_line,
                f"Content-Length: {len(body)}\r\n".encode("latin-1"),
                header_lines,
                b"\r\n",
                body,
            )
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        for attempt in (1, 2):
            reused, conn = await self._connection(deadline)
            waiter: asyncio.Future[HttpResponse] = loop.create_future()
            timer = loop.call_at(deadline, _expire, conn, waiter)
            try:
                conn.send(payload, waiter)
                return await waiter
            except HttpCallTimeout:
                raise
            except HttpCallError:
                # A kept-alive connection the server closed as the request went out: once more,
                # on a new connection (nothing of an answer came, so nothing was lost).
                if reused and not conn.answered and attempt == 1:
                    continue
                raise
            except BaseException:
                conn.close()  # cancelled mid-call: the connection's next bytes are not ours
                raise
            finally:
                timer.cancel()
        raise AssertionError("not reached")

    async def _connection(self, deadline: float) -> tuple[bool, _Connection]:
        """(reused, connection): an idle one, a new one, or the first one released."""
        while True:
            if self._closed:
                raise HttpCallError("the client is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return True, conn
            if self._open < self._max_connections:
                return False, await self._connect(deadline)
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                async with asyncio.timeout_at(deadline):
                    await turn
            except TimeoutError:
                raise HttpCallTimeout("no connection became free in time") from None
            finally:
                if turn in self._waiting:
                    self._waiting.remove(turn)

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        self._open += 1
        try:
            if self._tls and self._ssl is None:
                self._ssl = ssl.create_default_context()
            connect_by = min(deadline, loop.time() + self._connect_timeout)
            async with asyncio.timeout_at(connect_by):
                await loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl if self._tls else None,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            conn.uncount()
            raise HttpCallTimeout("could not connect in time") from None
        except (OSError, ssl.SSLError) as exc:
            conn.uncount()
            raise HttpCallError(f"could not connect ({type(exc).__name__})") from None
        except BaseException:
            conn.uncount()
            raise
        return conn

    def _connection_gone(self) -> None:
        self._open -= 1
        while self._waiting:  # a place is free: the first caller waiting opens a connection
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                break

    def _release(self, conn: _Connection) -> None:
        if self._closed:
            conn.close()
            return
        self._idle.append(conn)
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                break

    def _forget(self, conn: _Connection) -> None:
        """Called once per connection, when it closes (either side)."""
        if conn in self._idle:
            self._idle.remove(conn)
        self._connection_gone()

    def close(self) -> None:
        self._closed = True
        for conn in list(self._idle):
            conn.close()


def _expire(conn: _Connection, waiter: asyncio.Future[HttpResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(HttpCallTimeout("no whole answer in time"))
    conn.close()
