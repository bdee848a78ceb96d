"""The default backend: every message written as an .eml file, nothing sent anywhere.

`outbox/<slug>/000123-reader@example.org.eml`, one file per recipient named by its key
(the subscriber id; the editor's number on a test send, under `outbox/<slug>/test/`).
The bytes are exactly what the SMTP backend would send (CRLF line ends). A second
message for the same key never replaces the first: it becomes `...2.eml`, so a
duplicate send shows instead of hiding.

Files are readable by their owner only (0600): each holds a working unsubscribe link.
A message is written to a temporary file named after the writing process first; one
left by a process that was killed is removed by the next run that writes there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from highlightsmail.errors import display_path
from highlightsmail.files import remove_stale_temporaries, write_file
from highlightsmail.mail.backends.base import Backend, Batch, BatchResult, DeliveryError
from highlightsmail.mail.mime import TemplateCache

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]+")
_KEY_RE = re.compile(r"^(\d+)[-.]")
_MODE = 0o600


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
            taken = _taken(folder)
        except OSError as err:
            raise DeliveryError(f"outbox: cannot write to {display_path(folder)}: {err.strerror or err}") from None
        template = self._templates.get(batch.rendered, batch.settings, batch.envelopes[0].links, test=batch.test)
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
        return result


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
    while True:
        target = folder / (f"{stem}.eml" if copy == 1 else f"{stem}.{copy}.eml")
        try:
            write_file(target, data, mode=_MODE, overwrite=False)
        except FileExistsError:
            copy += 1  # written meanwhile (another run): never replace it
            continue
        taken[key] = copy
        return target


__all__ = ["OutboxBackend", "file_stem"]
