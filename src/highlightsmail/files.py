"""Writing files so that a reader (or a crash) never sees half of one.

Every file is written under a temporary name in its own folder (`.NAME.PID-XXXXXXXX.tmp`,
with the writer's process id, so a later run can recognise and remove what a killed one
left: `remove_stale_temporaries`), then given its name in one
step: `os.replace` when it may replace an existing file, a hard link when it must never
overwrite one. Errors are the OSError that occurred, with its `filename` set to the
file being written, so each caller can word its own one-line message.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, TypeVar

__all__ = [
    "TEMP_SUFFIX",
    "new_file_mode",
    "remove_stale_temporaries",
    "temp_prefix",
    "write_file",
    "write_files",
]

T = TypeVar("T")

#: Every temporary file ends so; see `temp_prefix` for how it starts.
TEMP_SUFFIX = ".tmp"


#: A temporary file of this module: `.NAME.PID-XXXXXXXX.tmp` (mkstemp's eight characters).
_TEMP_RE = re.compile(r"^\..+\.(\d+)-[a-z0-9_]{8}\.tmp$")


def temp_prefix(path: Path) -> str:
    """How the temporary name of `path` starts: a dot (hidden), its name, the writer's
    process id."""
    return f".{path.name}.{os.getpid()}-"


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files that a writer killed mid-file (kill -9) left in
    `folder`: ours by their name, and only those whose process is gone."""
    removed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMP_RE.match(entry.name)
            if match and not _alive(int(match.group(1))):
                path = Path(entry.path)
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def new_file_mode() -> int:
    """The mode a plain `open()` would give a new file (0666 less the umask); mkstemp's
    own 0600 would hide a built file from a web server or a colleague."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_file(
    path: Path,
    content: bytes | Callable[[BinaryIO], T],
    *,
    mode: int | None = None,
    overwrite: bool = True,
    durable: bool = False,
) -> T | None:
    """Write `path` whole or not at all; returns what a writer callback returned.

    `content` is the bytes, or a callback that writes to the open binary file (wrap it
    in `io.TextIOWrapper` for text, and detach it before returning). `mode` defaults
    to `new_file_mode()`; pass 0o600 for a file that holds secrets or personal data.
    With `overwrite=False` an existing `path` is never replaced, even by a race: the
    call raises FileExistsError instead. `durable` flushes the data to the disk before
    the file gets its name (for data that must survive a power cut).
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        tmp = _temp_file(path, mode)
        with open(tmp, "wb") as fh:
            result = _fill(fh, content)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        _place(tmp, path, overwrite)
    except BaseException as exc:
        if tmp is not None:
            _discard(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            exc.filename, exc.filename2 = str(path), None
        raise
    if durable:
        _sync_folder(path.parent)
    return result


def write_files(files: Mapping[Path, bytes], *, mode: int | None = None) -> list[Path]:
    """Write several files, replacing any there: all are written to temporary names
    first and renamed only when every one is complete, so a full disk leaves the
    previous files, never a mix of old and new. Returns the paths in order."""
    staged: list[tuple[Path, Path]] = []
    current: Path | None = None
    try:
        for path, data in files.items():
            current = Path(path)
            tmp = _temp_file(current, mode)
            staged.append((tmp, current))
            with open(tmp, "wb") as fh:
                fh.write(data)
        for tmp, path in staged:
            current = path
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp, _ in staged:
            _discard(tmp)
        if isinstance(exc, OSError) and current is not None:
            exc.filename, exc.filename2 = str(current), None
        raise
    return [path for _, path in staged]


def _temp_file(path: Path, mode: int | None) -> Path:
    """A new empty temporary file beside `path`, with its final mode already set."""
    fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode() if mode is None else mode)
    except BaseException:
        os.unlink(name)
        raise
    finally:
        os.close(fd)
    return Path(name)


def _fill(fh: BinaryIO, content: bytes | Callable[[BinaryIO], T]) -> T | None:
    if isinstance(content, bytes | bytearray | memoryview):
        fh.write(content)
        return None
    return content(fh)


def _place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give `tmp` the name `path`. Without `overwrite`, a hard link: atomic, and it
    never replaces. Where links are not supported, reserve the name first (exclusive
    create), then rename over the empty file just made."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def _discard(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _sync_folder(folder: Path) -> None:
    """Make a rename durable: flush the folder's entry list (where the OS allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
