"""Access key check and request body limit for the HTTP API.

* :func:`key_matches`: the request presents the key as the ``code`` query parameter or
  the ``x-functions-key`` header (as the Functions host accepts its keys); compared in
  constant time.
* :class:`BodyLimitMiddleware`: a pure ASGI middleware that answers 413 when a request
  body is larger than the limit: at once when ``Content-Length`` says so, else as soon as
  the streamed body goes past it (the body is never read whole first).
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "BodyTooLargeError", "is_loopback_host", "key_matches"]

KEY_HEADER = "x-functions-key"
KEY_QUERY = "code"


def key_matches(request: Request, key: str) -> bool:
    """True if the request carries ``key`` (``?code=`` or ``x-functions-key``)."""
    expected = key.encode("utf-8")
    ok = False
    for given in (request.query_params.get(KEY_QUERY), request.headers.get(KEY_HEADER)):
        if given is not None:
            # Both compared, always: the time taken does not tell which one matched.
            ok |= hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)
    return ok


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_DRAIN_BYTES = 1024 * 1024


async def _drain(receive: Receive, limit: int) -> None:
    drained = 0
    while drained <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyTooLargeError(Exception):
    """The request body went past the limit while it was being read."""


class BodyLimitMiddleware:
    """Answer 413 to HTTP requests whose body is larger than ``max_body_bytes``."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_body_bytes:
                    await self._too_large(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            # Read (and drop) a bounded rest of the body so the client, still sending,
            # sees the 413 rather than a reset connection; then the connection closes.
            await _drain(receive, max(self.max_body_bytes, _DRAIN_BYTES))
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await self._reject(
            send,
            413,
            f"the request body is larger than the limit of {self.max_body_bytes} bytes",
        )

    @staticmethod
    async def _reject(send: Send, status: int, message: str) -> None:
        body = json.dumps({"Message": message, "ExceptionMessage": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
