"""highlightsmail.files: a file is there whole or not at all, with the mode asked for."""

from __future__ import annotations

import io
import os
import stat
import threading
from pathlib import Path
from unittest import mock

import pytest

from highlightsmail.files import new_file_mode, write_file, write_files


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_bytes_replace_an_existing_file_with_the_umask_mode(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"old")
    assert write_file(path, b"new") is None
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == new_file_mode()
    assert leftovers(tmp_path) == []


def test_private_mode_is_set_before_any_byte_is_written(tmp_path: Path) -> None:
    path = tmp_path / "secret.eml"
    modes: list[int] = []

    def writer(fh) -> str:
        modes.append(stat.S_IMODE(os.fstat(fh.fileno()).st_mode))
        fh.write(b"token")
        return "done"

    assert write_file(path, writer, mode=0o600) == "done"
    assert modes == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_text_writer_through_a_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"

    def writer(fh) -> int:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        count = text.write("email\nädä@example.org\n")
        text.detach()
        return count

    assert write_file(path, writer, durable=True) == 22
    assert path.read_text(encoding="utf-8") == "email\nädä@example.org\n"


def test_never_overwrite_refuses_an_existing_file_and_leaves_it(tmp_path: Path) -> None:
    path = tmp_path / "issue.yaml"
    path.write_bytes(b"the editor's work")
    with pytest.raises(FileExistsError):
        write_file(path, b"skeleton", overwrite=False)
    assert path.read_bytes() == b"the editor's work"
    assert leftovers(tmp_path) == []


def test_never_overwrite_gives_the_name_to_exactly_one_of_many_racers(tmp_path: Path) -> None:
    path = tmp_path / "race.txt"
    won: list[bytes] = []
    lost: list[bytes] = []
    start = threading.Barrier(8)

    def racer(n: int) -> None:
        data = f"writer {n}".encode()
        start.wait()
        try:
            write_file(path, data, overwrite=False)
            won.append(data)
        except FileExistsError:
            lost.append(data)

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert path.read_bytes() == won[0]
    assert leftovers(tmp_path) == []


def test_never_overwrite_without_hard_links(tmp_path: Path) -> None:
    path = tmp_path / "new.txt"
    with mock.patch("highlightsmail.files.os.link", side_effect=PermissionError(1, "Operation not permitted")):
        write_file(path, b"data", overwrite=False)
        assert path.read_bytes() == b"data"
        with pytest.raises(FileExistsError):
            write_file(path, b"other", overwrite=False)
    assert path.read_bytes() == b"data"
    assert leftovers(tmp_path) == []


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"old")

    def writer(fh) -> None:
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as caught:
        write_file(path, writer)
    assert caught.value.filename == str(path), "the error names the file being written"
    assert path.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_write_files_is_all_or_nothing(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in ("a", "b", "c"))
    write_files({a: b"1", b: b"1", c: b"1"})
    # The third file fails (after the first two are complete): none is replaced.
    with (
        mock.patch("highlightsmail.files.os.fchmod", side_effect=[None, None, OSError(28, "No space left on device")]),
        pytest.raises(OSError) as caught,
    ):
        write_files({a: b"2", b: b"2", c: b"2"})
    assert caught.value.filename == str(c)
    assert [p.read_bytes() for p in (a, b, c)] == [b"1", b"1", b"1"]
    assert leftovers(tmp_path) == []
    assert write_files({a: b"3", c: b"3"}) == [a, c]
    assert [p.read_bytes() for p in (a, b, c)] == [b"3", b"1", b"3"]


def test_a_folder_that_cannot_be_written_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "a.txt"
    with pytest.raises(FileNotFoundError) as caught:
        write_file(missing, b"x")
    assert caught.value.filename == str(missing)
