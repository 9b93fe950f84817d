"""Call Loop's secret URLs: add to a group (/r/), opt out (/s/), fire a trigger (/t/).

The configured URL is kept byte for byte (its query is a bare group key such as `?abc123`);
variables are appended after it with `&`, never merged through a params= re-encode.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from app.clients.session import LazySession
from app.observability import UPSTREAM_LATENCY
from app.redaction import mask_url

FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


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
    """Call Loop over aiohttp (like LoopMessage: far less CPU per call than httpx's pool, and the
    delivery worker shares the API's process). URLs are sent as built, never re-quoted."""

    def __init__(self, method: str = "POST", timeout_seconds: float = 10.0) -> None:
        self._method = method
        self._session = LazySession(timeout_seconds)

    async def aclose(self) -> None:
        await self._session.aclose()

    async def send(self, configured_url: str, variables: dict[str, str]) -> CallLoopResult:
        """Send the variables in the query string and, for POST, also as the form body."""
        url = URL(build_url(configured_url, variables), encoded=True)
        masked = mask_url(configured_url)
        with UPSTREAM_LATENCY.labels("callloop").time():
            try:
                async with self._session.get().request(
                    self._method,
                    url,
                    # The form aiohttp would build from the dict, encoded here in one call.
                    data=urlencode(variables).encode() if self._method == "POST" else None,
                    headers=FORM_HEADERS if self._method == "POST" else None,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    body = await response.read()
            except TimeoutError:
                raise CallLoopError(f"timeout calling {masked}", transient=True) from None
            except aiohttp.ClientError as exc:
                raise CallLoopError(
                    f"connection error calling {masked}: {type(exc).__name__}", transient=True
                ) from None
        text = body.decode("utf-8", errors="replace")
        excerpt = text[:200].replace(configured_url, masked)
        if 200 <= status < 300:
            return CallLoopResult(status, excerpt)
        transient = status == 429 or status >= 500
        raise CallLoopError(
            f"HTTP {status} from {masked}: {excerpt}", transient=transient, status_code=status
        )
