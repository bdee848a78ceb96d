"""Correction dispatches: a dispatch of its own in the send ledger (ledger.py), named
`SLUG~correction-N`, whose recipients are fixed when it begins as those the issue's own
ledger has `sent`, instead of everyone active. From there it is a dispatch like any
other: claims skip whoever left since (unsubscribed, bounced, complained), each batch is
recorded once, a resumed run sends nobody a second copy."""

from __future__ import annotations

import re

from highlightsmail.errors import HighlightsError
from highlightsmail.store.base import PAGE
from highlightsmail.store.ledger_state import LedgerState
from highlightsmail.tokens import new_dispatch_tag

__all__ = ["CORRECTION_MARK", "Corrections", "correction_name"]

#: Between an issue's slug and the number of its correction, in the dispatch's name.
CORRECTION_MARK = "~correction-"
_CHUNK = 1000  # as ledger.CHUNK: recipients per chunk of a dispatch's fixed list


def correction_name(issue: str, number: int) -> str:
    """The name of the `number`th correction of `issue` in the ledger."""
    return f"{issue}{CORRECTION_MARK}{number}"


class Corrections(LedgerState):
    """The corrections part of the Store."""

    def corrections_of(self, issue: str) -> list[tuple[str, str, str | None]]:
        """(name, started, finished) of each correction dispatch of `issue`, oldest first."""
        pattern = re.compile(re.escape(issue + CORRECTION_MARK) + r"(\d+)")
        rows = self._query(
            "SELECT issue, started, finished FROM dispatches WHERE issue >= ? AND issue < ?",
            (issue + CORRECTION_MARK, issue + CORRECTION_MARK[:-1] + "."),  # "." follows "-"
        )
        found = [(str(n), str(s), f) for n, s, f in rows if pattern.fullmatch(str(n))]
        return sorted(found, key=lambda row: int(row[0].rsplit("-", 1)[1]))

    def received(self, issue: str) -> list[int]:
        """The ids of the subscribers the ledger of `issue` has as sent, in order."""
        with self._db.connection() as conn:
            return sorted(int(row[0]) for row in self._rows_in(conn, issue, {"sent"}))

    def still_active(self, ids: list[int]) -> int:
        """How many of these subscribers are active now (as people)."""
        count = 0
        with self._db.connection() as conn:
            for start in range(0, len(ids), PAGE):
                count += len(self._active(conn, ids[start : start + PAGE]))
        return count

    def begin_correction(self, name: str, issue: str, backend: str) -> int:
        """Begin the correction dispatch `name` of `issue`: its recipients are those the
        issue's ledger has sent, fixed now. Returns how many."""
        now = self.now()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM dispatches WHERE issue = ?", (name,)).fetchone():
                raise HighlightsError(f"{name}: its dispatch has already begun")
            ids = sorted(int(row[0]) for row in self._rows_in(conn, issue, {"sent"}))
            for number, start in enumerate(range(0, len(ids), _CHUNK)):
                chunk = ids[start : start + _CHUNK]
                conn.execute(
                    "INSERT INTO ledger_recipients (issue, chunk, first_id, last_id, size, ids) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, number, chunk[0], chunk[-1], len(chunk), ",".join(map(str, chunk))),
                )
            conn.execute(
                "INSERT INTO dispatches (issue, started, backend, total, tag) VALUES (?, ?, ?, ?, ?)",
                (name, now, backend, len(ids), new_dispatch_tag()),
            )
        return len(ids)
