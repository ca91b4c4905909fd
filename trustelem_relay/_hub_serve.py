"""``hub serve``: run a standalone hub until SIGINT or SIGTERM.

It loads ``hub.toml`` (:class:`~._hubconfig.HubConfig`), opens the store it
names, and serves the agents' websocket endpoint on ``listen`` (wss when
``tls_cert``/``tls_key`` are set, plain ws otherwise, for a hub behind a
TLS-terminating load balancer). Once listening it prints one line on stdout,
``listening on HOST:PORT``, so a supervisor or a test can wait for it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
from typing import Any

import trio

from ._allocator import keep_large_buffers
from ._hub import Hub
from ._hubconfig import HubConfig
from ._hubstore import open_store

logger = logging.getLogger("trustelem_relay.cli")


def server_ssl_context(config: HubConfig) -> ssl.SSLContext | None:
    """The TLS context of the agents' endpoint, or None for plain ws."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def serve_until_signalled(hub: Hub, config: HubConfig) -> int:
    context = server_ssl_context(config)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: hub.serve(
                config.listen.host,
                config.listen.port,
                ssl_context=context,
                task_status=task_status,
            )
        )
        print(f"listening on {config.listen.host}:{port}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("%s received: stopping", signal.Signals(signum).name)
                break
        nursery.cancel_scope.cancel()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``hub serve``: the hub in the foreground."""
    from ._hub_commands import config_path

    config = HubConfig.load(config_path(args))
    store = open_store(config.store)
    try:
        hub = Hub(store, limits=config.limits, path=config.path)
        keep_large_buffers()
        return trio.run(serve_until_signalled, hub, config)
    finally:
        store.close()
        sys.stdout.flush()


def register(commands: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add ``serve`` under the ``hub`` command; return its parser."""
    serve: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run a standalone hub until SIGINT/SIGTERM",
        description=(
            "Serve the agents' websocket endpoint described by hub.toml, with"
            " the service registry in its store, until SIGINT or SIGTERM."
        ),
    )
    serve.set_defaults(func=cmd_serve)
    return serve
