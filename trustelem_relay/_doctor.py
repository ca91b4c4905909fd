"""``trustelem-relay doctor``: check both legs of the relay, one line each.

Theory of operation
-------------------

:func:`diagnose` walks what the agent does when it runs, step by step, and
stops a leg at its first failure, because every later step depends on it:

* the configuration: it loads, the state directory is usable, the files
  holding secrets are closed to group and others;
* the hub leg: the proxy (TCP, then ``CONNECT``) when one is set, else TCP
  to the hub; TLS for a ``wss://`` hub (the certificate, its expiry, the pin
  when one is set); the websocket upgrade; then the relay handshake itself,
  with an agent-role :class:`~._mux.Connection`: HELLO, WELCOME, CONFIRM,
  and a PING whose PONG proves that the hub accepted the CONFIRM. The
  websocket is then closed politely (close code 1000). The doctor never
  sends INFO, so the hub never lists it as an agent;
* each declared target: DNS, TCP to the declared address, TLS when the
  target looks like TLS, and SCIM discovery, ``GET
  {prefix}/ServiceProviderConfig`` with h11. A 401 or 403 only means that
  the hub must send credentials, so it is a warning, not a failure.

Each check prints one line, ``ok``, ``warn`` or ``FAIL``, its name and what
it found, as soon as it finishes; each is bounded by the same timeout. A
summary line ends the report. Nothing printed is a secret: the proxy is
shown with its credentials redacted, the service_id never (only the first
characters of the lookup id derived from it, as ``hub services`` shows).

The target's TLS check verifies the certificate for ``server_name`` or the
declared host. At run time the agent verifies for the host of the URL the
hub sends, which the doctor cannot know; a target declared by IP address
whose certificate names a host should set ``server_name``.

This module holds the command and the configuration checks; the hub leg's
checks live in :mod:`._doctor_hub`, the targets' in :mod:`._doctor_targets`,
and what both share (the report, error lines, certificates) in
:mod:`._doctor_report`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, TextIO

import trio

from ._config import AgentConfig, ensure_state_dir, redact_url
from ._doctor_hub import HubChecks
from ._doctor_report import EXPIRY_WARNING_DAYS, _reason, _Report
from ._doctor_targets import TargetChecks
from ._errors import ConfigError

__all__ = ["DEFAULT_TIMEOUT", "EXPIRY_WARNING_DAYS", "diagnose", "register"]

#: Seconds each check may take.
DEFAULT_TIMEOUT = 5.0


# --------------------------------------------------------------------------
# The doctor


class _Doctor:
    """The checks, in the order the agent meets what they check."""

    def __init__(self, report: _Report, hub: HubChecks, targets: TargetChecks) -> None:
        self.report = report
        self.hub = hub
        self.targets = targets

    async def run(self, config: AgentConfig) -> None:
        self.check_state_dir(config)
        self.check_secrets(config)
        await self.hub.check_hub(config)
        for target in config.targets.values():
            await self.targets.check_target(target)

    # ------------------------------------------------------------------
    # Configuration

    def check_state_dir(self, config: AgentConfig) -> None:
        check, path = "state dir", config.state_dir
        if not os.path.lexists(path):
            parent = path.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if os.access(parent, os.W_OK | os.X_OK):
                self.report.ok(check, f"{path} does not exist yet; run creates it 0700")
            else:
                self.report.fail(
                    check, f"{path} cannot be created: {parent} is read-only"
                )
            return
        try:
            ensure_state_dir(path)
        except ConfigError as exc:
            self.report.fail(check, str(exc))
            return
        if not os.access(path, os.W_OK | os.X_OK):
            self.report.fail(check, f"{path} is not writable by this user")
            return
        self.report.ok(check, f"{path} (private, writable)")

    def check_secrets(self, config: AgentConfig) -> None:
        # load() checked these files, but a loaded config may be older than
        # a chmod; and it does not check a proxy password's file at all.
        check = "secrets"
        try:
            data = tomllib.loads(config.path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            self.report.warn(check, f"cannot read {config.path} again: {exc}")
            return
        holders: list[tuple[str, Path]] = []
        if "service_id_file" in data:
            base = config.path.absolute().parent
            holders.append(("service_id", base / str(data["service_id_file"])))
        else:
            holders.append(("service_id", config.path))
        if config.proxy is not None and urllib.parse.urlsplit(config.proxy).password:
            holders.append(("proxy password", config.path))
        found = []
        for secret, holder in holders:
            try:
                mode = stat.S_IMODE(os.stat(holder).st_mode)
            except OSError as exc:
                self.report.fail(check, f"{holder}: {_reason(exc)}")
                return
            if mode & 0o077:
                fix = f"chmod 600 {shlex.quote(str(holder))}"
                self.report.fail(
                    check,
                    f"{holder} holds the {secret} but group or others can read it"
                    f" (mode {mode:04o}); fix with: {fix}",
                )
                return
            found.append(f"{secret} in {holder} (mode {mode:04o})")
        self.report.ok(check, "; ".join(found) + ": closed to group and others")


# --------------------------------------------------------------------------
# Entry points


def _load(path: str | os.PathLike[str], report: _Report) -> AgentConfig | None:
    try:
        config = AgentConfig.load(path)
    except ConfigError as exc:
        report.fail("config", str(exc))
        return None
    _show_config(config, report)
    return config


def _show_config(config: AgentConfig, report: _Report) -> None:
    count = len(config.targets)
    proxy = f", proxy {redact_url(config.proxy)}" if config.proxy else ""
    detail = (
        f"{config.path}: hub {redact_url(config.hub)}{proxy},"
        f" {count} target(s) ({', '.join(config.targets) or 'none'})"
    )
    if count:
        report.ok("config", detail)
    else:
        report.warn("config", f"{detail}: the agent can forward nothing")


async def diagnose(
    config: AgentConfig | str | os.PathLike[str],
    *,
    out: TextIO | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    tls: bool | None = None,
    scim_path: str | None = None,
) -> bool:
    """Check the configuration, the hub leg and every target; print a line
    per check and a summary to *out* (default stdout).

    *config* is a loaded configuration, or the path of one to load (a load
    failure is then the first, and only, failed check). *timeout* bounds
    each check. *tls* forces TLS to every target on (True) or off (False)
    instead of guessing from each target's port and settings; *scim_path*
    replaces each target's path_prefix as the SCIM base path. Returns True
    when no check failed (warnings allowed).
    """
    report = _Report(sys.stdout if out is None else out)
    if isinstance(config, AgentConfig):
        _show_config(config, report)
        loaded: AgentConfig | None = config
    else:
        loaded = _load(config, report)
    if loaded is not None:
        doctor = _Doctor(
            report,
            HubChecks(report, timeout=timeout),
            TargetChecks(report, timeout=timeout, tls=tls, scim_path=scim_path),
        )
        await doctor.run(loaded)
    return report.summary()


def cmd_doctor(args: argparse.Namespace) -> int:
    """``doctor``: check both legs; exit 0 if nothing failed, else 1."""
    from ._cli import agent_config_path

    healthy = trio.run(
        lambda: diagnose(
            agent_config_path(args),
            timeout=args.timeout,
            tls=args.tls,
            scim_path=args.scim_path,
        )
    )
    return 0 if healthy else 1


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 600 seconds")
    return value


def _scim_path(text: str) -> str:
    if not text.startswith("/") or not text.isascii() or not text.isprintable():
        raise argparse.ArgumentTypeError("must be a path starting with '/', e.g. /v2")
    if any(char in text for char in " ?#"):
        raise argparse.ArgumentTypeError("must be a plain path, without ?, # or spaces")
    return text


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``doctor`` to the command line."""
    from ._cli import add_config_option

    doctor = subparsers.add_parser(
        "doctor",
        help="check the config, the hub leg and every target",
        description=(
            "Check what the agent needs, one line per check (ok, warn or FAIL):"
            " the config and state directory; the proxy, TCP, TLS, websocket"
            " and relay handshake to the hub; each target's DNS, TCP, TLS and"
            " SCIM discovery (GET .../ServiceProviderConfig). Exits 0 when"
            " nothing failed, 1 otherwise. Prints no secret."
        ),
    )
    add_config_option(doctor)
    doctor.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        help=f"how long each check may take (default: {DEFAULT_TIMEOUT:g})",
    )
    forcing = doctor.add_mutually_exclusive_group()
    forcing.add_argument(
        "--tls",
        dest="tls",
        action="store_const",
        const=True,
        default=None,
        help="use TLS to every target (default: when the port is 443 or"
        " server_name, ca_file or pin_sha256 is set)",
    )
    forcing.add_argument(
        "--no-tls",
        dest="tls",
        action="store_const",
        const=False,
        help="use plain TCP to every target",
    )
    doctor.add_argument(
        "--scim-path",
        metavar="PATH",
        type=_scim_path,
        default=None,
        help="the SCIM base path to discover under, e.g. /v2 or /scim/v2"
        " (default: each target's path_prefix, else /)",
    )
    doctor.set_defaults(func=cmd_doctor)
