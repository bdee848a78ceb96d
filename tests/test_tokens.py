"""Unsubscribe tokens: they round-trip, are bound to one subscriber and one purpose,
survive a secret rotation, and a generated secret is kept private."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
import string
import warnings
from pathlib import Path

import pytest

from highlightsmail.errors import HighlightsError, InvalidToken
from highlightsmail.tokens import SecretWarning, Signer, load_signer

NEW = "new-secret-0123456789abcdef0123456789"
OLD = "old-secret-0123456789abcdef0123456789"
OLDER = "older-secret-0123456789abcdef01234567"
FORGOTTEN = "forgotten-secret-0123456789abcdef0123"


def _readable(signer: Signer, token: str) -> bool:
    try:
        signer.read(token)
    except InvalidToken:
        return False
    return True


@pytest.mark.parametrize("subscriber_id", [0, 1, 35, 36, 1295, 1296, 123_456_789, 2**40])
@pytest.mark.parametrize("purpose", ["unsubscribe", "test"])
def test_round_trip(subscriber_id: int, purpose: str) -> None:
    signer = Signer(NEW.encode())
    token = signer.make(subscriber_id, purpose)
    assert signer.read(token) == (purpose, subscriber_id)
    # Safe in a URL path segment as it is, with no escaping.
    assert set(token) <= set(string.ascii_letters + string.digits + "-_.")


def test_token_names_the_id_not_the_address_and_is_stable() -> None:
    signer = Signer(NEW.encode())
    assert signer.make(42) == signer.make(42)
    assert signer.make(42) != signer.make(43)
    assert "@" not in signer.make(42)


def test_purpose_is_bound_into_the_signature() -> None:
    signer = Signer(NEW.encode())
    unsub, test = signer.make(7, "unsubscribe"), signer.make(7, "test")
    assert unsub != test
    # Relabel the kind letter: the MAC no longer matches.
    assert not _readable(signer, "t" + unsub[1:])
    assert not _readable(signer, "u" + test[1:])
    # Put the other purpose's MAC on this token.
    assert not _readable(signer, unsub.split(".")[0] + "." + test.split(".")[1])


def test_signature_cannot_be_moved_to_another_subscriber() -> None:
    signer = Signer(NEW.encode())
    mine, theirs = signer.make(7), signer.make(8)
    assert not _readable(signer, mine.split(".")[0] + "." + theirs.split(".")[1])
    assert not _readable(signer, "u8." + mine.split(".")[1])


def test_each_token_has_exactly_one_spelling() -> None:
    signer = Signer(NEW.encode())
    token = signer.make(7)
    alphabet = string.ascii_letters + string.digits + "-_"
    # The last base64 character carries unused bits; no other spelling may pass.
    for ch in alphabet:
        variant = token[:-1] + ch
        assert _readable(signer, variant) == (variant == token), variant
    assert not _readable(signer, token + "\n")
    assert not _readable(signer, token.replace("u7.", "u07."))  # leading zero in the id
    assert not _readable(signer, token.upper())


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "u",
        "u7",
        "u7.",
        ".",
        "x7.AAAAAAAAAAAAAAAAAAAAAA",
        "u7.AAAAAAAAAAAAAAAAAAAAAA",
        "u-7.AAAAAAAAAAAAAAAAAAAAAA",
        "u" + "z" * 14 + ".AAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_garbage_is_invalid(garbage: str) -> None:
    with pytest.raises(InvalidToken, match="not valid"):
        Signer(NEW.encode()).read(garbage)


def test_negative_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        Signer(NEW.encode()).make(-1)


def test_rotation_keeps_old_links_working(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent_before = Signer(OLD.encode()).make(5)
    sent_long_before = Signer(OLDER.encode()).make(6, "test")
    monkeypatch.setenv("HIGHLIGHTS_SECRET", NEW)
    monkeypatch.setenv("HIGHLIGHTS_SECRET_PREVIOUS", f"{OLD}, {OLDER} ,")
    signer = load_signer(tmp_path / ".secret")

    assert signer.read(sent_before) == ("unsubscribe", 5)
    assert signer.read(sent_long_before) == ("test", 6)
    # New links are signed with the new secret only.
    fresh = signer.make(5)
    assert fresh == Signer(NEW.encode()).make(5)
    assert fresh != sent_before
    assert not _readable(Signer(OLD.encode()), fresh)
    assert not (tmp_path / ".secret").exists()  # an env secret never creates the file


def test_a_secret_that_is_no_longer_listed_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIGHLIGHTS_SECRET", NEW)
    monkeypatch.setenv("HIGHLIGHTS_SECRET_PREVIOUS", OLD)
    signer = load_signer(tmp_path / ".secret")
    with pytest.raises(InvalidToken):
        signer.read(Signer(FORGOTTEN.encode()).make(5))
    # Without the previous list, the old secret's links stop working too.
    monkeypatch.delenv("HIGHLIGHTS_SECRET_PREVIOUS")
    with pytest.raises(InvalidToken):
        load_signer(tmp_path / ".secret").read(Signer(OLD.encode()).make(5))


def test_too_short_env_secret_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIGHLIGHTS_SECRET", "tiny-s3cret")
    with pytest.raises(HighlightsError, match="too short") as info:
        load_signer(tmp_path / ".secret")
    assert "tiny-s3cret" not in str(info.value)  # the secret is not echoed


def test_generated_secret_is_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "subscribers" / ".secret"
    with pytest.warns(SecretWarning, match="HIGHLIGHTS_SECRET is not set") as record:
        first = load_signer(path)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert len(secret) >= 32
    assert secret not in str(record[0].message)  # the warning names the file, not the secret

    # The second start reads the same file silently and makes the same links.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = load_signer(path)
    assert second.make(9) == first.make(9)
    assert second.read(first.make(9)) == ("unsubscribe", 9)


def test_a_start_racing_the_one_that_creates_the_secret_gets_the_same_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two commands starting at once in a new workspace: the second read the file the
    first had just created and not yet written, and stopped with "the secret is too
    short; delete the file". Here the first pauses right after opening the secret's own
    path, whenever it does; the second starts in that moment."""
    import os
    import threading

    path = tmp_path / ".secret"
    opened, release = threading.Event(), threading.Event()
    real_open = os.open

    def pausing_open(file, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        fd = real_open(file, flags, *args, **kwargs)
        if os.fspath(file) == str(path) and threading.current_thread() is not threading.main_thread():
            opened.set()
            release.wait(10)
        return fd

    monkeypatch.setattr(os, "open", pausing_open)
    first: list[Signer] = []
    writer = threading.Thread(target=lambda: first.append(load_signer(path)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecretWarning)
        writer.start()
        while not opened.is_set() and writer.is_alive():
            opened.wait(0.01)
        try:
            second = load_signer(path)
        finally:
            release.set()
            writer.join(10)
    assert first and second.make(3) == first[0].make(3)


def test_env_secret_signs_and_the_files_other_secret_still_reads_its_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mail sent before HIGHLIGHTS_SECRET was set is signed with the file's secret; once
    the variable is set, those links keep working (one warning says why), and new links
    are signed with the variable's secret."""
    path = tmp_path / ".secret"
    with pytest.warns(SecretWarning):
        from_file = load_signer(path)
    sent_before = from_file.make(3)
    monkeypatch.setenv("HIGHLIGHTS_SECRET", NEW)
    with pytest.warns(SecretWarning) as caught:
        signer = load_signer(path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"{path} holds another secret than HIGHLIGHTS_SECRET:")
    assert "HIGHLIGHTS_SECRET_PREVIOUS" in message and "delete the file" in message
    assert path.read_text().strip() not in message and NEW not in message
    assert signer.make(3) == Signer(NEW.encode()).make(3) != sent_before
    assert signer.read(sent_before) == ("unsubscribe", 3)
    assert path.is_file()  # kept as it is


@pytest.mark.parametrize("where", ["variable", "previous"])
def test_no_warning_when_the_files_secret_is_already_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / ".secret"
    path.write_text(OLD + "\n")
    if where == "variable":
        monkeypatch.setenv("HIGHLIGHTS_SECRET", OLD)
    else:
        monkeypatch.setenv("HIGHLIGHTS_SECRET", NEW)
        monkeypatch.setenv("HIGHLIGHTS_SECRET_PREVIOUS", OLD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signer = load_signer(path)
    assert signer.read(Signer(OLD.encode()).make(4)) == ("unsubscribe", 4)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"\xff\xfe not ascii at all, but long\n"), "the secret is not ASCII text"),
        (lambda p: p.mkdir(), "cannot read the secret"),
        (lambda p: p.write_text("short\n"), "the secret is too short"),
    ],
    ids=["binary", "folder", "too-short"],
)
def test_with_the_variable_set_an_unusable_file_is_one_warning_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, reason: str
) -> None:
    path = tmp_path / ".secret"
    make(path)
    monkeypatch.setenv("HIGHLIGHTS_SECRET", NEW)
    with pytest.warns(SecretWarning) as caught:
        signer = load_signer(path)
    assert len(caught) == 1
    assert str(caught[0].message).startswith(f"{path}: {reason}")
    assert "are not accepted" in str(caught[0].message)
    assert signer.read(Signer(NEW.encode()).make(2)) == ("unsubscribe", 2)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"\xff\xfe not ascii at all, but long\n"), "not ASCII text"),
        (lambda p: p.mkdir(), "cannot read the secret"),
        (lambda p: p.symlink_to(p.parent / "missing"), "cannot read the secret"),
        (lambda p: p.parent.rmdir() or p.parent.write_text("a file"), "cannot create the signing secret"),
    ],
    ids=["binary", "folder", "dangling-link", "parent-is-a-file"],
)
def test_an_unusable_secret_file_is_a_one_line_error(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "subscribers" / ".secret"
    path.parent.mkdir()
    make(path)
    with pytest.raises(HighlightsError, match=message):
        load_signer(path)


@pytest.mark.parametrize(
    ("previous", "which"),
    [("tiny-s3cret", "1 of 1"), (f"{OLD},tiny-s3cret", "2 of 2"), (f"{OLD}, tiny-s3cret ,{OLDER},", "2 of 3")],
)
def test_too_short_previous_secret_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, previous: str, which: str
) -> None:
    """A previous secret still makes links work, so it must be as hard to guess as the
    current one, whether the current one comes from the environment or the file."""
    monkeypatch.setenv("HIGHLIGHTS_SECRET_PREVIOUS", previous)
    (tmp_path / ".secret").write_text(NEW + "\n")
    for current in (NEW, None):
        if current is None:
            monkeypatch.delenv("HIGHLIGHTS_SECRET", raising=False)
        else:
            monkeypatch.setenv("HIGHLIGHTS_SECRET", current)
        with pytest.raises(HighlightsError) as info:
            load_signer(tmp_path / ".secret")
        message = info.value.format_message()
        assert message == (
            f"HIGHLIGHTS_SECRET_PREVIOUS: secret {which} is too short: "
            "use at least 16 characters, or drop it from the list"
        )
        assert "tiny-s3cret" not in message  # the secret is not echoed


@pytest.mark.parametrize("secret", [b"0123456789abcdef", b"k" * 64, b"a longer secret than a block of SHA-256 " * 3])
def test_a_link_token_is_hmac_sha256_over_its_kind_and_id(secret: bytes) -> None:
    """The signing spelt out over hashlib makes exactly the HMAC-SHA256 links always had."""
    signer = Signer(secret)
    for sid, ident in ((0, "0"), (35, "z"), (12345, "9ix"), (10**12, "cre66i9s")):
        for purpose, kind in (("unsubscribe", "u"), ("test", "t")):
            mac = hmac.new(secret, f"highlightsmail/token/v1|{kind}|{ident}".encode(), hashlib.sha256).digest()[:16]
            want = f"{kind}{ident}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
            assert signer.make(sid, purpose) == want
            assert signer.read(want) == (purpose, sid)


def _reference_base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


@pytest.mark.parametrize("secret", [b"0123456789abcdef", b"a longer secret than a block of SHA-256 " * 3])
def test_a_dispatchs_link_tokens_are_the_tokens_make_and_make_preferences_give(secret: bytes) -> None:
    """The per-dispatch maker (what a send uses for every recipient) makes exactly the
    unsubscribe and preference tokens of the one-at-a-time methods, down to the spelling
    of the id in base 36 at every carry, and each reads back."""
    signer = Signer(secret)
    made = 1_700_000_000
    tokens = signer.link_tokens(made)
    edges = [0, 1, 35, 36, 1295, 1296, 1297, 46655, 46656, 36**4 - 1, 36**4, 36**5, 10**12, 2**63 - 1]
    for sid in [*edges, *range(0, 5000, 7)]:
        unsubscribe, preferences = tokens(sid)
        assert unsubscribe == signer.make(sid)
        assert preferences == signer.make_preferences(sid, made)
        assert unsubscribe.split(".")[0] == "u" + _reference_base36(sid)
        assert signer.read(unsubscribe) == ("unsubscribe", sid)
        assert signer.read_preferences(preferences) == (sid, made)
    with pytest.raises(ValueError, match="not negative"):
        tokens(-1)
    with pytest.raises(ValueError, match="not negative"):
        signer.link_tokens(-1)


def test_a_dispatchs_tokens_signed_with_another_secret_or_moved_fail() -> None:
    unsubscribe, preferences = Signer(FORGOTTEN.encode()).link_tokens(1_700_000_000)(42)
    signer = Signer(NEW.encode())
    assert not _readable(signer, unsubscribe)
    with pytest.raises(InvalidToken):
        signer.read_preferences(preferences)
    own_u, own_p = signer.link_tokens(1_700_000_000)(42)
    moved_u = "u" + "43" + own_u[own_u.index(".") :]  # another subscriber, the same MAC
    assert not _readable(signer, moved_u)
    with pytest.raises(InvalidToken):
        signer.read_preferences(own_p.replace("p16.", "p17.", 1))
    with pytest.raises(InvalidToken):
        signer.read(own_p)  # a preference token opens nothing on /u/
