"""Read a GGUF file's header once per conversion, not three times.

``transformers`` builds a new :class:`gguf.GGUFReader` for the config, again for the tokenizer and again for
the weights of one ``from_pretrained(..., gguf_file=...)`` conversion. Each reader parses every metadata field,
and a 262k-token vocabulary (Gemma-3) is millions of tiny slices of a ``numpy.memmap``, whose subclass hooks
(``__getitem__``, ``__array_finalize__``) cost more than the slicing itself: measured on this machine, the
three parses were about 60 % of converting Gemma-3-270M, the de-quantisation about 6 %.

:func:`read_once` replaces ``gguf.GGUFReader`` for the duration of a ``with`` block by a factory that parses
each file once, over a plain ``ndarray`` view of the same mapping (same bytes, no copy), and hands the same
reader to every caller. Outside the block nothing is changed. The converted weights are identical (tested,
and checked in ``benchmarks/bench_convert.py``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    """Within the block, ``gguf.GGUFReader(path)`` parses a file once and returns that reader again."""
    import gguf  # optional dependency of the `transformers` extra, imported on use
    import numpy as np

    stock = gguf.GGUFReader

    class _PlainReader(stock):
        # GGUFReader.__init__ assigns self.data = np.memmap(...); keep a plain view of the same buffer
        @property
        def data(self):  # type: ignore[override]
            return self._plain

        @data.setter
        def data(self, value) -> None:
            self._plain = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    readers: dict[tuple[str, str], object] = {}

    def factory(path, mode="r"):
        if mode != "r":  # writers keep the stock behaviour
            return stock(path, mode)
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = _PlainReader(path, mode)
        return readers[key]

    with _LOCK:  # one patch at a time: concurrent conversions in one process take turns
        gguf.GGUFReader = factory
        try:
            yield
        finally:
            gguf.GGUFReader = stock
            readers.clear()


__all__ = ["read_once"]
