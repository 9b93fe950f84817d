"""The HTTP server sends each response's bytes in one write (app/server.py).

Driven at the protocol level, as uvicorn's own tests do: a transport that records what the
server writes and when it closes, so the number of writes is seen exactly (a client reading a
socket cannot tell one write from two).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.server import WRITE_NOW_BYTES, OneWriteHttpToolsProtocol

GET = b"GET /thing HTTP/1.1\r\nHost: example.test\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.closing = False

    @property
    def writes(self) -> list[bytes]:
        return [data for kind, data in self.events if kind == "write"]

    def written(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.events.append(("write", bytes(data)))

    def close(self) -> None:
        self.closing = True
        self.events.append(("close", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def plain_app(body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        start_headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": start_headers})
        await send({"type": "http.response.body", "body": body})

    return app


def connect(protocol_class: type[HttpToolsProtocol], app: Any) -> tuple[Any, RecordingTransport]:
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def turns_until(condition: Any, turns: int = 200) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the server did not get there")


async def test_a_response_leaves_in_one_write() -> None:
    body = b"hello"

    def complete(transport: RecordingTransport) -> bool:
        return transport.written().endswith(body)

    plain, plain_transport = connect(HttpToolsProtocol, plain_app(body))
    plain.data_received(GET)
    await turns_until(lambda: complete(plain_transport))
    assert len(plain_transport.writes) == 2  # uvicorn alone: headers, then body

    protocol, transport = connect(OneWriteHttpToolsProtocol, plain_app(body))
    protocol.data_received(GET)
    await turns_until(lambda: complete(transport))
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written() == plain_transport.written()


async def test_pipelined_responses_keep_their_order() -> None:
    served: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        served.append(scope["path"])
        body = scope["path"].encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    protocol, transport = connect(OneWriteHttpToolsProtocol, app)
    protocol.data_received(
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    await turns_until(lambda: transport.written().endswith(b"/second"))
    written = transport.written()
    assert served == ["/first", "/second"]
    assert written.index(b"/first") < written.index(b"HTTP/1.1 200 OK", 1)


async def test_a_large_body_is_not_gathered_in_memory() -> None:
    """Chunks sent within one turn are written as soon as WRITE_NOW_BYTES wait, not all at the
    turn's end."""
    chunk = b"x" * (WRITE_NOW_BYTES // 2)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(4):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = connect(OneWriteHttpToolsProtocol, app)
    protocol.data_received(GET)
    await turns_until(lambda: transport.written().endswith(b"0\r\n\r\n"))
    assert transport.written().count(chunk) == 4
    assert len(transport.writes) >= 2
    assert max(len(data) for data in transport.writes) < WRITE_NOW_BYTES + len(chunk)


@pytest.mark.parametrize("protocol_class", [HttpToolsProtocol, OneWriteHttpToolsProtocol])
async def test_closing_sends_what_waits_first(protocol_class: type[HttpToolsProtocol]) -> None:
    protocol, transport = connect(protocol_class, plain_app(b"bye", [(b"connection", b"close")]))
    protocol.data_received(GET)
    await turns_until(lambda: transport.closing)
    assert transport.events[-1] == ("close", b"")
    assert transport.written().startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written().endswith(b"bye")
