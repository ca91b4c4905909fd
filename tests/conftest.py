"""Fixtures shared by every test module; each lives in a ``support`` module.

Import a fixture here to make it available everywhere; keep its code, and
its documentation, in the support module it belongs to (see
docs/testing.md).
"""

from hypothesis import HealthCheck, settings
from support.leaks import no_resource_warnings
from support.listener import counting_listener
from support.ports import closed_port
from support.proxy import connect_proxy
from support.relay import relay_kit, relay_log
from support.scim import scim_server, scim_server_with_token, scim_tls_server
from support.tls import ca_file, other_tls, tls

__all__ = [
    "ca_file",
    "closed_port",
    "connect_proxy",
    "counting_listener",
    "no_resource_warnings",
    "other_tls",
    "relay_kit",
    "relay_log",
    "scim_server",
    "scim_server_with_token",
    "scim_tls_server",
    "tls",
]

# `nox -s fuzz` runs the protocol properties with this profile: many more
# examples, no deadline. The default profile keeps the suite quick.
settings.register_profile(
    "fuzz",
    max_examples=5_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
