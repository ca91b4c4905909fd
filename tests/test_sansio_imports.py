"""The sans-IO core imports no I/O library.

Each check runs in a fresh interpreter, so nothing imported by other tests
(or by conftest) can hide a dependency. The package's ``__init__`` is
replaced by an empty stand-in: it re-exports the runtime too, and the claim
under test is about the core modules themselves, whatever the package
around them imports.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

import trustelem_relay

PACKAGE_DIR = pathlib.Path(trustelem_relay.__file__).parent

#: The protocol core.
CORE = [
    "_errors",
    "_events",
    "_keys",
    "_frames",
    "_session",
    "_handshake",
    "_streams",
    "_mux",
]

#: Pure modules next to it, checked when they exist.
PURE = [name for name in ["_policy"] if (PACKAGE_DIR / f"{name}.py").exists()]

#: Never loaded by the core: event loops, network and HTTP libraries.
FORBIDDEN = {
    "trio",
    "trio_websocket",
    "h11",
    "wsproto",
    "ssl",
    "httpx",
    "asyncio",
    "selectors",
    "sqlite3",
}

_PROBE = """
import importlib, json, sys, types

package = types.ModuleType("trustelem_relay")
package.__path__ = [sys.argv[1]]
sys.modules["trustelem_relay"] = package
for name in sys.argv[2:]:
    importlib.import_module("trustelem_relay." + name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(*names: str) -> set[str]:
    """Import the named submodules in a clean interpreter; list what loaded."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, str(PACKAGE_DIR), *names],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(result.stdout))


def top_level(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


def test_protocol_core_loads_no_io_library() -> None:
    loaded = loaded_modules(*CORE)
    assert {f"trustelem_relay.{name}" for name in CORE} <= loaded
    assert top_level(loaded) & FORBIDDEN == set()
    # Not even the socket module: the core never touches the network.
    assert "socket" not in loaded


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_load_no_io_library(name: str) -> None:
    loaded = loaded_modules(name)
    assert top_level(loaded) & FORBIDDEN == set()


def test_websocket_codec_loads_no_event_loop_or_protocol_library() -> None:
    # The codec's only dependency is the websockets package for its C
    # masker; that package's __init__ reads its version through
    # importlib.metadata, which loads socket, so only I/O libraries proper
    # are checked here.
    loaded = loaded_modules("_wsframes")
    assert "trustelem_relay._wsframes" in loaded
    assert top_level(loaded) & (FORBIDDEN - {"selectors"}) == set()


@pytest.mark.parametrize("name", CORE)
def test_core_modules_import_only_the_core_and_their_primitives(name: str) -> None:
    # A static check that also covers imports hidden inside functions.
    allowed_packages = {"attrs", "nacl"}
    allowed_stdlib = {
        "__future__",
        "base64",
        "collections",
        "enum",
        "hmac",
        "json",
        "os",
        "struct",
        "time",
        "typing",
    }
    tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.module is not None
                assert node.module in {*CORE, "_version"}, node.module
                continue
            assert node.module is not None
            roots = {node.module.partition(".")[0]}
        else:
            continue
        assert roots <= allowed_packages | allowed_stdlib, (name, roots)
