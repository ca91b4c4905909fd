"""Editing connect.toml: ``set-target``, ``remove-target`` and ``targets``.

Theory of operation
-------------------

Editing (``set-target``, ``remove-target``) goes through :mod:`tomlkit`, so
the operator's comments, blank lines and key order survive. An edit runs in
this order: validate the arguments; read the file and check it is valid as
it stands; apply the change to the tomlkit document; check that the new
text parses to exactly the old data plus the change, and is still valid;
write a temporary file in the same directory with the original mode, fsync
it and :func:`os.replace` it over the original. Any failure before the
replace leaves the file byte-for-byte unchanged. Two edits racing each
other are not serialised: the last one wins.

Editing builds on loading (:mod:`._config`) for reading and checking the
file, and on :mod:`._secrets` for the atomic write; neither imports this
module at import time.
"""

from __future__ import annotations

import os
import pathlib
import re
import stat
from collections.abc import Callable
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.items import InlineTable

from ._config import _checker, _loads, _parse, _read, _target_key
from ._policy import Target, parse_addr, parse_target_name
from ._secrets import _atomic_write, _os_error

# A table header line, and the header of one target's table. Both are only
# used to find lines; whatever they find is checked by parsing the result.
_HEADER_RE = re.compile(r"\s*\[")
_COMMENT_RE = re.compile(r"\s*#")
_TARGET_HEADER = (
    r"""\s*\[\s*target\s*\.\s*(?:{name}|"{name}"|'{name}')\s*\]\s*(?:#.*)?"""
)


def _without_empty_targets(data: dict[str, Any]) -> dict[str, Any]:
    # An empty [target] table and no table at all mean the same thing.
    if data.get("target") == {}:
        return {key: value for key, value in data.items() if key != "target"}
    return data


def _edit(
    path: str | os.PathLike[str],
    change: Callable[[str, dict[str, Any]], str],
) -> None:
    """Rewrite the file with ``change(text, data)``, then write it back.

    *change* returns the new text and edits *data* (what tomllib made of
    the old text) to what the new text must parse to. The file is only
    written if that holds and the new data passes the schema check.
    """
    path = pathlib.Path(path)
    check = _checker(path)
    raw, info = _read(path)
    data = _loads(check, raw)
    _parse(check, data)

    unsafe = check.fail(
        "", "this layout cannot be edited safely; edit the file by hand"
    )
    try:
        new_text = change(raw.decode("utf-8"), data)
    except tomlkit.exceptions.TOMLKitError:
        raise unsafe from None
    new_data = _loads(check, new_text.encode("utf-8"))
    if _without_empty_targets(new_data) != _without_empty_targets(data):
        raise unsafe
    _parse(check, new_data)

    # Root editing another user's file must leave it readable by that user.
    owner = None
    if os.geteuid() == 0 and (info.st_uid, info.st_gid) != (0, 0):
        owner = (info.st_uid, info.st_gid)
    # Edit the file a symlink points to, rather than replace the link.
    real = path.resolve()
    try:
        _atomic_write(real, new_text.encode("utf-8"), stat.S_IMODE(info.st_mode), owner)
    except OSError as exc:
        raise _os_error(check.file, "write it", exc) from None


def set_target(path: str | os.PathLike[str], name: str, addr: str) -> None:
    """Declare target *name* at *addr*, or change the address of an existing
    one, keeping its other keys. The file must exist and be valid.

    Raises ConfigError, leaving the file untouched, on any problem.
    """
    check = _checker(pathlib.Path(path))
    name = check.parsed("", parse_target_name, name)
    host, port = check.parsed(f"{_target_key(name)}.addr", parse_addr, addr)
    canonical = Target(name=name, host=host, port=port).addr

    def change(text: str, data: dict[str, Any]) -> str:
        data.setdefault("target", {}).setdefault(name, {})["addr"] = canonical
        document = tomlkit.parse(text)
        if "target" not in document:
            document.add("target", tomlkit.table(is_super_table=True))
        tables: Any = document["target"]
        if name in tables:
            # Assigning to an existing key keeps its trailing comment.
            tables[name]["addr"] = canonical
        else:
            inline = isinstance(tables, InlineTable)
            entry = tomlkit.inline_table() if inline else tomlkit.table()
            entry.add("addr", canonical)
            tables.add(name, entry)
        return document.as_string()

    _edit(path, change)


def _cut_target_table(text: str, name: str) -> str | None:
    """Remove ``[target.NAME]`` and its lines from *text*, or return None
    when the file does not have that layout.

    The comment lines right above the header go with the table; the
    comment lines right above the next header belong to that table and
    stay.
    """
    lines = text.splitlines(keepends=True)
    header = re.compile(_TARGET_HEADER.format(name=re.escape(name)))
    found = [i for i, line in enumerate(lines) if header.fullmatch(line.rstrip("\r\n"))]
    if len(found) != 1:
        return None
    start = found[0]
    end = next(
        (i for i in range(start + 1, len(lines)) if _HEADER_RE.match(lines[i])),
        len(lines),
    )
    while start > 0 and _COMMENT_RE.match(lines[start - 1]):
        start -= 1
    while end > start and _COMMENT_RE.match(lines[end - 1]):
        end -= 1
    if end == len(lines):
        # The last table went: drop the blank lines that separated it.
        while start > 0 and not lines[start - 1].strip():
            start -= 1
    return "".join(lines[:start] + lines[end:])


def remove_target(path: str | os.PathLike[str], name: str) -> None:
    """Remove target *name*; it is an error if no such target is declared.

    In the usual layout the table goes with the comment lines right above
    its header; any other layout is edited with tomlkit, which removes the
    target's keys and leaves every comment.
    """
    check = _checker(pathlib.Path(path))
    name = check.parsed("", parse_target_name, name)

    def change(text: str, data: dict[str, Any]) -> str:
        tables = data.get("target", {})
        if name not in tables:
            declared = ", ".join(tables) or "none"
            raise check.fail("", f"no target named {name} (declared: {declared})")
        del tables[name]
        cut = _cut_target_table(text, name)
        if cut is not None:
            return cut
        document = tomlkit.parse(text)
        container: Any = document["target"]
        del container[name]
        return document.as_string()

    _edit(path, change)


def list_targets(path: str | os.PathLike[str]) -> list[Target]:
    """The targets declared in *path*, in file order.

    The whole file is checked against the schema, but no secret file is
    read and no permission is checked: listing needs no secret.
    """
    path = pathlib.Path(path)
    check = _checker(path)
    raw, _ = _read(path)
    return list(_parse(check, _loads(check, raw)).targets.values())
