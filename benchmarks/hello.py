"""The baseline: a bare ASGI endpoint that reads the request body and answers a fixed heartbeat reply.

No framework, no database: what the server (uvicorn, its event loop and HTTP parser, the worker
processes) costs on its own. The heartbeat benchmark divides by this.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

BODY = b'{"heartbeat_interval_s":60,"ota":null,"ota_deferred":null}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the whole body, as the real endpoint does
        message = await receive()
        more = bool(message.get("more_body", False))
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def create_app() -> Any:
    """Factory, as ``bota_ota.app:create_app_from_env`` is one."""
    return hello
