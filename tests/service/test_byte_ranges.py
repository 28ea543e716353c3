"""hyv/service/byte_ranges.py: the one Range parser of the API (finished files in any storage and
videos still rendering go through it)."""

from __future__ import annotations

import pytest

from hyv.service.byte_ranges import ByteRange, RangeNotSatisfiableError, parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=100-", ByteRange(100, None)),
        ("bytes=-500", ByteRange(None, 500)),
        ("BYTES = 5 - 7", ByteRange(5, 7)),  # the unit in any case, spaces around the parts
        ("Bytes=5-7", ByteRange(5, 7)),
        ("bytes= 5 - 7 ", ByteRange(5, 7)),
        (None, None),
        ("", None),
        ("items=0-1", None),  # another unit: the whole content
        ("bytes=a-b", None),  # malformed: ignored
        ("bytes=-", None),
        ("bytes=0-1,5-9", None),  # several ranges: the whole content (no multipart)
        ("bytes", None),
    ],
)
def test_parse(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header) == expected


@pytest.mark.parametrize("header", ["bytes=30-10", "bytes=0-1,30-10"])
def test_a_reversed_range_is_not_satisfiable_even_in_a_list(header: str) -> None:
    with pytest.raises(RangeNotSatisfiableError) as caught:
        parse_range(header)
    assert caught.value.size is None


@pytest.mark.parametrize(
    ("byte_range", "size", "span"),
    [
        (ByteRange(0, 99), 1000, (0, 100)),
        (ByteRange(990, 2000), 1000, (990, 1000)),  # a last byte past the end is cut there
        (ByteRange(10, None), 1000, (10, 1000)),
        (ByteRange(None, 100), 1000, (900, 1000)),
        (ByteRange(None, 5000), 1000, (0, 1000)),  # a suffix longer than the content: all of it
    ],
)
def test_resolve(byte_range: ByteRange, size: int, span: tuple[int, int]) -> None:
    assert byte_range.resolve(size) == span
    assert parse_range(byte_range.header) == byte_range


@pytest.mark.parametrize(
    ("byte_range", "size"),
    [(ByteRange(1000, None), 1000), (ByteRange(None, 0), 1000), (ByteRange(None, 10), 0)],
)
def test_unsatisfiable_spans_name_the_size(byte_range: ByteRange, size: int) -> None:
    with pytest.raises(RangeNotSatisfiableError) as caught:
        byte_range.resolve(size)
    assert caught.value.size == size
