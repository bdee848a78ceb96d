"""One way to check an email address, for every place that takes one: the settings
(`from`, `reply_to`, `editors`), `send --test --to`, the CSV import, `subscribers add`
and the web forms; and one way to tell whether two addresses are the same."""

from __future__ import annotations

import functools
import unicodedata


class BadAddress(ValueError):
    """An address that is not valid; the message says why."""


def normalize_address(raw: str) -> str:
    """The stored form of an address: trimmed, syntax checked (no DNS lookups), and
    normalised by email-validator (domain lower-cased and IDNA-checked, Unicode NFC)."""
    # Here, not at the top: compiling email-validator's patterns is a tenth of the
    # start-up of commands that check no address (or know their addresses are good:
    # authoring.fields keeps the settings' verdicts).
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise BadAddress(str(exc)) from None


def ascii_address(address: str) -> str | None:
    """The address as a header or SMTP envelope without SMTPUTF8 carries it, and as
    SendGrid takes it: an internationalised domain in its ASCII (IDNA) form
    (`ada@xn--bcher-kva.example` for `ada@bücher.example`); None when the part before
    the @ is not ASCII, which has no such form."""
    if address.isascii():
        return address  # the usual case: once per recipient of a send
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        return None
    if domain.isascii():
        return address
    ascii_domain = _idna(domain)
    return None if ascii_domain is None else f"{local}@{ascii_domain}"


@functools.lru_cache(maxsize=4096)
def _idna(domain: str) -> str | None:
    import idna  # email-validator's own IDNA 2008 library, which checks the domains

    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return None


def address_key(address: str) -> str:
    """What two addresses are compared by: two spellings that differ only in Unicode
    normalisation or in case, in any script, are one address.

    NFC, then full Unicode case folding of the whole address (so `Äda`, `äda` and
    `A\u0308da` meet, and `ß` meets `ss`), then NFC again, since folding can leave a
    sequence that composes. RFC 5321 lets a mail server treat the part before the @ as
    case-sensitive, but no mailbox provider gives `Ada` and `ada` to two people, and
    mailing one person twice (or mailing someone who left under the other spelling)
    is the harm to avoid.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", address).casefold())


def mailbox_key(address: str) -> str:
    """The mailbox an address reaches, for limits one person must not multiply: its
    address_key with a `+tag` dropped (`Bomb+1@example.org` is `bomb@example.org`).
    Subaddressing with `+` (RFC 5233) is what the large mail providers all offer; other
    separators are one domain's choice, so they are not guessed at. The subscriber is
    still the whole address."""
    key = address_key(address)
    local, at, domain = key.rpartition("@")
    mailbox = local.split("+", 1)[0]
    return f"{mailbox}@{domain}" if at and mailbox else key


__all__ = ["BadAddress", "address_key", "ascii_address", "mailbox_key", "normalize_address"]
