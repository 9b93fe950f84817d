"""LoopMessage's HTTP API: generate an opt-in link, read webhook history, delete from audience."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from app.clients.session import LazySession
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
    """LoopMessage over aiohttp: on the link endpoint's hot path, httpx's connection pool
    cost several times more CPU per call than aiohttp's (measured; see README, Performance)."""

    def __init__(self, base_url: str, api_key: str, timeout_seconds: float) -> None:
        self._base_url = base_url
        self._headers = {"Authorization": api_key, "Content-Type": "application/json"}
        self._session = LazySession(timeout_seconds)
        self._latency = UPSTREAM_LATENCY.labels("loopmessage")

    async def aclose(self) -> None:
        await self._session.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self._base_url}{path}"
        with self._latency.time():
            try:
                async with self._session.get().request(
                    method, url, headers=self._headers, allow_redirects=False, **kwargs
                ) as response:
                    status = response.status
                    headers = response.headers
                    body = await response.read()
            except TimeoutError:
                raise LoopMessageError("timeout", "LoopMessage did not answer in time") from None
            except aiohttp.ClientError:
                raise LoopMessageError("unreachable", "LoopMessage could not be reached") from None
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
        body = json.dumps(fields).encode()  # what json= would send, without aiohttp's payload
        data = await self._call("POST", "/api/v1/opt-in/generate-url/", data=body)
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
        data = await self._call(
            "GET",
            "/api/v1/webhooks/history/",
            params={"page": page, "per_page": per_page, "sort_by": "create_date"},
        )
        return data if isinstance(data, dict) else {"data": data}
