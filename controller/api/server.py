"""The API's HTTP server: uvicorn, with the connection limits a hostile network needs.

uvicorn brings the connection limit (``limit_concurrency``: requests beyond it get 503), the
keep-alive timeout and the parser's size limits, but no deadline for receiving a request: a
client that connects and then sends nothing, one header byte every few seconds, or a complete
head followed by a body that trickles in (or never comes), holds its connection, its file
descriptor and a slot of the limit for ever.  About a hundred of them were enough to make the
API unreachable.  `HeadDeadlineProtocol` is the thin layer that adds it: a subclass of
uvicorn's own protocol (the one it picks by default) that arms a timer when a connection opens
and whenever a new request begins, and cancels it once the request (head and body, at most
``--max-body-bytes``) has been received; the time the application then takes to answer is not
limited.  Parsing stays uvicorn's and httptools'.  Beyond the connection limit a new
connection is closed at once, so the number of descriptors the API holds stays bounded too.

The listening socket is bound before anything else starts (`bind`), so a taken port is a
one-line start-up error, not a thread that dies while the rest of the controller runs on.

When the process does run out of descriptors anyway, asyncio's accept loop logs an ERROR with a
traceback for every connection left in the backlog it tries to take in one go (thousands of
lines a second under a connection flood) and retries a second later.  The accept burst is
bounded by the connection cap (uvicorn's ``backlog``, which asyncio uses as the number of
accepts per wake-up), and `AcceptErrorThrottle` turns those records into one line per interval.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from controller.throttle import LOG_EVERY_S, Throttle

MAX_INCOMPLETE_EVENT_BYTES = 16 * 1024
"""Largest request head the server buffers (uvicorn's h11 setting; httptools has its own,
similar, limit)."""


class AcceptErrorThrottle(logging.Filter):
    """asyncio's "socket.accept() out of system resource" records: one short line per
    interval instead of one traceback per refused connection (see module doc)."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        super().__init__()
        self._throttle = Throttle(every_s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        skipped = self._throttle("accept")
        if skipped is None:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = (
            "REST API cannot accept connections (%s); asyncio retries every second"
            " (%d such errors not logged since the last line)"
        )
        record.args = (getattr(exc, "strerror", None) or exc or "out of resources", skipped)
        record.exc_info = None
        record.exc_text = None
        return True


def _throttle_accept_errors() -> None:
    log = logging.getLogger("asyncio")
    if not any(isinstance(f, AcceptErrorThrottle) for f in log.filters):
        log.addFilter(AcceptErrorThrottle())


class ListenError(RuntimeError):
    """The API cannot listen where it was told to; the message is the one-line reason."""


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for receiving each request, head and body
    (see module doc)."""

    header_timeout: float = 10.0
    max_connections: int = 1000
    dropped = 0  # connections closed by the deadline or the cap (for tests and status)

    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            type(self).dropped += 1
            transport.abort()
            return
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout, self._head_expired)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_expired(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            type(self).dropped += 1
            self.transport.close()


def protocol_class(header_timeout: float, max_connections: int) -> type[HeadDeadlineProtocol]:
    """A protocol class with these limits (a class per server, so tests can run several)."""
    return type(
        "ApiProtocol",
        (HeadDeadlineProtocol,),
        {"header_timeout": header_timeout, "max_connections": max_connections, "dropped": 0},
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or `ListenError` with the reason (e.g. the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and without
    # it every keep-alive answer (head and body written apart) waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ListenError(f"REST API cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, with a deadline for a connection's TLS handshake.

    asyncio calls the protocol's ``connection_made`` - where the connection cap and the
    request deadline live (`HeadDeadlineProtocol`) - only once the handshake is done, and
    uvicorn gives asyncio no handshake timeout, so its default applies (60 s).  A peer that
    connects and sends nothing held its descriptor that long, counted by neither limit
    (measured: 60 such connections to an HTTPS API capped at 5 all still open after 2 s,
    closed after ~60 s): a few per second for a minute were enough to use every descriptor
    the process may open.  The handshake is bounded by the request deadline instead."""

    handshake_timeout: float = 10.0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        create_server = loop.create_server
        timeout = self.handshake_timeout

        async def with_handshake_deadline(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", timeout)
            return await create_server(*args, **kwargs)

        loop.create_server = with_handshake_deadline  # type: ignore[method-assign]
        try:
            await super().startup(sockets=sockets)
        finally:
            del loop.create_server  # the loop's own again


def make_server(
    app: Any,
    *,
    max_connections: int,
    header_timeout: float,
    keepalive: float,
    **options: Any,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` with the limits above (``options``: more uvicorn.Config
    settings, e.g. TLS)."""
    _throttle_accept_errors()
    config = uvicorn.Config(
        app,
        http=protocol_class(header_timeout, max_connections),
        limit_concurrency=max_connections,
        # asyncio takes up to `backlog` connections per wake-up of the listening socket: bound
        # that burst by the cap, so it cannot open more descriptors than the cap allows.
        backlog=max(1, min(2048, max_connections)),
        timeout_keep_alive=max(1, round(keepalive)),
        h11_max_incomplete_event_size=MAX_INCOMPLETE_EVENT_BYTES,
        log_level="warning",
        access_log=False,
        lifespan="off",
        **options,
    )
    config.load()  # the app and its middleware now, not when the first request comes
    srv = _Server(config)
    srv.handshake_timeout = header_timeout
    return srv
