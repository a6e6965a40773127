"""``--ray-address``: malformed -> exit 2 at once; nothing listening or no cluster for ``auto`` -> one line
naming the address within seconds (Ray alone retries the absent GCS for ever). No cluster is started."""

from __future__ import annotations

import json
import socket

import pytest

from refcal.cli import main

pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question": f"Q {i}?", "choices": ["a", "b"], "label": i % 2}) + "\n"
                            for i in range(4)))
    return path


CASES = [
    ("not a host", "not a host", "is not a Ray address"),
    ("no port", "10.0.0.5", "is not a Ray address"),
    ("port zero", "10.0.0.5:0", "is not a Ray address"),
    ("port too big", "10.0.0.5:70000", "is not a Ray address"),
    ("empty", " ", "is empty"),
    ("nothing listening", "127.0.0.1:{port}", "no Ray cluster answers at --ray-address 127.0.0.1:{port}"),
    ("auto without cluster", "auto", "auto found no running Ray cluster"),
]


@pytest.mark.parametrize("address,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_ray_address_is_one_line(address, words, data, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))  # no ray_current_cluster marker there
    port = _free_port()
    address, words = address.format(port=port), words.format(port=port)
    code = main(["score", "-m", "fake:b", "-d", str(data), "--scoring", "letter", "--no-progress", "--ray",
                 "--ray-address", address, "-o", str(tmp_path / "s.parquet")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and words in err, err
    assert "disk" not in err  # not Ray's unrelated hints
