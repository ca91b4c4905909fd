"""The command line: ``trustelem-relay`` and ``python -m trustelem_relay``.

Theory of operation
-------------------

:func:`build_parser` makes an argparse parser with the global options and
one sub-parser per command. Commands come from registration functions, one
per module, each called with the sub-parsers object: a command module
exposes ``register(subparsers) -> None``, adds its parsers there and sets
``func`` on each leaf to a handler ``handler(args) -> int | None``. Adding
a module's commands is one line in :func:`build_parser`. The names ``run``,
``status``, ``doctor`` and ``demo`` are reserved for the agent's runtime
commands, which live in their own module.

:func:`main` parses, sets up logging for the package, runs the handler and
turns every expected failure into exactly one line on stderr,
``trustelem-relay: error: <message>``, and an exit status:

* 0 — done;
* 1 — a runtime failure (a relay error, or the operating system refused);
* 2 — bad usage or configuration (argparse errors, :class:`ConfigError`);
* 130 — interrupted with Ctrl-C.

Messages come from the library, which keeps secrets out of them; nothing
here prints a value it read from a file except target names and addresses.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import attrs

from . import _agent_commands, _demo, _doctor, _hub_commands
from ._config import AgentConfig, list_targets, remove_target, set_target
from ._errors import ConfigError, RelayError
from ._policy import Target
from ._version import __version__

PROG = "trustelem-relay"

#: Commands that other modules register; nothing here may take these names.
RESERVED_COMMANDS = frozenset({"run", "status", "doctor", "demo"})

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class UsageError(Exception):
    """Raised instead of argparse's exit, so that main() decides the exit."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, handled by main()."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _printable(text: str) -> str:
    """*text*, with anything that could drive a terminal escaped."""
    return text if text.isprintable() else ascii(text)[1:-1]


def agent_config_path(args: argparse.Namespace) -> pathlib.Path:
    """The agent's config file: ``--config``, else the default path."""
    path: str | None = getattr(args, "config", None)
    return pathlib.Path(path) if path else AgentConfig.default_path()


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Accept ``--config PATH`` after a command too, for the agent's file.

    Absent, it leaves the global option's value alone (SUPPRESS), so both
    ``--config X targets`` and ``targets --config X`` work.
    """
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the agent's config file (default: $TRUSTELEM_CONNECT_CONFIG,"
        " else ./connect.toml)",
    )


# --------------------------------------------------------------------------
# Target commands


def _flags(target: Target) -> list[str]:
    """What sets a target apart from the defaults, loudest first."""
    flags = []
    if not target.tls.verify:
        pinned = " pin-only" if target.tls.pin_sha256 else ""
        flags.append(f"tls-verify=off (INSECURE{pinned})")
    if target.tls.server_name:
        flags.append(f"server-name={target.tls.server_name}")
    if target.tls.ca_file:
        flags.append(f"ca-file={_printable(str(target.tls.ca_file))}")
    if target.tls.pin_sha256:
        flags.append("pinned")
    if target.methods is not None:
        flags.append("methods=" + ",".join(sorted(target.methods)))
    if target.path_prefix is not None:
        flags.append(f"prefix={target.path_prefix}")
    defaults = attrs.fields(Target)
    if target.max_concurrent != defaults.max_concurrent.default:
        flags.append(f"max-concurrent={target.max_concurrent}")
    if target.timeout != defaults.timeout.default:
        flags.append(f"timeout={target.timeout:g}s")
    return flags


def cmd_targets(args: argparse.Namespace) -> int:
    """``targets``: one line per declared target, in file order."""
    path = agent_config_path(args)
    targets = list_targets(path)
    if not targets:
        hint = f"{PROG} set-target NAME HOST:PORT"
        print(f"no targets declared in {path}; add one with: {hint}")
        return 0
    name_width = max(len(t.name) for t in targets)
    addr_width = max(len(t.addr) for t in targets)
    for target in targets:
        line = f"{target.name:<{name_width}}  {target.addr:<{addr_width}}"
        print("  ".join([line, *_flags(target)]).rstrip())
    return 0


def cmd_set_target(args: argparse.Namespace) -> int:
    """``set-target NAME HOST:PORT``: declare or re-address a target."""
    path = agent_config_path(args)
    set_target(path, args.name, args.addr)
    target = next(t for t in list_targets(path) if t.name == args.name)
    print(f"target {target.name} -> {target.addr} (written to {path})")
    return 0


def cmd_remove_target(args: argparse.Namespace) -> int:
    """``remove-target NAME``: forget a target."""
    path = agent_config_path(args)
    remove_target(path, args.name)
    print(f"target {args.name} removed (written to {path})")
    return 0


def _register_target_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    listing = subparsers.add_parser(
        "targets",
        help="list the declared targets",
        description=(
            "List the targets declared in the agent's config file, one per line:"
            " name, address, then what differs from the defaults. A target"
            " whose TLS verification is off is flagged INSECURE."
        ),
    )
    add_config_option(listing)
    listing.set_defaults(func=cmd_targets)

    setting = subparsers.add_parser(
        "set-target",
        help="declare a target, or change its address",
        description=(
            "Declare target NAME at HOST:PORT, or change the address of an"
            " existing one (its other settings are kept). The config file is"
            " rewritten atomically and keeps its comments."
        ),
    )
    setting.add_argument(
        "name",
        metavar="NAME",
        help="1-63 lower-case letters, digits and hyphens, e.g. scim-server",
    )
    setting.add_argument(
        "addr",
        metavar="HOST:PORT",
        help="the only address the agent dials for NAME, e.g. 10.0.0.12:443"
        " or [fd00::12]:443",
    )
    add_config_option(setting)
    setting.set_defaults(func=cmd_set_target)

    removing = subparsers.add_parser(
        "remove-target",
        help="remove a declared target",
        description="Remove target NAME from the config file, keeping its comments.",
    )
    removing.add_argument("name", metavar="NAME", help="a declared target's name")
    add_config_option(removing)
    removing.set_defaults(func=cmd_remove_target)


# --------------------------------------------------------------------------
# Parser and entry point


def build_parser() -> argparse.ArgumentParser:
    """The full parser: global options, then every module's commands."""
    parser = _Parser(
        prog=PROG,
        description=(
            "Relay SCIM provisioning from a hub to applications on a private"
            " network. The agent dials only the targets declared in its"
            " config file."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=None,
        help="the agent's config file (default: $TRUSTELEM_CONNECT_CONFIG,"
        " else ./connect.toml)",
    )
    parser.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default="INFO",
        type=str.upper,
        help="the least severe log messages shown on stderr (default: INFO)",
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    # One line per module that brings commands.
    _register_target_commands(subparsers)
    _agent_commands.register(subparsers)
    _demo.register(subparsers)
    _doctor.register(subparsers)
    _hub_commands.register(subparsers)
    return parser


def _log_handler(level: str) -> logging.Handler:
    """Send the package's log records to stderr at *level* and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logger = logging.getLogger("trustelem_relay")
    logger.setLevel(level)
    logger.addHandler(handler)
    return handler


def _error(message: str) -> None:
    print(f"{PROG}: error: {_printable(_one_line(message))}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``) and
    return the exit status. Never raises for an expected failure."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        _error(str(exc))
        return 2
    except SystemExit as exc:
        # --help and --version print and exit; keep their status.
        return exc.code if isinstance(exc.code, int) else 0

    # The handler and level are undone afterwards so that main() can run
    # several times in one process (tests) without stacking handlers.
    package_logger = logging.getLogger("trustelem_relay")
    previous_level = package_logger.level
    handler = _log_handler(args.log_level)
    try:
        status = args.func(args)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    except (RelayError, OSError) as exc:
        _error(str(exc) or type(exc).__name__)
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
    return 0 if status is None else int(status)
