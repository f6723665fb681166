"""Request bodies over the limit get a 413 JSON error, declared (Content-Length) or streamed (chunked).

A plain ASGI middleware, outermost, so the check happens before any route reads the body and the
answer has the API's error shape. A body without Content-Length is read here first (it is at most
`max_bytes`) and replayed to the app."""
from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import ApiError, bad_request


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _error(bad_request("invalid_content_length", "bad Content-Length header"), scope, receive, send)
            elif int(declared) > self.max_bytes:
                await _error(self._too_large(), scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await _error(self._too_large(), scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, "request_too_large", f"request body over {self.max_bytes} bytes")


async def _error(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(error.body(), status_code=error.status, headers={"X-Error-Code": error.code})
    await response(scope, receive, send)
