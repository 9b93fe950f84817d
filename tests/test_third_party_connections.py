"""Connections to LoopMessage and Call Loop (app/clients/http1.py), seen through the service.

A fake third party at the socket level answers each request with the bytes a test scripts
(framing, closing, dropping), so what the client must cope with on the wire is exercised for
real: kept-alive connections, a connection the server closes as a request goes out, chunked
and close-delimited answers, TLS, and the cap on open connections.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
import uvloop

from app.clients.http1 import HttpCallError, OriginPool
from tests.conftest import GROUP_KEY, ApiFactory, opt_in_payload, wait_until
from tests.fakes.servers import FakeState, Scripted, ThreadedServer, fake_loopmessage_app

LINK = {"id": "link-1", "imessage": "imessage://x", "sms": "sms://x", "url": "https://x"}


def answer(
    body: bytes, *, status: str = "200 OK", chunked: bool = False, close: bool = False
) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    if chunked:
        middle = len(body) // 2
        parts = [body[:middle], body[middle:]]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed
    if close:  # no length: the body ends when the connection does
        return (head + "Connection: close\r\n\r\n").encode() + body
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Received:
    connection: int
    head: bytes
    body: bytes


@dataclass
class RawLoopMessage:
    """`respond(request number, number on its connection)`: the bytes to send back, or None to
    close the connection without a word."""

    respond: Callable[[int, int], bytes | None]
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    base_url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, on_connection = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.received.append(Received(connection, head, body))
                on_connection += 1
                data = self.respond(len(self.received), on_connection)
                if data is None:
                    return
                writer.write(data)
                await writer.drain()
                if b"Connection: close" in data:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


Respond = Callable[[int, int], bytes | None]
StartRaw = Callable[[Respond], Awaitable[RawLoopMessage]]


@pytest.fixture
async def raw_loop() -> AsyncIterator[StartRaw]:
    servers: list[asyncio.Server] = []

    async def start(respond: Respond) -> RawLoopMessage:
        fake = RawLoopMessage(respond)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        servers.append(server)
        fake.base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return fake

    yield start
    for server in servers:
        server.close()


async def test_link_requests_share_one_kept_alive_connection(
    make_api: ApiFactory, raw_loop: StartRaw
) -> None:
    fake = await raw_loop(lambda n, _: answer(json.dumps({**LINK, "id": f"link-{n}"}).encode()))
    api = await make_api(loop_api_base_url=fake.base_url)
    ids = [(await api.client.post("/v1/opt-in-links", json={})).json()["id"] for _ in range(3)]
    assert ids == ["link-1", "link-2", "link-3"]
    assert [r.connection for r in fake.received] == [1, 1, 1]
    head = fake.received[0].head.decode()
    assert head.startswith("POST /api/v1/opt-in/generate-url/ HTTP/1.1\r\n")
    assert f"Host: {fake.base_url.removeprefix('http://')}\r\n" in head
    assert "Authorization: loop-key-test-55d2\r\n" in head
    assert json.loads(fake.received[0].body)["body"]


async def test_a_kept_alive_connection_closed_by_loopmessage_is_replaced(
    make_api: ApiFactory, raw_loop: StartRaw
) -> None:
    # The second request arrives on a connection LoopMessage is closing (its keep-alive ran
    # out): it is closed without an answer. The client sends it again on a new connection.
    def respond(n: int, on_connection: int) -> bytes | None:
        return None if on_connection == 2 else answer(json.dumps({**LINK, "id": f"l{n}"}).encode())

    fake = await raw_loop(respond)
    api = await make_api(loop_api_base_url=fake.base_url)
    first = await api.client.post("/v1/opt-in-links", json={})
    second = await api.client.post("/v1/opt-in-links", json={})
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["id"] == "l3"
    assert [r.connection for r in fake.received] == [1, 1, 2]
    assert fake.received[1].body == fake.received[2].body  # the same request, sent again


async def test_a_new_connection_closed_without_an_answer_is_not_retried(
    make_api: ApiFactory, raw_loop: StartRaw
) -> None:
    fake = await raw_loop(lambda n, _: None)
    api = await make_api(loop_api_base_url=fake.base_url)
    response = await api.client.post("/v1/opt-in-links", json={})
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unreachable"
    assert len(fake.received) == 1  # sent once: the server may have acted on it


@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_chunked_and_close_delimited_answers_are_read_whole(
    make_api: ApiFactory, raw_loop: StartRaw, framing: str
) -> None:
    body = json.dumps({**LINK, "id": "framed-" + "x" * 5000}).encode()
    fake = await raw_loop(
        lambda n, _: answer(body, chunked=framing == "chunked", close=framing == "close")
    )
    api = await make_api(loop_api_base_url=fake.base_url)
    for _ in range(2):  # after a close-delimited answer the next call opens a new connection
        response = await api.client.post("/v1/opt-in-links", json={})
        assert response.status_code == 200
        assert response.json()["id"] == "framed-" + "x" * 5000
    assert len({r.connection for r in fake.received}) == (1 if framing == "chunked" else 2)


async def test_an_answer_that_is_not_http_counts_as_unreachable(
    make_api: ApiFactory, raw_loop: StartRaw
) -> None:
    fake = await raw_loop(lambda n, _: b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    api = await make_api(loop_api_base_url=fake.base_url)
    response = await api.client.post("/v1/opt-in-links", json={})
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unreachable"


@pytest.fixture(scope="module")
def tls_loopmessage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    issued = ca.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    state = FakeState()
    state.always(Scripted(200, {**LINK, "id": "over-tls"}))
    server = ThreadedServer(
        fake_loopmessage_app(state), ssl_certfile=str(cert), ssl_keyfile=str(key)
    ).start()
    yield f"https://localhost:{server.port}", ca_file
    server.stop()


async def test_https_loopmessage_is_verified_against_the_trusted_cas(
    make_api: ApiFactory,
    tls_loopmessage: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base_url, ca_file = tls_loopmessage
    api = await make_api(loop_api_base_url=base_url)
    refused = await api.client.post("/v1/opt-in-links", json={})
    assert refused.status_code == 503  # a certificate from an unknown CA: not connected

    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # what the system's store would hold
    api = await make_api(loop_api_base_url=base_url)
    response = await api.client.post("/v1/opt-in-links", json={})
    assert response.status_code == 200
    assert response.json()["id"] == "over-tls"


async def test_callers_beyond_the_connection_cap_wait_for_a_free_connection(
    raw_loop: StartRaw,
) -> None:
    fake = await raw_loop(lambda n, _: answer(b"{}"))
    pool = OriginPool(
        fake.base_url, timeout_seconds=10, connect_timeout_seconds=5, max_connections=2
    )
    calls = [asyncio.create_task(pool.request("POST", "/x", body=b"{}")) for _ in range(6)]
    answers = await asyncio.gather(*calls)
    assert [a.status for a in answers] == [200] * 6
    assert fake.connections <= 2
    pool.close()
    with pytest.raises(HttpCallError):
        await pool.request("GET", "/x")


async def test_the_client_works_on_uvloop(
    raw_loop: StartRaw, tls_loopmessage: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service runs on uvloop (uvicorn's choice when installed), whose transports are not
    asyncio's classes and whose TLS is its own; the tests above run on asyncio's loop."""
    fake = await raw_loop(lambda n, _: answer(b'{"n": %d}' % n))
    tls_url, ca_file = tls_loopmessage
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))

    async def calls() -> list[int]:
        statuses = []
        for base_url in (fake.base_url, tls_url):
            pool = OriginPool(base_url, 10, connect_timeout_seconds=5)
            one_by_one = [await pool.request("POST", "/api/v1/opt-in/generate-url/", body=b"{}")]
            together = await asyncio.gather(
                *(
                    pool.request("POST", "/api/v1/opt-in/generate-url/", body=b"{}")
                    for _ in range(4)
                )
            )
            statuses += [answer.status for answer in (*one_by_one, *together)]
            pool.close()
        return statuses

    assert await asyncio.to_thread(uvloop.run, calls()) == [200] * 10
    assert len(fake.received) == 5
    assert fake.connections <= 4  # the first connection was kept and used again


async def test_call_loop_gets_the_url_as_configured_over_one_kept_alive_connection(
    make_api: ApiFactory, raw_loop: StartRaw
) -> None:
    fake = await raw_loop(lambda n, _: answer(b"OK"))
    api = await make_api(callloop_group_url=f"{fake.base_url}/r/?{GROUP_KEY}")
    for n in range(3):
        assert (await api.webhook(opt_in_payload(contact=f"+1555555014{n}"))).status_code == 200
        await wait_until(lambda n=n: len(fake.received) == n + 1)
    assert [r.connection for r in fake.received] == [1, 1, 1]
    head = fake.received[0].head.decode()
    # The bare group key kept byte for byte, then the variables; the form in the body too.
    assert head.startswith(f"POST /r/?{GROUP_KEY}&phone=%2B15555550140")
    assert "Content-Type: application/x-www-form-urlencoded\r\n" in head
    assert fake.received[0].body.startswith(b"phone=%2B15555550140")


async def test_a_group_url_that_cannot_be_sent_as_is_makes_a_dead_job(
    make_api: ApiFactory, raw_loop: StartRaw
) -> None:
    fake = await raw_loop(lambda n, _: answer(b"OK"))
    api = await make_api(callloop_group_url=f"{fake.base_url}/r/?{GROUP_KEY} x")
    assert (await api.webhook(opt_in_payload(contact="+15555550150"))).status_code == 200
    [dead] = await wait_until(lambda: api.deliveries("dead"))
    assert "unusable URL" in dead["last_error"] and GROUP_KEY not in dead["last_error"]
    assert fake.received == []  # nothing was sent
