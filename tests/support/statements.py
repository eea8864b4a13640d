"""Counting the SQL a request sends: the app engine's statements, for tests that assert "no SQL" or
"no writes"."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


class Statements:
    """Every SQL statement the app's engine sends, so a test can see whether a request wrote anything."""

    WRITES = ("INSERT", "UPDATE", "DELETE", "BEGIN IMMEDIATE")

    def __init__(self, engine: Engine) -> None:
        self.seen: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(" ".join(statement.split()))

    def clear(self) -> None:
        self.seen.clear()

    @property
    def writes(self) -> list[str]:
        return [s for s in self.seen if s.upper().startswith(self.WRITES) or "FOR UPDATE" in s.upper()]
