"""The read-once GGUF reader used during conversion: same fields and tensors as the stock reader, one parse
per file, and nothing changed outside its block."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from refcal.backends._gguf import read_once  # noqa: E402


@pytest.fixture()
def small_gguf(tmp_path):
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_string("general.name", "tiny")
    w.add_uint32("llama.context_length", 64)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(500)] + ["é", ""])
    w.add_array("tokenizer.ggml.scores", [float(i) / 7 for i in range(502)])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.normal(size=(502, 8)).astype(np.float32))
    w.add_tensor("output_norm.weight", rng.normal(size=(8,)).astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _summary(reader) -> tuple:
    fields = {name: ([p.tobytes() for p in f.parts], list(f.data), [int(t) for t in f.types])
              for name, f in reader.fields.items()}
    tensors = [(t.name, t.tensor_type, tuple(int(x) for x in t.shape), np.asarray(t.data).tobytes())
               for t in reader.tensors]
    return fields, tensors


def test_same_fields_and_tensors_as_the_stock_reader(small_gguf):
    expected = _summary(gguf.GGUFReader(str(small_gguf)))
    with read_once():
        got = _summary(gguf.GGUFReader(str(small_gguf)))
    assert got == expected
    names = expected[0]["tokenizer.ggml.tokens"]
    assert len(names[1]) == 502  # the string array really was parsed


def test_one_parse_per_file_inside_the_block_and_stock_outside(small_gguf, tmp_path):
    stock = gguf.GGUFReader
    with read_once():
        a = gguf.GGUFReader(str(small_gguf))
        b = gguf.GGUFReader(small_gguf)  # a Path to the same file: the same reader
        assert a is b
        assert type(a.data) is np.ndarray  # a plain view of the mapping, not a memmap
    assert gguf.GGUFReader is stock
    assert gguf.GGUFReader(str(small_gguf)) is not a


def test_the_patch_is_undone_when_the_block_raises(small_gguf):
    stock = gguf.GGUFReader
    with pytest.raises(RuntimeError), read_once():
        gguf.GGUFReader(str(small_gguf))
        raise RuntimeError("conversion failed")
    assert gguf.GGUFReader is stock
