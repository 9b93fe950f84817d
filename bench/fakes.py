"""Fake LoopMessage and Call Loop on loopback, in their own process, for `make bench`.

LoopMessage is the test fake (tests/fakes/servers.py). Call Loop is a lean recorder: it keeps
(phone, receive time) per request and serves them at GET /__bench/receipts, so the benchmark
can measure webhook-200 -> Call Loop delivery latency.

`fakes.py proxy PORT UPSTREAM` runs instead the reference for the link figure, in a process of
its own: the least a Python proxy can do (raw ASGI on uvicorn, one aiohttp session, no
validation, no database, no logging), forwarding each POST body to UPSTREAM and its answer back.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.servers import FakeState, fake_loopmessage_app

receipts: list[tuple[str, float]] = []


async def callloop_recorder(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    received_at = time.time()
    while True:  # drain the body
        message = await receive()
        if not message.get("more_body"):
            break
    if scope["path"] == "/__bench/receipts":
        body = json.dumps(receipts).encode()
        content_type = b"application/json"
    else:
        phone = parse_qs(scope["query_string"].decode()).get("phone", [""])[0]
        receipts.append((phone, received_at))
        body, content_type = b"OK", b"text/plain"
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
    )
    await send({"type": "http.response.body", "body": body})


class QuietLoopMessage:
    """The test fake keeps every request it gets; under load only the answer matters."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.app = fake_loopmessage_app(self.state)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
        if len(self.state.requests) > 1000:
            self.state.requests.clear()


async def main(loop_port: int, callloop_port: int) -> None:
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        for app, port in ((QuietLoopMessage(), loop_port), (callloop_recorder, callloop_port))
    ]
    await asyncio.gather(*(server.serve() for server in servers))


def bare_proxy(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if session is None:
            session = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json", "Authorization": "bench"}
        async with session.post(upstream, data=body, headers=headers) as response:
            answer = await response.read()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


if __name__ == "__main__":
    if sys.argv[1] == "proxy":
        uvicorn.run(
            bare_proxy(sys.argv[3]),
            host="127.0.0.1",
            port=int(sys.argv[2]),
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
    else:
        asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
