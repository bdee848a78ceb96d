"""One way to check an email address, for every place that takes one: the settings
(`from`, `reply_to`, `editors`), `send --test --to`, the CSV import, `subscribers add`
and the web forms."""

from __future__ import annotations

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


__all__ = ["BadAddress", "normalize_address"]
