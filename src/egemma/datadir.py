"""DATA_DIR: created owner-only and proven writable before anything is stored in it.

Everything a user stores lives there (the API key, the response/conversation store, caches), so a
DATA_DIR this server creates is ``0700``. One that exists but cannot be written (a Docker bind
mount owned by root, a read-only volume) stops startup with one line that says which directory,
which user and what to do, instead of a ``PermissionError`` traceback from whichever writer came
first (issue 15).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


class DataDirError(RuntimeError):
    """DATA_DIR cannot be used; the message is one line for the operator."""


def _uid() -> str:
    geteuid = getattr(os, "geteuid", None)
    return str(geteuid()) if geteuid is not None else "this user"


def _describe(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return ""
    return f" (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"


def prepare_data_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if missing and prove this process can write in it.

    Raises ``DataDirError`` with an operator-facing line otherwise. An existing directory keeps
    its mode: it is the operator's (a bind mount may be shared on purpose).
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    except FileExistsError:
        raise DataDirError(f"DATA_DIR {path} exists and is not a directory") from None
    except OSError as exc:
        raise DataDirError(
            f"DATA_DIR {path} cannot be created by uid {_uid()}: {exc.strerror}; "
            "create it for that user or point DATA_DIR elsewhere"
        ) from None
    if not path.is_dir():
        raise DataDirError(f"DATA_DIR {path} exists and is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
    except OSError as exc:
        raise DataDirError(
            f"DATA_DIR {path} is not writable by uid {_uid()}{_describe(path)}: {exc.strerror}; "
            f"give it to that user (chown -R {_uid()} on the host directory) or use a named volume"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


def owner_only(path: Path) -> None:
    """Create ``path`` as an empty 0600 file if missing; tighten it to 0600 if it exists.

    SQLite creates the database with 0644 (less the umask) and its ``-wal``/``-shm`` files with
    the database's own mode, so a database made 0600 first keeps all three owner-only.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        st = path.stat()
        # Only the owner may chmod; a file of another user is left to its owner.
        if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == getattr(os, "geteuid", lambda: -1)():
            os.chmod(path, FILE_MODE)
        return
    os.close(fd)
