"""One way to check an email address, for every place that takes one: the settings
(`from`, `reply_to`, `editors`), `send --test --to`, the CSV import, `subscribers add`
and the web forms; and one way to tell whether two addresses are the same."""

from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, validate_email


class BadAddress(ValueError):
    """An address that is not valid; the message says why."""


def normalize_address(raw: str) -> str:
    """The stored form of an address: trimmed, syntax checked (no DNS lookups), and
    normalised by email-validator (domain lower-cased and IDNA-checked, Unicode NFC)."""
    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise BadAddress(str(exc)) from None


def ascii_address(raw: str) -> str | None:
    """The address with its domain in ASCII (IDNA, `ada@xn--bcher-kva.example` for
    `ada@bücher.example`), as headers and SMTP envelopes without SMTPUTF8 need it;
    None when the part before the @ is not ASCII, which has no such form."""
    try:
        return validate_email(raw.strip(), check_deliverability=False).ascii_email
    except EmailNotValidError as exc:
        raise BadAddress(str(exc)) from None


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


__all__ = ["BadAddress", "address_key", "ascii_address", "normalize_address"]
