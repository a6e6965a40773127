"""Padding-capped batching of the transformers backend (pure Python, no model)."""

from hypothesis import given
from hypothesis import strategies as st

from refcal.backends.batching import MAX_PADDING, pack


@given(st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=60), st.integers(1, 16))
def test_pack_keeps_order_size_and_padding_bound(lengths, batch_size):
    lengths = sorted(lengths, reverse=True)
    order = list(range(len(lengths)))
    chunks = pack(order, lengths, batch_size)
    assert [i for c in chunks for i in c] == order  # every row once, in the given order
    for c in chunks:
        assert 1 <= len(c) <= batch_size
        width = lengths[c[0]]
        real = sum(lengths[i] for i in c)
        # a single row never pads; otherwise padding stays under the cap
        assert len(c) == 1 or width * len(c) - real <= MAX_PADDING * width * len(c) + 1e-9


def test_pack_examples():
    assert pack([0, 1, 2, 3], [10, 10, 10, 10], 2) == [[0, 1], [2, 3]]
    # a long row is not padded against short ones
    assert pack([0, 1, 2], [300, 100, 90], 8) == [[0], [1, 2]]
