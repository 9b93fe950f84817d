"""Fake LoopMessage and Call Loop HTTP servers on loopback, for tests and the benchmark.

Each fake is a real uvicorn server in a background thread. Tests script its answers
(status, JSON, delay) and read back every request it received, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Recorded:
    method: str
    path: str
    raw_query: bytes
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def raw_target(self) -> str:
        query = self.raw_query.decode()
        return f"{self.path}?{query}" if query else self.path

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Scripted:
    status: int = 200
    json_body: Any = None
    text: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    # When set, the answer waits until the event is set (at most `hold_timeout` seconds): a
    # request the test holds "in flight" for as long as it needs, without timing guesses.
    hold: threading.Event | None = None
    hold_timeout: float = 30.0


class FakeState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.script: deque[Scripted] = deque()
        self.default: Scripted | None = None
        self.history_pages: list[dict[str, Any]] = []

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.script.clear()
            self.default = None
            self.history_pages = []

    def then(self, *answers: Scripted) -> None:
        """The next requests get these answers, in order; then the default again."""
        with self.lock:
            self.script.extend(answers)

    def always(self, answer: Scripted | None) -> None:
        with self.lock:
            self.default = answer

    def next_answer(self) -> Scripted | None:
        with self.lock:
            if self.script:
                return self.script.popleft()
            return self.default

    def received(self, path_part: str = "") -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if path_part in r.path]


async def _record(state: FakeState, request: Request) -> Recorded:
    body = await request.body()
    entry = Recorded(
        method=request.method,
        path=request.url.path,
        raw_query=request.scope.get("query_string", b""),
        headers={k.decode().lower(): v.decode() for k, v in request.scope["headers"]},
        body=body,
        received_at=time.time(),
    )
    with state.lock:
        state.requests.append(entry)
    return entry


async def _answer(scripted: Scripted) -> Response:
    if scripted.hold is not None:
        deadline = time.monotonic() + scripted.hold_timeout
        while not scripted.hold.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    if scripted.delay:
        await asyncio.sleep(scripted.delay)
    if scripted.text is not None:
        return Response(scripted.text, status_code=scripted.status, headers=scripted.headers)
    return JSONResponse(scripted.json_body, status_code=scripted.status, headers=scripted.headers)


def fake_loopmessage_app(state: FakeState) -> Starlette:
    async def generate_url(request: Request) -> Response:
        entry = await _record(state, request)
        scripted = state.next_answer()
        if scripted is not None:
            return await _answer(scripted)
        link_id = str(uuid.uuid4())
        try:
            body = entry.json().get("body", "")
        except ValueError:
            body = ""
        text = body.replace("[opt-in-code]", "CODE")
        return JSONResponse(
            {
                "id": link_id,
                "imessage": f"imessage://optin@imsg.test&body={text}",
                "sms": f"sms:optin@imsg.test&body={text}",
                "url": f"https://opt-in.imsg.link/opt-in/x/?id={link_id}",
            }
        )

    async def audience_delete(request: Request) -> Response:
        await _record(state, request)
        scripted = state.next_answer()
        if scripted is not None:
            return await _answer(scripted)
        return JSONResponse({"success": True})

    async def history(request: Request) -> Response:
        await _record(state, request)
        page = int(request.query_params.get("page", "1"))
        pages = state.history_pages
        data = pages[page - 1] if 0 < page <= len(pages) else {"data": [], "total": 0}
        return JSONResponse(data)

    return Starlette(
        routes=[
            Route("/api/v1/opt-in/generate-url/", generate_url, methods=["POST"]),
            Route("/api/v1/audience/delete/{contact:path}", audience_delete, methods=["DELETE"]),
            Route("/api/v1/webhooks/history/", history, methods=["GET"]),
        ]
    )


def fake_callloop_app(state: FakeState) -> Starlette:
    async def any_call(request: Request) -> Response:
        await _record(state, request)
        scripted = state.next_answer()
        if scripted is not None:
            return await _answer(scripted)
        return Response("OK", media_type="text/plain")

    return Starlette(
        routes=[Route("/{rest:path}", any_call, methods=["GET", "POST"])],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadedServer:
    """A real uvicorn server for an ASGI app in its own thread: `base_url`, `start()`, `stop()`.

    `lifespan="on"` runs the app's start-up and shut-down (the service itself needs it).
    """

    def __init__(
        self,
        app: Any,
        port: int | None = None,
        lifespan: Literal["on", "off"] = "off",
        **options: Any,  # more of uvicorn.Config's (TLS files, ...)
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=lifespan, **options
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Self:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on {self.base_url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(RuntimeError):
            self.thread.join(timeout=5)


class FakeServer(ThreadedServer):
    """A fake third party running in its own thread: `base_url`, `state`, `stop()`."""

    def __init__(self, app: Starlette, state: FakeState, port: int | None = None) -> None:
        super().__init__(app, port)
        self.state = state


def start_fake_loopmessage(port: int | None = None) -> FakeServer:
    state = FakeState()
    return FakeServer(fake_loopmessage_app(state), state, port).start()


def start_fake_callloop(port: int | None = None) -> FakeServer:
    state = FakeState()
    return FakeServer(fake_callloop_app(state), state, port).start()


if __name__ == "__main__":
    # A fake LoopMessage for trying the service without an account (README, "Browser frontends"):
    #   python -m tests.fakes.servers 9000
    import sys

    fake = start_fake_loopmessage(int(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(f"fake LoopMessage on {fake.base_url} (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        fake.thread.join()
