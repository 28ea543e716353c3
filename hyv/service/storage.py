"""Where videos, input images and thumbnails live: a shared folder by default (S3 as an option).

Local layout under data_dir:

    videos/{id}.mp4.part    the fragmented MP4 while the worker writes it (readable while it grows)
    videos/{id}.mp4         the finished file (renamed from .part on close: readers never see half)
    images/{id}             the input image of an image-to-video job
    sources/{id}            the source video of an edit, remix or extension (as received)
    thumbnails/{id}.png     the first frame
    spritesheets/{id}.jpg   a grid of its frames (hyv.service.spritesheet), made on first request

`storage = "s3"` selects hyv.service.storage_s3.S3Storage: the same protocol on an S3-compatible
object store (the growing `.part` file stays a local spool under data_dir).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Protocol

from hyv.service.byte_ranges import ByteRange
from hyv.service.job_model import JOB_ID_RE

if TYPE_CHECKING:
    from hyv.service.settings import Settings

logger = logging.getLogger(__name__)


class StorageError(Exception):
    """The storage backend failed (bucket missing, credentials refused, endpoint down...); the
    message says which, and never contains a secret. Jobs that hit it fail with `storage_error`."""


def _check_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")  # also keeps paths inside data_dir
    return job_id


class VideoWriter(Protocol):
    bytes_written: int

    def write(self, chunk: bytes) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def abandon(self) -> None: ...


Variant = Literal["video", "thumbnail", "spritesheet"]
READ_CHUNK_BYTES = 256 * 1024


class ContentInfo(Protocol):
    """A finished video's (or thumbnail's) validators and size: what HEAD and conditional GETs need."""

    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str: ...  # quoted, strong
    @property
    def last_modified_http(self) -> str: ...


class OpenContent(ContentInfo, Protocol):
    """Finished content opened for reading: `length` bytes from the requested range, `content_range`
    (`bytes a-b/size`) set when a range was served. The reader iterates chunks() (which closes it)
    or calls close()."""

    @property
    def length(self) -> int: ...
    @property
    def content_range(self) -> str | None: ...
    def chunks(self, size: int = READ_CHUNK_BYTES) -> Iterator[bytes]: ...
    def close(self) -> None: ...


class Storage(Protocol):
    """Where a job's files live. The worker writes through open_writer and the save_* methods; the
    API serves finished content through content_info / open_content (ranges resolved by the store),
    and follows a video that renders through partial_path and path: the growing `.part` file and
    the finished file as this process sees them (S3 keeps its spool there too)."""

    def open_writer(self, job_id: str) -> VideoWriter: ...
    def path(self, job_id: str) -> Path: ...
    def partial_path(self, job_id: str) -> Path: ...
    def content_info(self, job_id: str, variant: Variant) -> ContentInfo | None: ...
    def open_content(
        self, job_id: str, variant: Variant, byte_range: ByteRange | None = None
    ) -> OpenContent | None: ...
    def exists(self, job_id: str) -> bool: ...
    def delete(self, job_id: str) -> None: ...
    def save_input_image(self, job_id: str, data: bytes) -> None: ...
    def load_input_image(self, job_id: str) -> bytes | None: ...
    def save_input_video(self, job_id: str, data: bytes) -> None: ...
    def load_input_video(self, job_id: str) -> bytes | None: ...
    def save_thumbnail(self, job_id: str, png: bytes) -> None: ...
    def save_spritesheet(self, job_id: str, jpeg: bytes) -> None: ...
    def video_file(self, job_id: str) -> AbstractContextManager[Path]: ...
    def cleanup_expired(self, now: float, ttl_seconds: float | None = None) -> list[str]: ...


class LocalVideoWriter:
    """Appends to `{id}.mp4.part`, flushing every chunk so a reader of the growing file sees it.

    Each writer has its own inode (a fresh file renamed over `.part`), so a worker that lost its
    job to another one can never scribble into, rename or delete the new owner's file."""

    _mode = "wb"

    def __init__(self, part: Path, final: Path) -> None:
        self.part = part
        self.final = final
        self.bytes_written = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        fresh = part.with_name(f".{part.name}.{os.getpid()}.{time.monotonic_ns()}")
        self._file = fresh.open(self._mode)
        os.replace(fresh, part)  # a redelivered job starts its file over

    def _owns_part(self) -> bool:
        try:
            return os.stat(self.part).st_ino == os.fstat(self._file.fileno()).st_ino
        except (FileNotFoundError, ValueError):
            return False

    def write(self, chunk: bytes) -> None:
        if chunk:
            self._file.write(chunk)
            self._file.flush()
            self.bytes_written += len(chunk)

    def close(self) -> None:
        """Finish: fsync and rename .part -> .mp4 (atomic on one filesystem)."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        owned = self._owns_part()
        self._file.close()
        if not owned:
            raise RuntimeError(f"{self.part} was replaced by another writer; not publishing it")
        os.replace(self.part, self.final)

    def abort(self) -> None:
        """Give up: the partial file is deleted (if it is still ours)."""
        if self._file.closed:
            return
        owned = self._owns_part()
        with contextlib.suppress(OSError):  # a full disk fails the flush of the last bytes again
            self._file.close()  # (closed all the same)
        if owned:
            self.part.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Stop writing and leave the files as they are (another worker took the job over)."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> LocalVideoWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class LocalContent:
    """A finished file opened for reading (OpenContent); its ETag: id, size and modification time."""

    file: IO[bytes]
    size: int
    etag: str
    last_modified: float
    start: int = 0
    length: int = 0
    content_range: str | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def last_modified_http(self) -> str:
        return formatdate(self.last_modified, usegmt=True)

    def chunks(self, size: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        try:
            self.file.seek(self.start)
            left = self.length
            while left > 0 and (data := self.file.read(min(size, left))):
                left -= len(data)
                yield data
        finally:
            self.close()

    def close(self) -> None:
        self.file.close()


class LocalStorage:
    def __init__(self, data_dir: str | Path, ttl_seconds: float = 24 * 3600) -> None:
        self.root = Path(data_dir)
        self.ttl_seconds = ttl_seconds
        self.videos = self.root / "videos"
        self.images = self.root / "images"
        self.sources = self.root / "sources"
        self.thumbnails = self.root / "thumbnails"
        self.spritesheets = self.root / "spritesheets"
        for folder in (self.videos, self.images, self.sources, self.thumbnails, self.spritesheets):
            folder.mkdir(parents=True, exist_ok=True)

    def open_writer(self, job_id: str) -> LocalVideoWriter:
        return LocalVideoWriter(self.partial_path(job_id), self.path(job_id))

    def path(self, job_id: str) -> Path:
        return self.videos / f"{_check_id(job_id)}.mp4"

    def partial_path(self, job_id: str) -> Path:
        return self.videos / f"{_check_id(job_id)}.mp4.part"

    def thumbnail_path(self, job_id: str) -> Path:
        return self.thumbnails / f"{_check_id(job_id)}.png"

    def spritesheet_path(self, job_id: str) -> Path:
        return self.spritesheets / f"{_check_id(job_id)}.jpg"

    def variant_path(self, job_id: str, variant: Variant) -> Path:
        if variant == "thumbnail":
            return self.thumbnail_path(job_id)
        if variant == "spritesheet":
            return self.spritesheet_path(job_id)
        return self.path(job_id)

    def exists(self, job_id: str) -> bool:
        return self.path(job_id).is_file()

    def content_info(self, job_id: str, variant: Variant) -> LocalContent | None:
        found = self.open_content(job_id, variant)
        if found is not None:
            found.close()
        return found

    def open_content(
        self, job_id: str, variant: Variant, byte_range: ByteRange | None = None
    ) -> LocalContent | None:
        """The finished file opened (byte_range resolved against its size: RangeNotSatisfiableError
        when it starts past the end); None if there is none."""
        path = self.variant_path(job_id, variant)
        try:
            file = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            return None
        stat = os.fstat(file.fileno())
        etag = f'"{_check_id(job_id)}-{stat.st_size}-{int(stat.st_mtime)}"'
        content = LocalContent(file, stat.st_size, etag, stat.st_mtime, 0, stat.st_size)
        if byte_range is not None:
            try:
                start, end = byte_range.resolve(stat.st_size)
            except Exception:
                file.close()
                raise
            content.start, content.length = start, end - start
            content.content_range = f"bytes {start}-{end - 1}/{stat.st_size}"
        return content

    @contextmanager
    def video_file(self, job_id: str) -> Iterator[Path]:
        """A local file of the finished video to read (here: the file itself)."""
        yield self.path(job_id)

    def delete(self, job_id: str) -> None:
        for path in (
            self.path(job_id),
            self.partial_path(job_id),
            self.thumbnail_path(job_id),
            self.spritesheet_path(job_id),
            self.images / job_id,
            self.sources / job_id,
        ):
            path.unlink(missing_ok=True)

    def save_input_image(self, job_id: str, data: bytes) -> None:
        _atomic_write(self.images / _check_id(job_id), data)

    def load_input_image(self, job_id: str) -> bytes | None:
        path = self.images / _check_id(job_id)
        return path.read_bytes() if path.is_file() else None

    def save_input_video(self, job_id: str, data: bytes) -> None:
        _atomic_write(self.sources / _check_id(job_id), data)

    def load_input_video(self, job_id: str) -> bytes | None:
        path = self.sources / _check_id(job_id)
        return path.read_bytes() if path.is_file() else None

    def save_thumbnail(self, job_id: str, png: bytes) -> None:
        _atomic_write(self.thumbnail_path(job_id), png)

    def save_spritesheet(self, job_id: str, jpeg: bytes) -> None:
        _atomic_write(self.spritesheet_path(job_id), jpeg)

    def cleanup_expired(self, now: float, ttl_seconds: float | None = None) -> list[str]:
        """Delete the files of jobs whose video is older than ttl_seconds (default: the storage's;
        by modification time); returns their ids. Partial files are left alone unless twice as old
        (a crashed writer)."""
        ttl_seconds = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        removed: list[str] = []
        for path in self.videos.glob("video_*.mp4*"):
            job_id = path.name.split(".", 1)[0]
            limit = ttl_seconds * (2 if path.name.endswith(".part") else 1)
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > limit and JOB_ID_RE.match(job_id):
                self.delete(job_id)
                removed.append(job_id)
        for path in [*self.images.glob("video_*"), *self.sources.glob("video_*")]:
            if now - path.stat().st_mtime > ttl_seconds * 2:
                path.unlink(missing_ok=True)
        if removed:
            logger.info("removed %d expired videos", len(removed))
        return removed


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_storage(settings: Settings) -> Storage:
    """The storage the settings name (`storage = "local"` or `"s3"`)."""
    if settings.storage == "local":
        return LocalStorage(settings.data_dir, settings.job_ttl_seconds)
    if settings.storage == "s3":
        from hyv.service.storage_s3 import S3Storage  # boto3 is only imported when S3 is used

        return S3Storage.from_settings(settings)
    raise ValueError(f"unknown storage {settings.storage!r} (expected 'local' or 's3')")
