"""The monitoring log: round trip, torn last lines, damaged lines, segments, and kill -9 of a writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from refcal.errors import InputError
from refcal.serve import LogWriter, read_log
from refcal.serve.log import iter_records


def _rec(i, base=None):
    r = {"t": 1000.0 + i, "id": f"r{i}", "task": "multiple_choice", "chat": [0.0, -1.0 - i, -2.0, -3.0],
         "confidence": 0.5, "answer": "A"}
    if base is not None:
        r["base"] = base
    return r


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_round_trip(tmp_path, fsync):
    with LogWriter(tmp_path, fsync=fsync) as w:
        for i in range(5):
            w.write(_rec(i, base=[1.0, 0.0, None, 0.5] if i % 2 else None))
    data = read_log(tmp_path)
    assert len(data) == 5 and data.n_torn == 0
    np.testing.assert_array_equal(data.has_base, [False, True, False, True, False])
    assert data.base[1, 2] == -np.inf and np.isnan(data.base[0]).all()
    np.testing.assert_allclose(data.chat[:, 1], [-1, -2, -3, -4, -5])


def test_segments_rotate_and_are_read_in_order(tmp_path):
    with LogWriter(tmp_path, max_records=3) as w:
        for i in range(8):
            w.write(_rec(i))
    assert len(list(tmp_path.glob("segment-*.jsonl"))) == 3
    np.testing.assert_allclose(read_log(tmp_path).t, 1000.0 + np.arange(8))


def test_torn_last_line_is_skipped_and_counted(tmp_path):
    with LogWriter(tmp_path) as w:
        for i in range(3):
            w.write(_rec(i))
        path = w.path
    with open(path, "ab") as fh:
        fh.write(b'{"t": 1003.0, "id": "r3", "chat": [0.0, ')  # a writer killed mid-line
    data = read_log(tmp_path)
    assert len(data) == 3 and data.n_torn == 1
    with LogWriter(tmp_path) as w:  # a restarted writer opens a new segment: the torn line stays last
        w.write(_rec(4))
    assert len(read_log(tmp_path)) == 4


def test_damaged_line_inside_a_segment_is_refused(tmp_path):
    with LogWriter(tmp_path) as w:
        w.write(_rec(0))
        path = w.path
    with open(path, "ab") as fh:
        fh.write(b"garbage\n" + json.dumps(_rec(1)).encode() + b"\n")
    with pytest.raises(InputError, match=r":2: not a monitoring record"):
        list(iter_records(tmp_path))
    with pytest.raises(InputError, match=r":2: not a monitoring record"):
        read_log(tmp_path)


def test_record_without_the_monitor_fields_is_refused(tmp_path):
    with LogWriter(tmp_path) as w:
        w.write(_rec(0))
        w.write({"t": 2.0, "id": "x", "confidence": 0.5})
    with pytest.raises(InputError, match="lack 'chat'"):
        read_log(tmp_path)


def test_options_of_different_counts_are_padded_with_minus_inf(tmp_path):
    with LogWriter(tmp_path) as w:
        w.write(_rec(0))
        w.write({**_rec(1), "chat": [0.0, -1.0], "base": [0.0, -2.0]})
    data = read_log(tmp_path)
    assert data.chat.shape == (2, 4) and data.chat[1, 2:].tolist() == [-np.inf, -np.inf]
    assert np.isnan(data.base[0]).all() and data.base[1].tolist() == [0.0, -2.0, -np.inf, -np.inf]


def test_missing_or_empty_log(tmp_path):
    with pytest.raises(InputError, match="no such monitoring log"):
        read_log(tmp_path / "nope")
    with pytest.raises(InputError, match="no log segments"):
        read_log(tmp_path)
    LogWriter(tmp_path).close()
    with pytest.raises(InputError, match="no records yet"):
        read_log(tmp_path)


WRITER = textwrap.dedent("""
    import sys
    from refcal.serve import LogWriter
    w = LogWriter(sys.argv[1], fsync=sys.argv[2], max_records=500)
    i = 0
    while True:
        w.write({"t": float(i), "id": str(i), "task": "multiple_choice", "chat": [0.0, -1.0, -2.0],
                 "confidence": 0.6, "answer": "A", "pad": "x" * (i % 3000)})
        i += 1
        if i % 50 == 0:
            print(i, flush=True)
""")


@pytest.mark.parametrize("fsync", ["never", "interval"])
def test_kill_9_loses_nothing_acknowledged_and_never_breaks_the_reader(tmp_path, fsync):
    """SIGKILL a writer in full flight (records of up to 3 kB, so a kill can land inside os.write): every
    record it had written is read back, in order, and the reader never fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for attempt in range(3):
        folder = tmp_path / f"log{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), fsync], stdout=subprocess.PIPE, env=env,
                                text=True)
        acked = 0
        for line in proc.stdout:
            acked = int(line)
            if acked >= 1200 + 137 * attempt:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        data = read_log(folder)
        assert len(data) >= acked
        np.testing.assert_array_equal(data.t, np.arange(len(data), dtype=float))  # no gap, no duplicate
        assert data.n_torn <= 1
