"""The proxy's HTTP client to the upstream: one aiohttp session with a keep-alive pool.

Why aiohttp and not httpx: with 100 requests in flight, httpx's connection pool (httpcore) rescans every
connection and every queued request at each request's start and end and asks each socket whether it is
still readable, which cost about 3 ms of CPU per request on this project's benchmark machine, more than
the rest of the proxy together; aiohttp's pool hands out a free connection in constant time (0.2 ms per
request, same load; ``benchmarks/results/serve.md``).

Everything aiohttp-specific stays in this module: a failed connection, a timeout or a connection dropped
while the body is read is raised as :class:`TransportError`, and an answer is a :class:`Reply`.
"""

from __future__ import annotations

import asyncio
import json as _json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..errors import MissingDependencyError

try:
    import aiohttp
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise MissingDependencyError(_exc.name or "aiohttp", "serve") from None


class TransportError(Exception):
    """The upstream could not be reached, did not answer in time, or dropped the connection."""

    def __init__(self, exc: BaseException):
        super().__init__(type(exc).__name__)
        self.timeout = isinstance(exc, asyncio.TimeoutError)  # aiohttp's timeouts subclass it
        self.name = type(exc).__name__


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class Reply:
    """An upstream answer whose status and headers have arrived; the body is read with :meth:`read`,
    :meth:`chunks` or :meth:`lines` (each raises :class:`TransportError` if the connection breaks), and
    :meth:`release` gives the connection back (reading the whole body does too)."""

    def __init__(self, resp: Any):
        self._resp = resp
        self.status: int = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except _ERRORS as exc:
            raise TransportError(exc) from None
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (no re-chunking)."""
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except _ERRORS as exc:
            raise TransportError(exc) from None

    async def lines(self) -> AsyncIterator[str]:
        """The body's lines (``\\n``-separated, without the separator, any length), for server-sent events."""
        buf = b""
        async for chunk in self.chunks():
            buf += chunk
            *done, buf = buf.split(b"\n")
            for line in done:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if buf:
            yield buf.rstrip(b"\r").decode("utf-8", "replace")

    def release(self) -> None:
        self._resp.release()


class UpstreamClient:
    """One pooled aiohttp session (created in :meth:`start`, inside the server's event loop).

    Parameters
    ----------
    timeout : float
        Seconds to get a connection (from the pool or a new one), and seconds between two reads of an answer
        that is passed on as it arrives (:meth:`open`: a stream may drip for as long as it keeps sending). An
        answer read whole (:meth:`fetch`: every request that is not streamed) must also be complete within
        ``timeout`` of the request, so a slow drip cannot hold a connection for ever.
    max_connections : int
        Upstream connections open at once; more requests wait for a free one (within ``timeout``).
    keepalive_s : float
        Idle seconds before a pooled connection is closed.
    """

    def __init__(self, *, timeout: float, max_connections: int, keepalive_s: float):
        self.timeout, self.max_connections, self.keepalive_s = timeout, max_connections, keepalive_s
        self.session: Any = None
        self._per_read: Any = None  # open(): connect and each read bounded, not the whole answer
        self._whole: Any = None  # open(total=True) and fetch(): the whole answer bounded too

    async def start(self) -> None:
        t = self.timeout
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                         keepalive_timeout=self.keepalive_s)
        # no cookie jar: cookies the upstream sets must not leak from one client's request into another's
        self._per_read = aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t)
        self._whole = aiohttp.ClientTimeout(total=t, connect=t, sock_connect=t, sock_read=t)
        self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=self._per_read)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def open(self, method: str, url: str, *, data: bytes | None = None, json: Any = None,
                   headers: Mapping[str, str], total: bool = False) -> Reply:
        """Send a request (``data`` as is, or ``json`` encoded compactly with its content type); return once the
        status and headers have arrived. ``total``: the whole answer, body included, must arrive within
        ``timeout`` (for an answer read whole)."""
        # identity: the proxy reads the bodies it calibrates, and forwards the others decoded
        hdrs = {**headers, "accept-encoding": "identity"}
        if json is not None:
            data, hdrs["content-type"] = _json.dumps(json, separators=(",", ":")).encode(), "application/json"
        try:
            resp = await self.session.request(method, url, data=data, headers=hdrs, allow_redirects=False,
                                              timeout=self._whole if total else self._per_read)
        except _ERRORS as exc:
            raise TransportError(exc) from None
        return Reply(resp)

    async def fetch(self, method: str, url: str, *, data: bytes | None = None, json: Any = None,
                    headers: Mapping[str, str]) -> tuple[int, Mapping[str, str], bytes]:
        """Send a request (as :meth:`open`) and read the whole answer: ``(status, headers, body)``, all of it
        within ``timeout`` seconds (aiohttp's ``total``, which covers reading the body)."""
        reply = await self.open(method, url, data=data, json=json, headers=headers, total=True)
        return reply.status, reply.headers, await reply.read()
