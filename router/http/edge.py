"""The edge: bounds on a request's head, kept by the server before it buffers one and by the app before auth.

Two layers, because each alone falls short. The app's guard sees the parsed headers and answers the exact
limits (`limits.max_header_bytes`, `limits.max_headers`) with an OpenAI-shaped 431 through the error tree,
whatever server runs it. But a server parses the whole head first, and httptools keeps a header in memory
until its end, however long. `BoundedHttpTools` (uvicorn's `http=` protocol for `serve`, the demo and the
tests) stops reading a head at a coarse bound instead, so no request holds more than that, plus one socket
read, in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.core.errors import HeadersTooLarge
from router.core.schema import error_body
from router.core.settings import Limits

CODE = "request_header_fields_too_large"
REQUEST_LINE_BYTES = 8192
"""What the server's bound allows for the request line on top of the header limit (the app's guard is exact)."""
FRAMING_BYTES = 4
"""`: ` and CRLF, per header line."""
LINGER_S = 5.0
LINGER_BYTES = 64 * 1024 * 1024
"""After refusing a head, what is still read (and dropped) so that the client, still sending, sees the 431."""


def check_headers(headers: Iterable[tuple[bytes, bytes]], limits: Limits) -> None:
    """Raise HeadersTooLarge when the request has more header lines or header bytes than `limits` allow."""
    count = size = 0
    for name, value in headers:
        count += 1
        size += len(name) + len(value)
    if count > limits.max_headers:
        raise HeadersTooLarge(
            f"The request has {count} header fields; this router accepts at most {limits.max_headers}.", code=CODE
        )
    if size > limits.max_header_bytes:
        raise HeadersTooLarge(
            f"The request's header fields total {size} bytes; this router accepts at most {limits.max_header_bytes}.",
            code=CODE,
        )


def header_guard(limits: Limits) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware that runs `check_headers` before any handler, so before authentication."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == ScopeType.HTTP:
                check_headers(scope["headers"], limits)
            await app(scope, receive, send)

        return guarded

    return middleware


def head_bound(limits: Limits) -> int:
    """The bytes of a request head (request line, header lines, framing) the server reads before refusing it."""
    return limits.max_header_bytes + FRAMING_BYTES * limits.max_headers + REQUEST_LINE_BYTES


def _refusal(message: str) -> bytes:
    body = error_body(message, "invalid_request_error", None, CODE)
    head = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n"
    )
    return head + body


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol that answers 431 once a request head passes `head_limit` bytes unfinished.

    Bytes are counted per socket read while the head is incomplete, so a head is never held beyond the bound
    plus one read. A head that ends within the read that carries it is left to the app's exact guard.
    """

    head_limit: ClassVar[int] = head_bound(Limits())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0  # of the unfinished head, counted per read
        self._heads = 0  # heads completed on this connection
        self._dropped: int | None = None  # bytes read and dropped since the refusal; None: not refused

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes, self._heads = False, 0, self._heads + 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def data_received(self, data: bytes) -> None:
        if self._dropped is not None:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        in_head, heads = self._in_head, self._heads
        super().data_received(data)
        if in_head and self._heads == heads and not self.transport.is_closing():  # that head is still unfinished
            self._head_bytes += len(data)
            if self._head_bytes > self.head_limit:
                self._refuse()

    def _refuse(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head behind an unfinished answer: no room for ours
            return
        self._dropped = 0
        self._unset_keepalive_if_required()
        message = f"The request head passed {self.head_limit} bytes; this router accepts at most that."
        self.transport.write(_refusal(message))
        # Closing now would reset the connection under a client still sending, which then never reads the
        # answer: read on (dropping it) until the client has sent its request and closes, or for a while.
        self.loop.call_later(LINGER_S, self.transport.close)


def bounded_protocol(limits: Limits) -> type[BoundedHttpTools]:
    """The protocol class for uvicorn's `http=`, with the head bound `limits` imply."""
    return type("BoundedHttpTools", (BoundedHttpTools,), {"head_limit": head_bound(limits)})
