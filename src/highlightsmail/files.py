"""Writing files so that a reader (or a crash) never sees half of one.

Every file is written under a temporary name in its own folder (`.NAME.PID-XXXXXXXX.tmp`,
with the writer's process id, so a later run can recognise and remove what a killed one
left: `remove_stale_temporaries`), then given its name in one
step: `os.replace` when it may replace an existing file, a hard link when it must never
overwrite one. Errors are the OSError that occurred, with its `filename` set to the
file being written, so each caller can word its own one-line message.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

__all__ = [
    "TEMP_SUFFIX",
    "cache_folder",
    "new_file_mode",
    "own_cache_folder",
    "remove_stale_temporaries",
    "temp_prefix",
    "write_cache_json",
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


# --------------------------------------------------------------------------- the cache folder


def cache_folder() -> Path:
    """Where what a new process would otherwise redo is kept (compiled templates, parsed
    CSS, inlined HTML, the settings' addresses found good): XDG_CACHE_HOME (else
    ~/.cache)/highlightsmail/."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    # A relative XDG_CACHE_HOME is invalid by the spec: ignored, as other programs do.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "highlightsmail"


def own_cache_folder() -> Path | None:
    """cache_folder(), or None (use no cache) when it cannot be found or is not this
    user's alone: what is read from it is run (compiled templates) or shapes the mail,
    so a folder another user owns or may write to is not trusted."""
    try:
        folder = cache_folder()
        found = folder.stat()
    except FileNotFoundError:
        return folder  # made on first write, this user's, mode 0700
    except (OSError, RuntimeError):  # RuntimeError: no home folder to be found
        return None
    if found.st_uid != os.getuid() or found.st_mode & 0o022:
        return None
    return folder


def write_cache_json(path: Path, data: Any) -> None:
    """`data` as JSON in `path` (a cache entry), written whole under a name of this
    process and thread, then renamed into place, so that a reader never sees half a
    file; nothing is kept when the folder cannot be written (a cache is never a reason
    to fail, nor a write that a build's own files wait for)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with open(temp, "x", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    except OSError:
        pass


def keep_newest(folder: Path, count: int) -> None:
    """Delete all but the newest `count` cache entries (*.json) in `folder`; another
    process may be at it too, and a folder that cannot be read keeps what it has."""
    try:
        entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in entries[count:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


def installed_stamp(files: Iterable[tuple[str, Iterable[str]]]) -> list[tuple[str, int, int]] | None:
    """(package/file, size, modification time) of these files of installed packages, by
    package, found without importing them: what names a cache entry they shaped, so an
    upgrade or an edited install makes a new one. None when one cannot be found."""
    from importlib.util import find_spec

    stamps: list[tuple[str, int, int]] = []
    try:
        for package, names in files:
            spec = find_spec(package)
            places = list(spec.submodule_search_locations or ()) if spec else []
            if not places:
                return None
            for name in names:
                found = os.stat(Path(places[0]) / name)
                stamps.append((f"{package}/{name}", found.st_size, found.st_mtime_ns))
    except (OSError, ImportError, ValueError):
        return None
    return stamps
