"""Writing the archive's files into a folder, `publish --out`, which may hold other
things (a web root with its own pages). So `publish` keeps a record of what it wrote
there (MANIFEST) and touches nothing else: it replaces the files it wrote before, adds
the new ones, removes those no longer published (a draft published once with --all must
not stay public) and the folders it made for them once they are empty. A folder with
files but no record is refused. Nothing read from the record can reach outside the
folder: each entry must be a plain relative path of plain names, and nothing is
written, replaced or removed under a symbolic link.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.files import remove_stale_temporaries, write_file, write_files
from highlightsmail.urls import PLAIN_NAME

__all__ = ["MANIFEST", "write_site"]

#: The record of what `publish` wrote into its folder (a hidden JSON file there).
MANIFEST = ".highlights-publish.json"
_MANIFEST_FORMAT = 1
_MANIFEST_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Record:
    """What `publish` wrote into a folder: files, and the folders it made for them
    (relative paths with `/`)."""

    files: frozenset[str] = frozenset()
    folders: frozenset[str] = frozenset()

    def dump(self) -> bytes:
        data = {
            "written_by": "highlights publish",
            "format": _MANIFEST_FORMAT,
            "files": sorted(self.files),
            "folders": sorted(self.folders),
        }
        return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def _plain(rel: str) -> bool:
    """A relative path of plain names (`2024-w02/index.html`): no `..`, no `.`, not
    absolute, no empty part, no backslash; so it stays inside the folder it is read in."""
    return bool(rel) and all(PLAIN_NAME.fullmatch(part) for part in rel.split("/"))


def _ancestors(rel: str) -> list[str]:
    """`a/b/c.html` -> ["a", "a/b"]."""
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: n + 1]) for n in range(len(parts))]


def _parent(rel: str) -> str:
    """`a/b/c.html` -> "a/b"; `index.html` -> "" (the folder itself)."""
    return rel.rpartition("/")[0]


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _real_folder(out_dir: Path, folder: str) -> bool:
    """Whether `folder` (relative; "" is `out_dir` itself) and each folder on the way
    to it are real folders now, not links to somewhere else."""
    for part in _ancestors(f"{folder}/") if folder else []:
        st = _lstat(out_dir / part)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return False
    return True


def _read_record(out_dir: Path) -> _Record | None:
    """The record in `out_dir`, or None when there is none."""
    path = out_dir / MANIFEST

    def bad(why: str) -> HighlightsError:
        return HighlightsError(
            f"{display_path(path)}: {why}; it is the list of what `publish` wrote in this folder, "
            "so publish into an empty folder instead"
        )

    st = _lstat(path)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise bad("not a plain file")
    if st.st_size > _MANIFEST_MAX_BYTES:
        raise bad("far too large")
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise HighlightsError(f"cannot read {display_path(path)}: {exc.strerror or exc}") from None
    except ValueError:  # JSON or UTF-8
        raise bad("not JSON") from None
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT:
        raise bad(f"not a record of format {_MANIFEST_FORMAT}")
    lists: dict[str, frozenset[str]] = {}
    for key in ("files", "folders"):
        entries = data.get(key)
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise bad(f"`{key}` is not a list of paths")
        for entry in entries:
            if not _plain(entry):
                raise bad(f"`{key}` names {json.dumps(entry)}, which is not a path inside the folder")
        lists[key] = frozenset(entries)
    return _Record(lists["files"], lists["folders"])


def _write_record(out_dir: Path, record: _Record | None) -> None:
    """Put `record` in place (None: remove it)."""
    if record is None:
        (out_dir / MANIFEST).unlink(missing_ok=True)
    else:
        write_file(out_dir / MANIFEST, record.dump())


def _previous(out_dir: Path) -> tuple[_Record | None, bool]:
    """The record of the last publish into `out_dir` (None: none, the folder is empty
    or new), and whether the folder was made now."""
    try:
        if _lstat(out_dir) is None:
            out_dir.mkdir(parents=True)
            return None, True
        if not out_dir.is_dir():
            raise HighlightsError(f"{display_path(out_dir)}: exists and is not a folder")
        record = _read_record(out_dir)
        if record is None and next(out_dir.iterdir(), None) is not None:
            raise HighlightsError(
                f"{display_path(out_dir)}: holds files that `publish` did not write (there is no {MANIFEST}, "
                "its list of what it wrote); choose another --out or empty it"
            )
    except OSError as exc:
        raise HighlightsError(f"cannot use {display_path(out_dir)}: {exc.strerror or exc}") from None
    return record, False


def _folders_to_make(out_dir: Path, files: Collection[str], old: _Record) -> list[str]:
    """The folders the pages need that are not there yet, parents first; refuses (and
    so changes nothing) when a page would replace something `publish` did not write
    or go where a link or a file is in the way."""

    def refuse(rel: str, what: str) -> HighlightsError:
        return HighlightsError(f"{display_path(out_dir / rel)}: {what}; move it away or choose another --out")

    to_make = []
    for folder in sorted({folder for rel in files for folder in _ancestors(rel)}):
        st = _lstat(out_dir / folder)
        if st is None:
            to_make.append(folder)
        elif not stat.S_ISDIR(st.st_mode):
            raise refuse(folder, "is in the way of a page and is not a folder")
    for rel in files:
        st = _lstat(out_dir / rel)
        if st is not None and not (rel in old.files and stat.S_ISREG(st.st_mode)):
            raise refuse(rel, "exists and `publish` did not write it")
    return to_make


def _remove_unpublished(out_dir: Path, old: _Record, new: _Record) -> tuple[_Record, list[str]]:
    """Remove the files `old` lists and `new` does not, and the folders `publish` made
    that are empty now; skip what is no longer a plain file or folder of ours (or lies
    past a link). Returns `new` with what could not be removed, and why."""
    kept_files, kept_folders, failures = set(new.files), set(new.folders), []
    for rel in sorted(old.files - new.files):
        path = out_dir / rel
        st = _lstat(path) if _real_folder(out_dir, _parent(rel)) else None
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        try:
            path.unlink()
        except OSError as exc:
            kept_files.add(rel)  # still public: try again next time
            failures.append(f"cannot remove {display_path(path)}: {exc.strerror or exc}")
    for folder in sorted(old.folders - new.folders, key=lambda f: f.count("/"), reverse=True):
        if not _real_folder(out_dir, folder):
            continue
        try:
            (out_dir / folder).rmdir()
        except OSError:
            kept_folders.add(folder)  # something else is in it now
    return _Record(frozenset(kept_files), frozenset(kept_folders)), failures


def write_site(files: dict[str, bytes], out_dir: Path) -> list[Path]:
    """Write the site's files into `out_dir`, replacing those a previous run wrote
    there and removing those it no longer publishes; nothing else in the folder is
    touched.

    Every page is first written whole under a temporary name and renamed only when
    all are complete (files.write_files), so a publish that fails leaves the previous
    site as it was. The index is renamed last, so it never links to a page not yet there.
    """
    assert all(_plain(rel) for rel in files)
    found, made_out_dir = _previous(out_dir)
    old = found or _Record()
    to_make = _folders_to_make(out_dir, files, old)
    needed = {folder for rel in files for folder in _ancestors(rel)}
    if found is not None:  # what a killed publish left: ours by name, of a process gone
        for folder in sorted({"", *old.folders, *needed}):
            if _real_folder(out_dir, folder):
                _quietly(partial(remove_stale_temporaries, out_dir / folder))

    # Record what may be there before writing it, so that even a publish killed
    # midway leaves a record of every file it may have written.
    made: list[Path] = []
    try:
        _write_record(out_dir, _Record(old.files | set(files), old.folders | set(to_make)))
        for folder in to_make:
            (out_dir / folder).mkdir()
            made.append(out_dir / folder)
        ordered = sorted(files, key=lambda rel: (rel == "index.html", "/" not in rel, rel))
        written = write_files({out_dir / rel: files[rel] for rel in ordered})
    except OSError as exc:
        _undo(out_dir, files, old if found is not None else None, to_make, made, made_out_dir)
        where = exc.filename if isinstance(exc.filename, str) else out_dir / MANIFEST
        raise HighlightsError(f"cannot write {display_path(where)}: {exc.strerror or exc}") from None

    new = _Record(frozenset(files), frozenset((old.folders & needed) | set(to_make)))
    record, failures = _remove_unpublished(out_dir, old, new)
    try:
        _write_record(out_dir, record)
    except OSError as exc:
        failures.append(f"cannot write {display_path(out_dir / MANIFEST)}: {exc.strerror or exc}")
    if failures:
        raise HighlightsError(failures[0])
    return written


def _undo(
    out_dir: Path,
    files: Collection[str],
    found: _Record | None,
    to_make: list[str],
    made: list[Path],
    made_out_dir: bool,
) -> None:
    """After a failed write: remove the folders made that are still empty, and put
    back the previous record (`found`, None when there was none) with whatever of this
    run is in place: a failure while renaming leaves the pages renamed before it (they
    were not there before, so they are ours)."""
    old = found or _Record()
    for path in reversed(made):
        _quietly(path.rmdir)  # those still empty
    placed = {rel for rel in files if rel not in old.files and _lstat(out_dir / rel) is not None}
    kept = {folder for folder in to_make if _lstat(out_dir / folder) is not None}
    back = _Record(old.files | placed, old.folders | kept)
    _quietly(partial(_write_record, out_dir, back if found is not None or back.files or back.folders else None))
    if made_out_dir:
        _quietly(out_dir.rmdir)


def _quietly(action: Callable[[], object]) -> None:
    """A step whose own failure matters less than what is under way: undoing a
    failed publish (the first failure is what is reported), or tidying up."""
    try:
        action()
    except OSError:
        pass
