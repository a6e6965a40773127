"""A retrying JSON POST for OpenAI-compatible servers: back-off with full jitter, ``Retry-After``.

Retried: HTTP 408, 409, 429 and every 5xx, connection errors, timeouts and broken responses.
Not retried: other 4xx (bad request, bad key, unknown model): repeating them cannot help.

Waiting time before retry ``a`` (0-based) is ``uniform(0, min(backoff_max, backoff_base * 2**a))``
("full jitter", so that many clients do not retry in lock-step); when the server sends
``Retry-After`` (seconds or an HTTP date) the wait is at least that long. A ``Retry-After`` longer
than ``max_wait`` is not honoured by sleeping: the call fails at once with a clear message.

Each attempt has ONE deadline, the client's timeout (``httpx.Timeout.read``): the answer is read as
a stream and an attempt still unfinished when the deadline passes fails as a timeout, so a server that
sends its headers and then one byte every few seconds cannot hold a request for ever (httpx's own
timeouts bound each read, not the attempt). The header phase is bounded per read by the same timeout
and in size by h11's 64 KiB header limit.

The API key lives in :class:`Secret`, whose ``repr``/``str`` never show it; every message that can
reach a user goes through :func:`scrub`; URLs are shown through :func:`refcal._urls.public_url`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Any

from .._urls import public_url
from ..errors import BackendError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# Looks like an API key (OpenAI "sk-...", bearer tokens) in a server's error text.
_KEYLIKE = re.compile(r"(sk-[A-Za-z0-9_\-*.]{4,}|Bearer\s+\S+)")


class Secret:
    """Holds a credential; its ``repr`` and ``str`` are ``'***'`` so it cannot leak by printing."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None):
        self._value = value or None

    def get(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret(None)"

    __str__ = __repr__

    def __reduce__(self):  # never pickle a key into a file
        raise TypeError("a Secret cannot be pickled")


def scrub(text: str, secret: Secret | None = None, limit: int = 200) -> str:
    """One line of at most ``limit`` characters with the key and key-like strings removed."""
    if secret and secret.get():
        text = text.replace(secret.get(), "***")
    text = _KEYLIKE.sub("***", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now_ts = time.time() if now is None else now
    return max(0.0, when.timestamp() - now_ts)


class RefusedError(BackendError):
    """A non-retryable HTTP 4xx answer (``status`` holds the code): the server understood the request
    and refuses it, so repeating it cannot help. Callers that probe an optional feature catch it."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Aborted(Exception):
    """Another request failed for good; this one stops instead of retrying (internal)."""


@dataclass
class RetryPolicy:
    """How often and how long to retry (see module docstring)."""

    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    max_wait: float = 120.0


class _Failure(Exception):
    """A retryable failure of one attempt, carrying a one-line description and Retry-After."""

    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


def post_json(
    client: Any,
    url: str,
    payload: dict,
    *,
    headers: dict[str, str],
    policy: RetryPolicy,
    secret: Secret,
    rng: random.Random,
    stop: threading.Event,
    on_retry: Any = None,
) -> dict:
    """POST ``payload`` to ``url`` and return the decoded JSON object, retrying per ``policy``.

    Raises
    ------
    RefusedError
        On a non-retryable 4xx status (a :class:`BackendError`).
    BackendError
        After ``policy.max_retries`` retries or on an unusable body.
    Aborted
        When ``stop`` is set (another request already failed for good) before a retry.
    """
    import httpx  # the optional `api` extra, imported on use

    shown = public_url(url)
    limit = _attempt_limit(client)
    for attempt in range(policy.max_retries + 1):
        if stop.is_set():
            raise Aborted
        try:
            try:
                status, resp_headers, content = _post_once(client, url, payload, headers, limit, stop)
            except httpx.TimeoutException as exc:
                raise _Failure(f"timed out ({scrub(str(exc), secret, 80) or type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise _Failure(f"connection failed ({type(exc).__name__}: {scrub(str(exc), secret, 80)})") from exc
            text = content.decode("utf-8", errors="replace")
            if status in RETRY_STATUS:
                raise _Failure(
                    f"HTTP {status} {scrub(text, secret, 120)}".rstrip(),
                    parse_retry_after(resp_headers.get("retry-after")),
                )
            if status >= 400:
                raise RefusedError(
                    f"POST {shown} was refused with HTTP {status} ({scrub(text, secret)}); "
                    "check the model name, the API key environment variable and --api-base",
                    status,
                )
            try:
                body = json.loads(content)
            except ValueError as exc:
                raise _Failure(f"HTTP {status} with a body that is not JSON") from exc
            if not isinstance(body, dict):
                raise _Failure(f"HTTP {status} with a JSON body that is not an object")
            return body
        except _Failure as fail:
            if attempt == policy.max_retries:
                raise BackendError(
                    f"POST {shown} failed after {attempt + 1} attempts (last: {fail.what}); check that the "
                    "server is up and not overloaded, then re-run: finished answers are kept and resumed"
                ) from None
            wait = rng.uniform(0.0, min(policy.backoff_max, policy.backoff_base * 2.0**attempt))
            if fail.retry_after is not None:
                if fail.retry_after > policy.max_wait:
                    raise BackendError(
                        f"POST {shown} answered {fail.what} and asks to wait {fail.retry_after:.0f} s "
                        f"(more than {policy.max_wait:.0f} s); re-run later: finished answers are kept"
                    ) from None
                wait = max(wait, fail.retry_after)
            log.info("POST %s: %s; retry %d/%d in %.2f s", shown, fail.what, attempt + 1, policy.max_retries, wait)
            if on_retry is not None:
                on_retry()
            if stop.wait(wait):
                raise Aborted from None
    raise AssertionError("unreachable")  # pragma: no cover


def _attempt_limit(client: Any) -> float | None:
    """Seconds one attempt may take in all: the client's read timeout (None: unbounded)."""
    timeout = getattr(client, "timeout", None)
    value = getattr(timeout, "read", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _post_once(client: Any, url: str, payload: dict, headers: dict[str, str], limit: float | None,
               stop: threading.Event) -> tuple[int, Any, bytes]:
    """One attempt: (status, headers, body bytes), read as a stream under ONE deadline of ``limit`` s."""
    import httpx

    start = time.monotonic()
    chunks: list[bytes] = []
    with client.stream("POST", url, json=payload, headers=headers) as resp:
        for chunk in resp.iter_bytes():
            chunks.append(chunk)
            if stop.is_set():
                raise Aborted
            if limit is not None and time.monotonic() - start > limit:
                raise httpx.ReadTimeout(f"no complete answer within {limit:g} s (the server sends too slowly)")
        return resp.status_code, resp.headers, b"".join(chunks)

