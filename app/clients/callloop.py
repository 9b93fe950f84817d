"""Call Loop's secret URLs: add to a group (/r/), opt out (/s/), fire a trigger (/t/).

The configured URL is kept byte for byte (its query is a bare group key such as `?abc123`);
variables are appended after it with `&`, never merged through a params= re-encode.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

from app.clients.http1 import HttpCallError, HttpCallTimeout, OriginPool
from app.observability import UPSTREAM_LATENCY
from app.redaction import mask_url

AGENT_HEADER = b"User-Agent: optin-backend\r\n"
FORM_HEADERS = b"Content-Type: application/x-www-form-urlencoded\r\n" + AGENT_HEADER


class CallLoopError(Exception):
    def __init__(self, reason: str, *, transient: bool, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.status_code = status_code


@dataclass(frozen=True)
class CallLoopResult:
    status_code: int
    body_excerpt: str


def opt_out_url(group_url: str) -> str:
    """The same group URL with `/r/` replaced by `/s/` (Call Loop's documented rule)."""
    return group_url.replace("/r/", "/s/", 1)


def build_url(configured_url: str, variables: dict[str, str]) -> str:
    """Append `&name=value` pairs to the configured URL, `+` encoded as %2B."""
    if not variables:
        return configured_url
    encoded = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in variables.items())
    if "?" not in configured_url:
        return f"{configured_url}?{encoded}"
    separator = "" if configured_url.endswith(("?", "&")) else "&"
    return f"{configured_url}{separator}{encoded}"


class CallLoopClient:
    """Call Loop over the HTTP/1.1 client of app/clients/http1.py (one pool of kept-alive
    connections per origin), as LoopMessage: the delivery worker shares the API's process, and
    under intake load its sends were a quarter of the process's CPU with aiohttp. The request
    target is the URL as built, never re-quoted."""

    MAX_ORIGINS = 64  # group URLs are configuration: a handful of hosts

    def __init__(self, method: str = "POST", timeout_seconds: float = 10.0) -> None:
        self._method = method
        self._timeout = timeout_seconds
        self._pools: dict[str, OriginPool] = {}
        self._latency = UPSTREAM_LATENCY.labels("callloop")

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool_and_target(self, url: str) -> tuple[OriginPool, str]:
        """The pool for the URL's origin, and the request target: the rest of the URL, as is."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if parts.username is not None or not url.startswith(origin):
            raise ValueError("not a plain http(s)://host[:port]/... URL")
        target = url[len(origin) :].split("#", 1)[0]
        if not target.startswith("/"):
            target = "/" + target
        if not (target.isascii() and target.isprintable()) or " " in target:
            raise ValueError("a space, control or non-ASCII character in the URL")
        pool = self._pools.get(origin)
        if pool is None:
            if len(self._pools) >= self.MAX_ORIGINS:
                oldest = next(iter(self._pools))
                self._pools.pop(oldest).close()
            pool = OriginPool(origin, self._timeout, connect_timeout_seconds=5.0)
            self._pools[origin] = pool
        return pool, target

    async def send(self, configured_url: str, variables: dict[str, str]) -> CallLoopResult:
        """Send the variables in the query string and, for POST, also as the form body."""
        masked = mask_url(configured_url)
        try:
            pool, target = self._pool_and_target(build_url(configured_url, variables))
        except ValueError as exc:
            raise CallLoopError(f"unusable URL {masked}: {exc}", transient=False) from None
        with self._latency.time():
            try:
                if self._method == "POST":
                    # The variables as a form too, as Call Loop's examples post them.
                    form = urlencode(variables).encode()
                    response = await pool.request("POST", target, FORM_HEADERS, form)
                else:
                    response = await pool.request(self._method, target, AGENT_HEADER)
            except HttpCallTimeout:
                raise CallLoopError(f"timeout calling {masked}", transient=True) from None
            except HttpCallError as exc:
                raise CallLoopError(
                    f"connection error calling {masked}: {exc}", transient=True
                ) from None
        status = response.status
        text = response.body.decode("utf-8", errors="replace")
        excerpt = text[:200].replace(configured_url, masked)
        if 200 <= status < 300:
            return CallLoopResult(status, excerpt)
        transient = status == 429 or status >= 500
        raise CallLoopError(
            f"HTTP {status} from {masked}: {excerpt}", transient=transient, status_code=status
        )
