"""Sessions never outlive their request, even when the request is cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from bota_ota.web.middleware import SESSIONS_SCOPE_KEY, CloseSessionsMiddleware


@pytest.mark.parametrize("ending", [asyncio.CancelledError, RuntimeError, None])
def test_sessions_are_closed_however_the_request_ends(app: Any, ending: type[BaseException] | None) -> None:
    sessions = app.state.ctx.sessions
    opened: list[Any] = []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        session = sessions()
        scope.setdefault(SESSIONS_SCOPE_KEY, []).append(session)
        session.execute(text("SELECT 1"))  # a transaction is open now (on SQLite: the write gate is held)
        opened.append(session)
        if ending is not None:
            raise ending()

    async def call() -> None:
        await CloseSessionsMiddleware(handler)({"type": "http"}, None, None)

    if ending is None:
        asyncio.run(call())
    else:
        with pytest.raises(ending):
            asyncio.run(call())
    assert not opened[0].in_transaction()
    # The connection went back to the pool and the next writer is not blocked.
    with sessions() as session:
        session.execute(text("SELECT 1"))
        session.commit()
