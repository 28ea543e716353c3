"""hyv/service/byte_ranges.py: the one Range parser of the API (finished files in any storage and
videos still rendering go through it)."""

from __future__ import annotations

import pytest

from hyv.service.byte_ranges import (
    MAX_POSITION,
    ByteRange,
    RangeNotSatisfiableError,
    if_range_holds,
    parse_range,
)


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
        ("bytes=0-1,5-9", None),  # ranges apart: the whole content (no multipart)
        ("bytes", None),
        # Several ranges that overlap or touch are one, in any order (RFC 9110 §15.3.7.2).
        ("bytes=500-600,601-999", ByteRange(500, 999)),
        ("bytes=500-700,601-999", ByteRange(500, 999)),
        ("bytes=601-999,500-600", ByteRange(500, 999)),
        ("bytes=0-9,5-,20-30", ByteRange(0, None)),  # an open end covers everything after it
        ("bytes=-100,-500", ByteRange(None, 500)),  # the longest suffix covers the others
        ("bytes=0-0,-1", None),  # a suffix with an int range: the length decides, so ignored
        ("bytes=0-9,abc", None),  # something that is no range: the whole header is ignored
        ("bytes=0-9,", ByteRange(0, 9)),  # empty list elements are skipped (RFC 9110 §5.6.1)
        ("bytes=, 0-9 ,,", ByteRange(0, 9)),
        ("bytes=,", None),
        # Positions of any length: past 2**63 - 1 they are past the end of any content.
        ("bytes=" + "9" * 5000 + "-", ByteRange(MAX_POSITION, None)),
        ("bytes=0-" + "9" * 5000, ByteRange(0, MAX_POSITION)),
        ("bytes=0000000000000000000000000000012-0000000000000000000000000000034", ByteRange(12, 34)),
    ],
)
def test_parse(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header) == expected


@pytest.mark.parametrize("header", ["bytes=30-10", "bytes=0-1,30-10", "bytes=abc,30-10", "bytes=5-2,0-9"])
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


def test_a_huge_position_is_past_the_end() -> None:
    huge = parse_range("bytes=" + "1" * 5000 + "-")
    assert huge is not None
    with pytest.raises(RangeNotSatisfiableError):
        huge.resolve(10**12)
    cut = parse_range("bytes=10-" + "1" * 5000)
    assert cut is not None and cut.resolve(1000) == (10, 1000)
    assert cut.header == f"bytes=10-{MAX_POSITION}"  # what S3 is sent


ETAG = '"video_1-1000-1700000000"'
MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"  # 1700000000
LATER = 1700000000 + 3600.0


@pytest.mark.parametrize(
    ("if_range", "now", "holds"),
    [
        (ETAG, LATER, True),  # the current entity tag
        ('"video_1-999-1700000000"', LATER, False),  # another version's
        ("W/" + ETAG, LATER, False),  # a weak tag never matches in If-Range (RFC 9110 §13.1.5)
        (" " + ETAG + " ", LATER, True),
        (MODIFIED, LATER, True),  # the exact Last-Modified, a strong validator by now
        (MODIFIED, 1700000000 + 0.5, False),  # modified within the second: a weak validator
        ("Tue, 14 Nov 2023 22:13:21 GMT", LATER, False),  # another date
        ("Tuesday, 14-Nov-23 22:13:20 GMT", LATER, False),  # the same date, not the same value
        ("garbage", LATER, False),
        ("", LATER, False),
    ],
)
def test_if_range(if_range: str, now: float, holds: bool) -> None:
    assert if_range_holds(if_range, ETAG, MODIFIED, now=now) is holds


def test_if_range_never_holds_for_a_weak_current_tag() -> None:
    assert not if_range_holds('W/"x"', 'W/"x"', MODIFIED, now=LATER)
