"""The origin server of the benchmarks: a small HTTP/1.1 server in trio + h11.

It runs as its own process, so that the process measured (the direct client,
or the hub and the agent) never shares an interpreter with it::

    python benchmarks/origin.py [--port N]

prints ``listening on 127.0.0.1:PORT`` once it accepts connections, then
serves until SIGINT or SIGTERM. It listens on 127.0.0.1 only.

Routes (every answer carries a Content-Length):

* ``POST /json`` reads a JSON body and answers a 1 KiB JSON document, the
  size of a SCIM user; ``GET /json`` answers the same document;
* ``GET /bytes/N`` answers N bytes of ``application/octet-stream``;
* ``POST /sink`` reads the body and answers ``{"received": N}``;
* anything else is 404.

Connections are kept alive unless the client asks for ``Connection: close``,
so the same server serves both the keep-alive and the one-connection-per-
request clients. Bodies are built once and sent without copies.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from functools import partial

import h11
import trio

from trustelem_relay._allocator import keep_large_buffers

#: Bytes read from a connection at once.
RECEIVE_SIZE = 256 * 1024

#: Largest body any route accepts or sends.
MAX_BODY = 64 * 1024 * 1024


def json_document(size: int = 1024) -> bytes:
    """A JSON object of exactly ``size`` bytes that looks like a SCIM user."""
    record = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": "2819c223-7f76-453a-919d-413861904646",
        "userName": "bjensen@example.com",
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "active": True,
        "pad": "",
    }
    base = len(json.dumps(record, separators=(",", ":")))
    record["pad"] = "x" * (size - base)
    text = json.dumps(record, separators=(",", ":")).encode("ascii")
    assert len(text) == size
    return text


JSON_BODY = json_document()
_BLOBS: dict[int, bytes] = {}


def _blob(size: int) -> bytes:
    blob = _BLOBS.get(size)
    if blob is None:
        blob = _BLOBS[size] = bytes(range(256)) * (size // 256) + bytes(size % 256)
    return blob


def route(method: bytes, target: bytes, received: int) -> tuple[int, bytes, bytes]:
    """Status, content type and body of the answer to one request."""
    if target == b"/json" and method in (b"GET", b"POST"):
        return 200, b"application/json", JSON_BODY
    if target == b"/sink" and method == b"POST":
        body = b'{"received":%d}' % received
        return 200, b"application/json", body
    if target.startswith(b"/bytes/") and method == b"GET":
        digits = target[len(b"/bytes/") :]
        if digits.isdigit() and int(digits) <= MAX_BODY:
            return 200, b"application/octet-stream", _blob(int(digits))
    return 404, b"text/plain", b"not found\n"


async def serve_connection(stream: trio.SocketStream) -> None:
    """Answer requests on one connection until either side closes it."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            # Read one whole request, counting its body.
            request: h11.Request | None = None
            received = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    received += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return  # ConnectionClosed or PAUSED: the client is done

            # Answer it; the body goes out as is, without a copy.
            assert request is not None
            status, content_type, body = route(request.method, request.target, received)
            headers = [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
            ]
            head = conn.send(h11.Response(status_code=status, headers=headers))
            await stream.send_all(head or b"")
            for part in conn.send_with_data_passthrough(h11.Data(data=body)) or ():
                await stream.send_all(part)
            conn.send(h11.EndOfMessage())

            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def serve(port: int) -> None:
    """Listen on 127.0.0.1:``port`` and serve until SIGINT or SIGTERM."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(
                trio.serve_tcp, serve_connection, port, host="127.0.0.1", backlog=1024
            )
        )
        bound = listeners[0].socket.getsockname()[1]
        print(f"listening on 127.0.0.1:{bound}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    # As the relay's own processes do: a target elsewhere would not share
    # these two cores, so its allocator's page faults should not either.
    keep_large_buffers()
    trio.run(serve, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
