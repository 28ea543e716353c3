"""HTTP range requests (RFC 9110 §14): the one Range parser of the API, for finished content (any
storage) and for a video still rendering, and the If-Range condition (§13.1.5).

What a GET with `Range: bytes=...` gets (RFC 9110 leaves a server these choices; §-numbers are
RFC 9110's):

- One range: `bytes=first-last`, `bytes=first-` or a suffix `bytes=-length` is a 206 of that span.
  A last byte past the end, or a suffix longer than the content, is cut to the content, so
  `bytes=0-` and `bytes=-<more than the length>` are 206 with the whole content (§14.1.1). A range
  that starts at or past the end, and `bytes=-0`, are unsatisfiable: 416 with
  `Content-Range: bytes */<length>` (§14.1.1, §15.5.17).
- Several ranges: the int ranges that overlap or touch are coalesced (§15.3.7.2 allows it in any
  order), and so are several suffixes (the longest one covers the others). If that leaves one range
  it is served as above, one part (`bytes=500-600,601-999` is `bytes=500-999`: 206). Ranges that
  stay apart, or suffixes mixed with int ranges (`bytes=0-0,-1`), are ignored: the whole content,
  200. The service never sends multipart/byteranges; §14.2 lets a server ignore any Range.
- An invalid ranges-specifier (§14.1.1): an int range whose last byte comes before its first
  (`bytes=5-2`, also inside a list) is rejected with 416, which §14.2 allows ("MAY ignore or reject
  a Range header field that contains an invalid ranges-specifier") and which tells the client its
  request is wrong rather than sending it a whole file it did not ask for. A value with no range in
  it (`bytes=abc`, `bytes=`, `bytes=-`) is ignored: 200.
- Another unit (`items=0-9`) is ignored (§14.2: MUST ignore a unit it does not understand).
- Empty list elements are skipped (§5.6.1): `bytes=0-9,` is `bytes=0-9`.
- The Range is evaluated only for GET (HEAD ignores it, §14.2), after If-None-Match (a match is
  304, §13.2.2), and only when If-Range holds (`if_range_holds`; a stale validator: the whole
  content, 200).

Numbers of any length are read; a position past 2**63 - 1 counts as that (past the end of any
content), so a header of thousands of digits is a 416, never a server error.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

_RANGE = re.compile(r"([0-9]*)\s*-\s*([0-9]*)")
MAX_POSITION = 2**63 - 1  # past the end of any content (and what S3 accepts in a Range)


class RangeNotSatisfiableError(Exception):
    """The requested byte range cannot be served from this content (HTTP 416); `size` is the
    content's length when known."""

    def __init__(self, size: int | None) -> None:
        super().__init__(f"range not satisfiable (content size {size})")
        self.size = size


@dataclass(frozen=True)
class ByteRange:
    """`bytes=first-last` (last None: to the end), or a suffix `bytes=-last` (first None: the
    last `last` bytes)."""

    first: int | None
    last: int | None

    @property
    def header(self) -> str:
        first = "" if self.first is None else str(self.first)
        last = "" if self.last is None else str(self.last)
        return f"bytes={first}-{last}"

    def resolve(self, size: int) -> tuple[int, int]:
        """[start, end) within content of `size` bytes (a last byte past the end is cut there)."""
        if self.first is None:
            assert self.last is not None
            if self.last == 0 or size == 0:
                raise RangeNotSatisfiableError(size)
            return max(0, size - self.last), size
        if self.first >= size:
            raise RangeNotSatisfiableError(size)
        end = size if self.last is None else min(size, self.last + 1)
        return self.first, end


def parse_range(header: str | None) -> ByteRange | None:
    """The one range a Range header asks for (several coalesced into one); None when the header is
    to be ignored (see the module's docstring); RangeNotSatisfiableError (size unknown) when an
    int range in it is reversed."""
    if not header:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in spec.split(",")]
    found = [_RANGE.fullmatch(part) for part in parts if part]
    ranges: list[ByteRange] = []
    for match in found:
        if match is None or not (match[1] or match[2]):
            continue
        first = _position(match[1]) if match[1] else None
        last = _position(match[2]) if match[2] else None
        if first is not None and last is not None and last < first:
            raise RangeNotSatisfiableError(None)
        ranges.append(ByteRange(first, last))
    if not ranges or len(ranges) != len(found):
        return None  # no range at all, or something that is not one: the whole content
    return _coalesce(ranges)


def _position(digits: str) -> int:
    """A byte position; any beyond MAX_POSITION (past the end of any content) is MAX_POSITION."""
    digits = digits.lstrip("0") or "0"
    return MAX_POSITION if len(digits) > len(str(MAX_POSITION)) else min(int(digits), MAX_POSITION)


def _coalesce(ranges: list[ByteRange]) -> ByteRange | None:
    """One range covering exactly the bytes of `ranges`, or None if they do not make one without
    knowing the content's length (apart, or suffixes mixed with int ranges)."""
    suffixes = [r.last for r in ranges if r.first is None and r.last is not None]
    if suffixes:
        return ByteRange(None, max(suffixes)) if len(suffixes) == len(ranges) else None
    spans = sorted(ranges, key=lambda r: r.first or 0)
    first, last = spans[0].first, spans[0].last
    for span in spans[1:]:
        assert span.first is not None
        if last is not None and span.first > last + 1:
            return None  # a gap: two parts
        if last is not None:
            last = None if span.last is None else max(last, span.last)
    return ByteRange(first, last)


def if_range_holds(if_range: str, etag: str, last_modified_http: str, now: float | None = None) -> bool:
    """Whether an If-Range validator still names this content (RFC 9110 §13.1.5), so its Range is
    served: an entity tag that is a strong match for `etag` (a weak `W/"..."` never is), or an
    HTTP-date equal to Last-Modified, and only if that date is a strong validator (§8.8.2.2: at
    least one second before `now`, else the content may have changed within that second)."""
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == etag and not etag.startswith("W/")
    if value != last_modified_http:
        return False
    try:
        modified = parsedate_to_datetime(last_modified_http).timestamp()
    except (TypeError, ValueError):
        return False
    return (time.time() if now is None else now) - modified >= 1
