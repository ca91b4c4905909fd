"""The agent's private files: the state directory and secret files.

Theory of operation
-------------------

A secret is only as private as the file that holds it, so every file or
directory here must be ours alone: owned by the current user and closed to
group and others. A file that is not is refused, never repaired behind the
operator's back, and the error names the ``chmod`` or ``chown`` that fixes
it. A secret itself never appears in a message.

Reading opens with ``O_NOFOLLOW`` and checks what was opened (with
:func:`os.fstat`), so there is no window between a check and the open for a
symlink to slip in. Writing goes to a temporary file in the same directory
whose mode is set before any byte is written, then :func:`os.replace`
swaps it in: a reader sees the old file or the new one, never a part, and
the content is never visible more widely than asked. :func:`_atomic_write`
is also how :mod:`._config_edit` rewrites connect.toml.

This module is the bottom layer of the configuration: it imports nothing
of the package but :mod:`._errors`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shlex
import stat
import tempfile

from ._errors import ConfigError

# Secret files are tiny; anything bigger is not what we think it is.
_MAX_SECRET_FILE = 4096


def _os_error(file: str, doing: str, exc: OSError) -> ConfigError:
    return ConfigError(f"{file}: cannot {doing}: {exc.strerror or exc}")


def _check_private(shown: str, info: os.stat_result, what: str, mode: str) -> None:
    """Refuse a file or directory that is not ours alone."""
    if info.st_uid != os.geteuid():
        uid = os.geteuid()
        raise ConfigError(
            f"{shown}: the {what} is owned by uid {info.st_uid}, not by this user"
            f" (uid {uid}); fix with: chown {uid} {shlex.quote(shown)}"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            f"{shown}: the {what} is accessible to group or others"
            f" (mode {stat.S_IMODE(info.st_mode):04o}); fix with:"
            f" chmod {mode} {shlex.quote(shown)}"
        )


def ensure_state_dir(path: str | os.PathLike[str]) -> pathlib.Path:
    """Create the state directory (mode 0700) or check the existing one.

    An existing directory must be a real directory (not a symlink), owned
    by the current user and closed to group and others; otherwise
    ConfigError says how to fix it. Returns the path.
    """
    path = pathlib.Path(path)
    shown = os.fspath(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        try:
            path.mkdir(mode=0o700, parents=True)
            # mkdir's mode passes through the umask; set it exactly.
            os.chmod(path, 0o700)
        except OSError as exc:
            raise _os_error(shown, "create the state directory", exc) from None
        return path
    except OSError as exc:
        raise _os_error(shown, "inspect the state directory", exc) from None

    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(
            f"{shown}: the state directory is a symlink; name the real directory"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{shown}: the state directory exists but is not a directory")
    _check_private(shown, info, "state directory", "700")
    return path


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """Read a secret from a private file, stripped of surrounding whitespace.

    Refuses a symlink, anything but a regular file, a file owned by another
    user and a file that group or others may access; each message says how
    to fix it. The secret itself never appears in a message.
    """
    shown = os.fspath(path)
    try:
        # O_NOFOLLOW makes opening a symlink fail, with no race between a
        # check and the open; O_NONBLOCK keeps a FIFO from hanging us.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such secret file") from None
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigError(
                f"{shown}: a secret file must not be a symlink; put the file"
                " itself here"
            ) from None
        raise _os_error(shown, "read the secret file", exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{shown}: a secret file must be a regular file")
        _check_private(shown, info, "secret file", "600")
        raw = b""
        while len(raw) <= _MAX_SECRET_FILE:
            chunk = os.read(fd, _MAX_SECRET_FILE + 1 - len(raw))
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(fd)
    if len(raw) > _MAX_SECRET_FILE:
        raise ConfigError(f"{shown}: the secret file is too large to hold a secret")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: the secret file is not UTF-8 text") from None


def _atomic_write(
    path: pathlib.Path, data: bytes, mode: int, owner: tuple[int, int] | None = None
) -> None:
    """Replace *path* with *data* atomically.

    The temporary file is created in the same directory (so the rename
    cannot cross filesystems) with mode 0600, and gets *mode* before any
    byte is written: the content is never visible more widely than asked.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            if owner is not None:
                os.fchown(stream.fileno(), *owner)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise

    # Make the rename itself durable; some filesystems refuse, harmlessly.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_secret_file(path: str | os.PathLike[str], text: str) -> None:
    """Write *text* to *path* atomically, with mode 0600 from the start."""
    path = pathlib.Path(path)
    try:
        _atomic_write(path, text.encode("utf-8"), 0o600)
    except OSError as exc:
        raise _os_error(os.fspath(path), "write the secret file", exc) from None
