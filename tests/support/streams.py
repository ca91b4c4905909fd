"""Byte plumbing for the test servers: copy two streams into each other.

Both the CONNECT proxy and the TLS front end by splicing a client's stream to
an upstream one. The splice ends as soon as either side finishes (end of
file, reset or close), the way simple proxies behave; the caller then closes
both streams.
"""

from __future__ import annotations

import trio

_CHUNK = 65536


async def splice(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    """Copy ``a`` to ``b`` and ``b`` to ``a`` until either side finishes."""
    async with trio.open_nursery() as nursery:

        async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
            try:
                while data := await source.receive_some(_CHUNK):
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # A reset on either side ends the splice like an end of file.
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(pump, a, b)
        nursery.start_soon(pump, b, a)
