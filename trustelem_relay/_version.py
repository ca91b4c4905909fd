"""The package version, kept in one place for setuptools and the CLI."""

__version__ = "0.1.0"

#: The wire protocol versions this build speaks, lowest and highest.
PROTOCOL_VERSION_MIN = 1
PROTOCOL_VERSION_MAX = 1
