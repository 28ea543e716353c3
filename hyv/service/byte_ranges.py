"""HTTP Range headers (RFC 9110): the one parser of the API's ranges, for finished content (any
storage) and for a video still rendering.

A header the server does not serve is ignored, as RFC 9110 allows (the whole content, 200):
another unit, a malformed value, several ranges. A range whose last byte comes before its first
(`bytes=30-10`, also inside a list) cannot be satisfied: 416."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(r"(\d*)\s*-\s*(\d*)")


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
    """The range a Range header asks for; None when it is to be ignored (see the module's
    docstring); RangeNotSatisfiableError (size unknown) when a range in it is reversed."""
    if not header:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    found = [_RANGE.fullmatch(part.strip()) for part in spec.split(",")]
    for match in found:
        if match is not None and match[1] and match[2] and int(match[2]) < int(match[1]):
            raise RangeNotSatisfiableError(None)
    if len(found) != 1 or found[0] is None or not (found[0][1] or found[0][2]):
        return None
    first, last = found[0][1], found[0][2]
    return ByteRange(int(first) if first else None, int(last) if last else None)
