"""``PayloadTable``: payloads kept by field give back exactly what was put in, whatever the
payload holds, and weigh a fraction of a dict per point."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dinoseek.payload_table import PayloadTable

KEYS = st.sampled_from(["path", "width", "size", "dedup_threshold", "paths", "label", "x"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)
PAYLOADS = st.lists(st.dictionaries(KEYS, VALUES, max_size=5), max_size=40)


@settings(max_examples=200, deadline=None)
@given(PAYLOADS, st.integers(min_value=1, max_value=8))
def test_every_payload_comes_back_as_it_was_read(
    payloads: list[dict[str, Any]], capacity: int
) -> None:
    table = PayloadTable(capacity)
    for payload in payloads:
        table.append(payload)
    assert len(table) == len(payloads)
    assert list(table) == payloads
    for index, payload in enumerate(payloads):
        assert table[index] == payload
        assert table[index - len(payloads)] == payload
        # The same type, not only an equal value: True stays a bool, 1.0 a float.
        assert [type(v) for v in table[index].values()] == [type(payload[k]) for k in table[index]]
    assert table[1:3] == payloads[1:3]
    for key in ("path", "width", "dedup_threshold", "paths", "missing"):
        assert table.values(key) == [p.get(key) for p in payloads]
    for keys in (["path"], ["width", "paths"], ["missing"]):
        assert table.having(keys) == [i for i, p in enumerate(payloads) if set(keys) & set(p)]


def test_an_index_past_the_end_is_an_index_error() -> None:
    table = PayloadTable.of([{"a": 1}])
    for index in (1, -2):
        with pytest.raises(IndexError):
            table[index]


def test_a_point_costs_tens_of_bytes_not_a_dict() -> None:
    """What dedup keeps of an indexed image: the values themselves are the reader's; the
    table adds a few bytes a field where dicts add several hundred bytes a point."""
    count = 20_000
    payloads = [
        {
            "path": f"/photos/2026/{i:06d}.jpg",
            "width": 4000 + i,
            "height": 3000 + i,
            "size": 2_000_000 + i,
            "files_oldest_mtime_ns": 1_700_000_000_000_000_000 + i,
            "files_newest_mtime_ns": 1_700_000_000_000_000_000 + i,
            "dedup_threshold": 0.95,
        }
        for i in range(count)
    ]
    tracemalloc.start()
    table = PayloadTable(count)  # as read_vectors sizes it: the collection's count
    for payload in payloads:
        table.append(payload)
    table_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tracemalloc.start()
    copies = [dict(p) for p in payloads]
    dict_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(table) == len(copies) == count
    assert table_bytes / count < 80, f"{table_bytes / count:.0f} bytes a point"
    assert dict_bytes > 3 * table_bytes
