"""A cap on request bodies that holds however the body is sent.

`Content-Length` is only a claim, and a chunked body or an upload without it has none. So the
cap is enforced on the bytes as they arrive: this ASGI middleware reads the body first, counting,
and answers 413 as soon as the count passes the cap, before the app (JSON decoding, the
multipart parser that spools uploads to disk) sees any of it. A body within the cap is handed on
unchanged. The server discards the rest of a refused body as it arrives, holding none of it.
"""

from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        message = f"request bodies are limited to {self.max_bytes:,} bytes"
        return JSONResponse(status_code=413, content={"error": message, "detail": message})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._too_large()(scope, receive, send)
            return
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: no one to answer
                return
            received.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                received.clear()
                await self._too_large()(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(received, receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives the messages already read, then the server's own (disconnects)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
