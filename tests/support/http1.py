"""A minimal HTTP/1.1 client over any trio stream, written with h11.

Tests use it to talk to a server through the test proxy or the TLS front
without any HTTP library that would bring its own connection handling: one
request, one complete response, on a stream the caller opened and closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h11
import trio


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> bytes | None:
        """The first value of header ``name`` (case-insensitive), if any."""
        wanted = name.lower().encode()
        return next((value for key, value in self.headers if key == wanted), None)


async def http_request(
    stream: trio.abc.Stream,
    method: str,
    host: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> HttpResponse:
    """Send one request on ``stream`` and return the whole response."""
    client = h11.Connection(h11.CLIENT)
    all_headers = [("Host", host), ("Content-Length", str(len(body))), *headers]
    for outgoing in (
        h11.Request(method=method, target=target, headers=all_headers),
        h11.Data(data=body),
        h11.EndOfMessage(),
    ):
        data = client.send(outgoing)
        assert data is not None
        await stream.send_all(data)

    response: h11.Response | None = None
    chunks: list[bytes] = []
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError("server closed before the response ended")
    assert response is not None
    return HttpResponse(response.status_code, list(response.headers), b"".join(chunks))
