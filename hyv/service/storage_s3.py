"""S3-compatible storage (AWS S3, MinIO, Ceph RGW...): `HYV_STORAGE=s3`.

Objects in `s3_bucket`, under `s3_prefix` (default `hyv/`):

    {prefix}videos/{id}.mp4        the finished MP4 (Content-Type video/mp4)
    {prefix}thumbnails/{id}.png    its first frame
    {prefix}spritesheets/{id}.jpg  a grid of its frames, made on first request
    {prefix}images/{id}            the input image of an image-to-video job

While a job renders, the worker writes the fragmented MP4 into a local spool file,
`{data_dir}/videos/{id}.mp4.part`, exactly as LocalStorage does, so an API process that sees the
worker's data_dir (same box, or a shared volume) still streams the video while it renders. On
close the spool is uploaded (one PUT, or a multipart upload of 8 MiB parts above 8 MiB) and only
then renamed to `{id}.mp4`: a local copy the worker reads the thumbnail from (`video_file`) and
then deletes. Finished content is read from S3 (`open_object`: ranged GETs, S3's ETag).

Every S3 failure is raised as hyv.service.storage.StorageError, whose message names the cause (bucket
missing, credentials refused, endpoint unreachable...) and never a secret; the worker fails the
job with `storage_error`, the API answers 503 `storage_error`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from hyv.service.byte_ranges import ByteRange, RangeNotSatisfiableError
from hyv.service.job_model import JOB_ID_RE
from hyv.service.storage import READ_CHUNK_BYTES, LocalVideoWriter, StorageError, Variant, _check_id

if TYPE_CHECKING:
    from hyv.service.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

MULTIPART_BYTES = 8 * 2**20  # S3 wants parts >= 5 MiB (but the last)
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AuthorizationHeaderMalformed",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


@dataclass
class S3ObjectInfo:
    size: int
    etag: str  # as S3 sends it, quoted: '"<md5>"' or '"<md5>-<parts>"'
    last_modified: datetime
    content_type: str

    @property
    def last_modified_http(self) -> str:
        return formatdate(self.last_modified.timestamp(), usegmt=True)


@dataclass
class S3Object(S3ObjectInfo):
    """An open GET response: `length` bytes of the object, `content_range` set for a 206."""

    length: int
    content_range: str | None
    body: Any  # botocore.response.StreamingBody

    def chunks(self, size: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        try:
            yield from self.body.iter_chunks(size)
        finally:
            self.body.close()

    def close(self) -> None:
        self.body.close()


class S3VideoWriter(LocalVideoWriter):
    """LocalVideoWriter's growing `.part` spool; close() uploads it before renaming it."""

    _mode = "w+b"  # read back for the upload from our own file (never another writer's)

    def __init__(self, storage: S3Storage, job_id: str) -> None:
        super().__init__(storage.partial_path(job_id), storage.path(job_id))
        self._storage = storage
        self._job_id = job_id

    def close(self) -> None:
        """fsync, upload the spool as `{prefix}videos/{id}.mp4`, then rename it `{id}.mp4`.
        A failed upload raises StorageError and leaves the spool for abort() to remove."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        if not self._owns_part():
            self._file.close()
            raise RuntimeError(f"{self.part} was replaced by another writer; not publishing it")
        # Upload from a duplicate of our own descriptor (boto3 closes the file object it is given).
        with os.fdopen(os.dup(self._file.fileno()), "rb") as source:
            source.seek(0)
            self._storage.upload_video(self._job_id, source)
        owned = self._owns_part()
        self._file.close()
        if owned:
            os.replace(self.part, self.final)


class S3Storage:
    def __init__(
        self,
        bucket: str,
        data_dir: str | Path,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "hyv/",
        addressing_style: str = "path",
        timeout_seconds: float = 10.0,
        max_attempts: int = 3,
        ttl_seconds: float = 24 * 3600,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.ttl_seconds = ttl_seconds
        self.root = Path(data_dir)
        self.videos = self.root / "videos"  # the local spool
        self.videos.mkdir(parents=True, exist_ok=True)
        config = Config(
            s3={"addressing_style": addressing_style},
            connect_timeout=timeout_seconds,
            read_timeout=timeout_seconds,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # Plain Content-MD5/no trailers: what every S3-compatible server understands.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()  # a private session: boto3's default one is not thread-safe
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or "us-east-1",
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        if not settings.s3_bucket:
            raise ValueError("storage is 's3' but s3_bucket is not set (HYV_S3_BUCKET)")
        return cls(
            settings.s3_bucket,
            settings.data_dir,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            prefix=settings.s3_prefix,
            ttl_seconds=settings.job_ttl_seconds,
        )

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint={self.endpoint_url!r})"

    # --- keys and local paths ---------------------------------------------------------------------

    def key(self, job_id: str, variant: Variant | Literal["image", "source"]) -> str:
        _check_id(job_id)
        if variant == "video":
            return f"{self.prefix}videos/{job_id}.mp4"
        if variant == "thumbnail":
            return f"{self.prefix}thumbnails/{job_id}.png"
        if variant == "spritesheet":
            return f"{self.prefix}spritesheets/{job_id}.jpg"
        if variant == "source":
            return f"{self.prefix}sources/{job_id}"
        return f"{self.prefix}images/{job_id}"

    def path(self, job_id: str) -> Path:
        """The local copy of the finished video: only on the worker, between upload and thumbnail."""
        return self.videos / f"{_check_id(job_id)}.mp4"

    def partial_path(self, job_id: str) -> Path:
        return self.videos / f"{_check_id(job_id)}.mp4.part"

    # --- the Storage protocol ----------------------------------------------------------------------

    def open_writer(self, job_id: str) -> S3VideoWriter:
        return S3VideoWriter(self, job_id)

    def upload_video(self, job_id: str, file: IO[bytes]) -> None:
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, max_concurrency=4
        )
        key = self.key(job_id, "video")
        start = time.perf_counter()
        self._call(
            "upload of the video",
            self.client.upload_fileobj,
            file,
            self.bucket,
            key,
            ExtraArgs={"ContentType": "video/mp4"},
            Config=transfer,
        )
        logger.info(
            "uploaded the video to S3",
            extra={"job_id": job_id, "key": key, "upload_s": round(time.perf_counter() - start, 3)},
        )

    def exists(self, job_id: str) -> bool:
        return self.head(job_id, "video") is not None

    def delete(self, job_id: str) -> None:
        keys = [self.key(job_id, v) for v in ("video", "thumbnail", "spritesheet", "image", "source")]
        response = self._call(
            "delete",
            self.client.delete_objects,
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
        if response.get("Errors"):
            first = response["Errors"][0]
            raise StorageError(
                f"S3 delete failed for {first.get('Key')}: {first.get('Code')}: {first.get('Message')}"
            )
        for path in (self.path(job_id), self.partial_path(job_id)):
            path.unlink(missing_ok=True)

    def save_input_image(self, job_id: str, data: bytes) -> None:
        self._put(self.key(job_id, "image"), data, "application/octet-stream", "upload of the input image")

    def load_input_image(self, job_id: str) -> bytes | None:
        obj = self.open_object(job_id, "image")
        if obj is None:
            return None
        try:
            data: bytes = self._call("download of the input image", obj.body.read)
            return data
        finally:
            obj.close()

    def save_input_video(self, job_id: str, data: bytes) -> None:
        self._put(self.key(job_id, "source"), data, "application/octet-stream", "upload of the source video")

    def load_input_video(self, job_id: str) -> bytes | None:
        obj = self.open_object(job_id, "source")
        if obj is None:
            return None
        try:
            data: bytes = self._call("download of the source video", obj.body.read)
            return data
        finally:
            obj.close()

    def save_thumbnail(self, job_id: str, png: bytes) -> None:
        self._put(self.key(job_id, "thumbnail"), png, "image/png", "upload of the thumbnail")

    def save_spritesheet(self, job_id: str, jpeg: bytes) -> None:
        self._put(self.key(job_id, "spritesheet"), jpeg, "image/jpeg", "upload of the spritesheet")

    @contextmanager
    def video_file(self, job_id: str) -> Iterator[Path]:
        """A local file of the finished video: the copy the writer left (or a download), deleted
        afterwards."""
        local = self.path(job_id)
        if not local.is_file():
            local = self.videos / f".{job_id}.mp4.{os.getpid()}.{time.monotonic_ns()}.download"
            self._call(
                "download of the video",
                self.client.download_file,
                self.bucket,
                self.key(job_id, "video"),
                str(local),
            )
        try:
            yield local
        finally:
            local.unlink(missing_ok=True)

    def cleanup_expired(self, now: float, ttl_seconds: float | None = None) -> list[str]:
        """Delete the objects of jobs whose video was uploaded more than ttl_seconds ago (default:
        the storage's); returns their ids. Input images, thumbnails and spritesheets without a video go after
        twice the TTL, and so do local spool files (a crashed writer)."""
        ttl_seconds = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        removed: list[str] = []
        for key, modified in self._list("videos/"):
            job_id = key.rsplit("/", 1)[-1].removesuffix(".mp4")
            if JOB_ID_RE.match(job_id) and now - modified > ttl_seconds:
                self.delete(job_id)
                removed.append(job_id)
        stale = [
            key
            for folder in ("images/", "sources/", "thumbnails/", "spritesheets/")
            for key, modified in self._list(folder)
            if now - modified > ttl_seconds * 2
        ]
        for start in range(0, len(stale), 1000):  # DeleteObjects takes at most 1000 keys
            self._call(
                "delete",
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in stale[start : start + 1000]], "Quiet": True},
            )
        for path in self.videos.glob("video_*.mp4*"):
            try:
                if now - path.stat().st_mtime > ttl_seconds * 2:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                continue
        if removed:
            logger.info("removed %d expired videos from S3", len(removed))
        return removed

    # --- reads for the API -------------------------------------------------------------------------

    def content_info(self, job_id: str, variant: Variant) -> S3ObjectInfo | None:
        return self.head(job_id, variant)

    def open_content(
        self, job_id: str, variant: Variant, byte_range: ByteRange | None = None
    ) -> S3Object | None:
        """The object opened; the range goes to S3 as it is (S3 resolves it, or answers 416)."""
        return self.open_object(job_id, variant, byte_range.header if byte_range else None)

    def head(self, job_id: str, variant: Variant) -> S3ObjectInfo | None:
        """Size, ETag and date of the object; None if there is none."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self.key(job_id, variant))
        except ClientError as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise self._error(exc, f"HEAD of the {variant}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"HEAD of the {variant}") from exc
        return S3ObjectInfo(
            size=int(response["ContentLength"]),
            etag=str(response["ETag"]),
            last_modified=response["LastModified"],
            content_type=str(response.get("ContentType") or "application/octet-stream"),
        )

    def open_object(
        self, job_id: str, variant: Variant | Literal["image", "source"], byte_range: str | None = None
    ) -> S3Object | None:
        """GET the object (byte_range: an HTTP Range value, `bytes=0-99`, passed through to S3);
        None if there is none. The caller reads and closes `body`."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(job_id, variant)}
        if byte_range:
            kwargs["Range"] = byte_range
        try:
            response = self.client.get_object(**kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING_CODES:
                return None
            if code == "InvalidRange":
                size = exc.response.get("Error", {}).get("ActualObjectSize")
                if size is None and variant != "image" and variant != "source":
                    info = self.head(job_id, variant)
                    size = info.size if info else None
                raise RangeNotSatisfiableError(int(size) if size is not None else None) from exc
            raise self._error(exc, f"GET of the {variant}") from exc
        except BotoCoreError as exc:
            raise self._error(exc, f"GET of the {variant}") from exc
        content_range = response.get("ContentRange")
        length = int(response["ContentLength"])
        size = int(str(content_range).rsplit("/", 1)[-1]) if content_range else length
        return S3Object(
            size=size,
            etag=str(response["ETag"]),
            last_modified=response["LastModified"],
            content_type=str(response.get("ContentType") or "application/octet-stream"),
            length=length,
            content_range=str(content_range) if content_range else None,
            body=response["Body"],
        )

    def check(self) -> None:
        """Raise StorageError unless the bucket is reachable with these credentials."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in ("404", "NotFound", "NoSuchBucket"):  # a HEAD answer has no error body
                where = self.endpoint_url or "AWS S3"
                raise StorageError(f"S3 bucket {self.bucket!r} does not exist at {where}") from exc
            raise self._error(exc, "check of the bucket") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "check of the bucket") from exc

    # --- helpers -------------------------------------------------------------------------------------

    def _put(self, key: str, data: bytes, content_type: str, action: str) -> None:
        self._call(
            action, self.client.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
        )

    def _list(self, folder: str) -> Iterator[tuple[str, float]]:
        """(key, last-modified epoch seconds) of the objects under prefix + folder."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + folder):
                for item in page.get("Contents", []):
                    yield str(item["Key"]), item["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "listing") from exc

    def _call(self, action: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, action) from exc
        except Exception as exc:
            if type(exc).__name__ == "S3UploadFailedError":  # boto3's wrapper of a failed upload
                cause = exc.__context__
                if isinstance(cause, BotoCoreError | ClientError):
                    raise self._error(cause, action) from exc
                raise StorageError(f"S3 {action} failed: {exc}") from exc
            raise

    def _error(self, exc: BaseException, action: str) -> StorageError:
        """A StorageError naming what went wrong in words an operator can act on."""
        where = self.endpoint_url or "AWS S3"
        if isinstance(exc, ClientError):
            code = _code(exc)
            message = exc.response.get("Error", {}).get("Message") or ""
            if code == "NoSuchBucket":
                text = f"bucket {self.bucket!r} does not exist at {where}"
            elif code in _CREDENTIAL_CODES:
                text = (
                    f"{where} refused the credentials ({code}: {message}); "
                    "check HYV_S3_ACCESS_KEY_ID / HYV_S3_SECRET_ACCESS_KEY"
                )
            elif code in ("AccessDenied", "403", "Forbidden"):
                text = (
                    f"access denied to bucket {self.bucket!r} at {where} ({code}: {message}); "
                    "check the credentials and the bucket's policy"
                )
            else:
                text = f"{code}: {message}" if message else code
        elif isinstance(exc, NoCredentialsError | PartialCredentialsError):
            text = "no S3 credentials: set HYV_S3_ACCESS_KEY_ID and HYV_S3_SECRET_ACCESS_KEY"
        elif isinstance(
            exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError
        ):
            text = f"the S3 endpoint {where} is unreachable ({type(exc).__name__}: {exc})"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return StorageError(f"S3 {action} failed: {text}")


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    return str(code)
