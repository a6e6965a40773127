"""Scoring progress: a tqdm bar on a terminal; off a terminal, a log line (logger ``refcal.progress``, INFO,
shown by default) every 10% of the questions and at least every :data:`PROGRESS_EVERY_S` seconds, so a
stalled server is visible."""

from __future__ import annotations

import logging
import sys
import threading
import time

progress_log = logging.getLogger("refcal.progress")
progress_log.setLevel(logging.INFO)  # progress lines are shown under the CLI's default WARNING level

#: a progress line off a terminal at least this often (seconds), and at every 10% of the questions
PROGRESS_EVERY_S = 30.0


class Progress:
    """A tqdm bar on a terminal; off a terminal, log lines every 10% and at least every 30 s."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.done = total, initial
        self._bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not enabled or initial >= total:
            return
        if sys.stderr.isatty():
            from tqdm.auto import tqdm  # only on a terminal: tqdm.auto probes for a notebook on import

            self._bar = tqdm(total=total, initial=initial, unit="q", desc="scoring", leave=False)
            return
        self._t0 = time.monotonic()
        self._step = max(1, -(-total // 10))
        self._next = (initial // self._step + 1) * self._step
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._heartbeat, name="refcal-progress", daemon=True)
        self._thread.start()

    def _line(self) -> None:
        progress_log.info("scoring: %d/%d questions (%.0f%%), %.0f s", self.done, self.total,
                          100.0 * self.done / self.total, time.monotonic() - self._t0)

    def _heartbeat(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            with self._lock:
                self._line()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._thread is not None and self.done >= self._next:
            with self._lock:
                self._next = (self.done // self._step + 1) * self._step
                self._line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
