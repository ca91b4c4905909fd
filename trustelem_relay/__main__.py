"""``python -m trustelem_relay``: the same command line as ``trustelem-relay``."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
