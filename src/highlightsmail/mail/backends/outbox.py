"""The default backend: every message written as an .eml file, nothing sent anywhere.

`outbox/<slug>/000123-reader@example.org.eml`, one file per recipient named by its key
(the subscriber id; the editor's number on a test send, under `outbox/<slug>/test/`).
The bytes are exactly what the SMTP backend would send (CRLF line ends). A second
message for the same key never replaces the first: it becomes `...2.eml`, so a
duplicate send shows instead of hiding.

Files are readable by their owner only (0600): each holds a working unsubscribe link.
A message is written to a temporary file named after the writing process first (as
files.write_file names them, in fewer steps: a batch writes many), then linked into
place, so a reader never sees half of one; a temporary file left by a process that was
killed is removed by the next run that writes there. How many files each key has is
read from the folder once, and read again only when the folder changed since this
backend last wrote there (a folder of 100,000 messages is not listed for every batch).
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from highlightsmail.errors import display_path
from highlightsmail.files import TEMP_SUFFIX, remove_stale_temporaries, temp_prefix
from highlightsmail.mail.backends.base import Backend, Batch, BatchResult, DeliveryError
from highlightsmail.mail.mime import TemplateCache

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]+")
_KEY_RE = re.compile(r"^(\d+)[-.]")
_MODE = 0o600
#: The temporary files' serial numbers, unique in the process (eight hex digits, as
#: remove_stale_temporaries recognises them).
_SERIAL = itertools.count()


class OutboxBackend(Backend):
    """Writes one .eml file per recipient, atomically (temp file, then link into place)."""

    name = "outbox"
    batch_size = 100
    concurrency = 1

    def __init__(self, ws: Workspace, *, test: bool = False) -> None:
        self.ws = ws
        self.test = test
        self._templates = TemplateCache()
        self._swept: set[Path] = set()
        # Per folder: its state (inode, modification time) after this backend last
        # wrote there, and the files each key had then.
        self._counts: dict[Path, tuple[tuple[int, int], dict[int, int]]] = {}

    def folder(self, slug: str, *, test: bool = False) -> Path:
        """Where an issue's messages go: outbox/<slug>/, test sends in outbox/<slug>/test/."""
        if not slug or slug in (".", "..") or "/" in slug or "\\" in slug or "\x00" in slug:
            raise DeliveryError(f"outbox: {slug!r} cannot be a folder name")
        base = self.ws.outbox_dir / slug
        return base / "test" if test else base

    def send_batch(self, batch: Batch) -> BatchResult:
        folder = self.folder(batch.slug, test=batch.test or self.test)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if folder not in self._swept:
                remove_stale_temporaries(folder)
                self._swept.add(folder)
            taken = self._taken(folder)
        except OSError as err:
            raise DeliveryError(f"outbox: cannot write to {display_path(folder)}: {err.strerror or err}") from None
        template = self._templates.get(
            batch.rendered, batch.settings, batch.envelopes[0].links, test=batch.test, date=batch.date
        )
        result = BatchResult()
        for env in batch.envelopes:
            try:
                # As an SMTP server with 8BITMIME gets it.
                data = template.render(
                    env.recipient, env.links, eight_bit=True, message_id=template.message_id(env.token)
                ).data
            except (UnicodeError, ValueError) as err:
                result.failed[env.key] = f"cannot build the message for {env.recipient.email!r}: {err}"
                continue
            try:
                _write_new(folder, env.key, env.recipient.email, data, taken)
            except OSError as err:
                result.failed[env.key] = f"outbox: cannot write to {display_path(folder)}: {err.strerror or err}"
            else:
                result.sent.append(env.key)
        self._wrote(folder, taken)
        return result

    def _taken(self, folder: Path) -> dict[int, int]:
        """How many files each key has in the folder: as this backend left it, unless the
        folder changed since (another process wrote or deleted there)."""
        known = self._counts.get(folder)
        if known is not None and known[0] == _state(folder):
            return known[1]
        return _taken(folder)

    def _wrote(self, folder: Path, taken: dict[int, int]) -> None:
        try:
            self._counts[folder] = (_state(folder), taken)
        except OSError:
            self._counts.pop(folder, None)


def _state(folder: Path) -> tuple[int, int]:
    """What changes when a file is added to or removed from a folder."""
    found = os.stat(folder)
    return found.st_ino, found.st_mtime_ns


def file_stem(key: int, address: str) -> str:
    """`000123-reader@example.org`: the key first (so files sort by it), then the
    address made safe for any file system."""
    safe = _UNSAFE.sub("_", address).strip("._")[:80] or "recipient"
    return f"{key:06d}-{safe}"


def _taken(folder: Path) -> dict[int, int]:
    """How many files each key already has in the folder (read once per batch)."""
    counts: dict[int, int] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            match = _KEY_RE.match(entry.name)
            if match and entry.name.endswith(".eml"):
                key = int(match.group(1))
                counts[key] = counts.get(key, 0) + 1
    return counts


def _write_new(folder: Path, key: int, address: str, data: bytes, taken: dict[int, int]) -> Path:
    """Write `data` under a name no file has yet; a reader never sees a partial file."""
    stem = file_stem(key, address)
    copy = taken.get(key, 0) + 1
    tmp = _temporary(folder / f"{stem}.eml", data)
    try:
        while True:
            target = folder / (f"{stem}.eml" if copy == 1 else f"{stem}.{copy}.eml")
            try:
                _link_new(tmp, target)
            except FileExistsError:
                copy += 1  # written meanwhile (another run): never replace it
                continue
            taken[key] = copy
            return target
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass  # renamed into place (where links are not supported)


def _temporary(path: Path, data: bytes) -> Path:
    """`data` in a new temporary file beside `path`, readable by its owner only."""
    while True:
        tmp = path.with_name(f"{temp_prefix(path)}{next(_SERIAL) % 16**8:08x}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _MODE)
        except FileExistsError:
            continue  # left by a process that had this one's id before
        try:
            os.fchmod(fd, _MODE)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp


def _link_new(tmp: Path, target: Path) -> None:
    """Give the temporary file the name `target`, never replacing a file there
    (FileExistsError): a hard link, or where links are not supported, the name
    reserved first (exclusive create) and the file renamed over it."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _MODE)
        os.close(fd)
        os.replace(tmp, target)


__all__ = ["OutboxBackend", "file_stem"]
