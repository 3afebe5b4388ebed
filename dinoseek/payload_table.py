"""A few payload fields of many points, kept by field instead of a dict per point.

A million points read for dedup or curate each keep a handful of fields (a path, sizes, file
times, a threshold, marks on a few of them). As a dict per point that is several hundred
bytes a point, most of it the dicts themselves; here an integer or a float is 9 bytes in a
column (its value and whether the point has it), a string one reference in a list, and what
fits no column (a list, a mapping, a bool, an integer beyond 64 bits) a dict for that point
only. ``table[i]`` gives point i's payload back as a dict, equal to the one read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class PayloadTable(Sequence[Mapping[str, Any]]):
    """Payloads appended one at a time, stored by field; a sequence of dicts to read."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = max(1, capacity)
        self._count = 0
        # (field, dtype) -> (values, whether each point has one)
        self._numbers: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._strings: dict[str, list[str | None]] = {}
        self._rest: dict[int, dict[str, Any]] = {}

    @classmethod
    def of(cls, payloads: Iterable[Mapping[str, Any]]) -> PayloadTable:
        """A table holding ``payloads``."""
        table = cls()
        for payload in payloads:
            table.append(payload)
        return table

    def append(self, payload: Mapping[str, Any]) -> None:
        """Add the next point's payload."""
        if self._count == self._capacity:
            self._grow()
        index = self._count
        self._count += 1
        rest: dict[str, Any] = {}
        for key, value in payload.items():
            kind = type(value)
            if kind is str:
                self._string_column(key)[index] = value
            elif (kind is int and INT64_MIN <= value <= INT64_MAX) or kind is float:
                values, present = self._number_column(key, np.dtype(kind))
                values[index] = value
                present[index] = True
            else:
                rest[key] = value
        if rest:
            self._rest[index] = rest

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Mapping[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> Mapping[str, Any] | Sequence[Mapping[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        index %= self._count
        payload: dict[str, Any] = {}
        for column_key, (values, present) in self._numbers.items():
            if present[index]:
                payload[column_key[0]] = values[index].item()
        for key, strings in self._strings.items():
            text = strings[index]
            if text is not None:
                payload[key] = text
        payload.update(self._rest.get(index, {}))
        return payload

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        for index in range(self._count):
            yield self[index]

    def values(self, key: str) -> list[Any]:
        """``key``'s value for every point (None where a point has none), without building
        each payload."""
        found: list[Any] = [None] * self._count
        for (column, _), (values, present) in self._numbers.items():
            if column == key:
                for index in np.flatnonzero(present[: self._count]).tolist():
                    found[index] = values[index].item()
        strings = self._strings.get(key)
        if strings is not None:
            for index, text in enumerate(strings[: self._count]):
                if text is not None:
                    found[index] = text
        for index, rest in self._rest.items():
            if key in rest:
                found[index] = rest[key]
        return found

    def having(self, keys: Iterable[str]) -> list[int]:
        """The points (ascending) that hold at least one of ``keys``."""
        wanted = set(keys)
        mask = np.zeros(self._count, dtype=bool)
        for (column, _), (_, present) in self._numbers.items():
            if column in wanted:
                mask |= present[: self._count]
        for key, strings in self._strings.items():
            if key in wanted:
                mask |= np.fromiter(
                    (text is not None for text in strings[: self._count]), bool, self._count
                )
        for index, rest in self._rest.items():
            if not wanted.isdisjoint(rest):
                mask[index] = True
        return np.flatnonzero(mask).tolist()

    def _number_column(self, key: str, dtype: np.dtype[Any]) -> tuple[np.ndarray, np.ndarray]:
        column_key = (key, dtype.str)
        column = self._numbers.get(column_key)
        if column is None:
            column = (np.zeros(self._capacity, dtype=dtype), np.zeros(self._capacity, dtype=bool))
            self._numbers[column_key] = column
        return column

    def _string_column(self, key: str) -> list[str | None]:
        column = self._strings.get(key)
        if column is None:
            column = self._strings[key] = [None] * self._capacity
        return column

    def _grow(self) -> None:
        self._capacity *= 2
        for column_key, (values, present) in self._numbers.items():
            self._numbers[column_key] = (
                np.resize(values, self._capacity),
                np.concatenate([present, np.zeros(len(present), dtype=bool)]),
            )
        for strings in self._strings.values():
            strings.extend([None] * (self._capacity - len(strings)))
