"""LoopMessage's HTTP API: generate an opt-in link, read webhook history, delete from audience."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from app.clients.http1 import HttpCallError, HttpCallTimeout, OriginPool
from app.jsontext import compact_bytes
from app.observability import UPSTREAM_LATENCY


class LoopMessageError(Exception):
    """A failed call, classified so the caller can map it to 502 / 503 / 504."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status_code: int | None = None,
        code: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind  # rejected | upstream_error | rate_limited | timeout | unreachable
        self.detail = detail
        self.status_code = status_code
        self.code = code
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.kind != "rejected"


@dataclass(frozen=True)
class OptInLinks:
    id: str
    imessage: str | None
    sms: str | None
    url: str | None
    whatsapp: str | None


def _retry_after(headers: Mapping[str, str]) -> int | None:
    value = headers.get("retry-after", "")
    return int(value) if value.isdigit() else None


class LoopMessageClient:
    """LoopMessage over the small HTTP/1.1 client of app/clients/http1.py: the link endpoint
    calls it on every landing-page visit, and that client costs less than half of aiohttp's CPU
    per call, itself a fraction of httpx's (measured; README, Performance)."""

    def __init__(self, base_url: str, api_key: str, timeout_seconds: float) -> None:
        if not (api_key.isascii() and api_key.isprintable()):
            raise ValueError("the LoopMessage API key must be printable ASCII")
        self._pool = OriginPool(base_url, timeout_seconds, connect_timeout_seconds=5.0)
        self._json_headers = (
            f"Authorization: {api_key}\r\nContent-Type: application/json\r\n"
            "User-Agent: optin-backend\r\n"
        ).encode("latin-1")
        self._headers = f"Authorization: {api_key}\r\nUser-Agent: optin-backend\r\n".encode(
            "latin-1"
        )
        self._latency = UPSTREAM_LATENCY.labels("loopmessage")

    async def aclose(self) -> None:
        self._pool.close()

    async def _call(self, method: str, path: str, json_body: bytes | None = None) -> Any:
        with self._latency.time():
            try:
                if json_body is None:
                    response = await self._pool.request(method, path, self._headers)
                else:
                    response = await self._pool.request(method, path, self._json_headers, json_body)
            except HttpCallTimeout:
                raise LoopMessageError("timeout", "LoopMessage did not answer in time") from None
            except HttpCallError:
                raise LoopMessageError("unreachable", "LoopMessage could not be reached") from None
        status, headers, body = response.status, response.headers, response.body
        if status == 429:
            raise LoopMessageError(
                "rate_limited",
                "LoopMessage is rate limiting this service",
                status_code=429,
                retry_after=_retry_after(headers),
            )
        if status >= 500:
            raise LoopMessageError(
                "upstream_error",
                f"LoopMessage answered {status}",
                status_code=status,
                retry_after=_retry_after(headers),
            )
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if status >= 400 or (isinstance(data, dict) and data.get("success") is False):
            code = data.get("code") if isinstance(data, dict) else None
            message = data.get("message") if isinstance(data, dict) else None
            raise LoopMessageError(
                "rejected",
                f"LoopMessage refused the request ({code}: {message})"
                if code
                else f"LoopMessage refused the request (HTTP {status})",
                status_code=status,
                code=code if isinstance(code, int) else None,
            )
        return data

    async def generate_url(self, fields: dict[str, Any]) -> OptInLinks:
        """POST /api/v1/opt-in/generate-url/ with the body and every attribution field."""
        body = compact_bytes(fields)
        data = await self._call("POST", "/api/v1/opt-in/generate-url/", body)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise LoopMessageError("upstream_error", "LoopMessage answered without a link id")

        def text(name: str) -> str | None:
            value = data.get(name)
            return value if isinstance(value, str) and value else None

        return OptInLinks(
            id=data["id"],
            imessage=text("imessage"),
            sms=text("sms"),
            url=text("url"),
            whatsapp=text("whatsapp"),
        )

    async def delete_audience(self, contact: str) -> None:
        """DELETE /api/v1/audience/delete/{contact}/: the contact is unsubscribed at LoopMessage."""
        await self._call("DELETE", f"/api/v1/audience/delete/{quote(contact, safe='')}/")

    async def webhook_history(self, page: int, per_page: int) -> dict[str, Any]:
        """GET /api/v1/webhooks/history/: past webhooks, newest first."""
        query = urlencode({"page": page, "per_page": per_page, "sort_by": "create_date"})
        data = await self._call("GET", f"/api/v1/webhooks/history/?{query}")
        return data if isinstance(data, dict) else {"data": data}
