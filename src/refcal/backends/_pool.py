"""A bounded pool of daemon threads that yields results as they finish, for backends whose calls block on
sockets (the OpenAI-compatible backend).

Why not ``concurrent.futures.ThreadPoolExecutor``: its workers are joined at shutdown and again at
interpreter exit, so one request stuck on a socket (a server sending a byte every few seconds) holds up
Ctrl-C for as long as the socket lives. These workers are daemon threads that are never joined: the
consumer returns at once, the process can exit, and a stuck worker ends with it (or when its call gives up).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def daemon_map(items: Sequence[Any], fn: Callable[[Any, int], Any], *, workers: int, stop: threading.Event,
               skip: tuple[type[BaseException], ...] = ()) -> Iterator[tuple[int, Any]]:
    """Yield ``(i, fn(items[i], i))`` in completion order, ``workers`` calls at a time.

    The first exception (other than the ``skip`` types, which mean "stopped on request") sets ``stop``, so
    no new item is started; the results that still finish are yielded, then the exception is raised. When
    the consumer stops early (an exception of its own, KeyboardInterrupt, ``close()``), ``stop`` is set and
    nothing is waited for.
    """
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in enumerate(items):
        todo.put(item)
    done: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        while not stop.is_set():
            try:
                i, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, fn(item, i), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
                done.put((i, None, exc))

    threads = [threading.Thread(target=work, name=f"refcal-pool-{j}", daemon=True)
               for j in range(max(1, min(workers, len(items))))]
    for t in threads:
        t.start()
    error: BaseException | None = None
    try:
        while True:
            try:
                i, value, exc = done.get(timeout=0.2)  # a timeout keeps the wait interruptible
            except queue.Empty:
                if any(t.is_alive() for t in threads) or not done.empty():
                    continue
                break
            if exc is None:
                yield i, value
            elif not isinstance(exc, skip) and error is None:
                error = exc
                stop.set()
        if error is not None:
            raise error
    finally:
        stop.set()


__all__ = ["daemon_map"]
