"""Storage full or unwritable while a job writes its video: the job fails with `storage_error` and a
message that says why, the worker stays up (same process, still ready), and once there is room
again it completes the next job.

    file_size_limit  RLIMIT_FSIZE on the worker's pool process (prlimit): its writes past 4 KiB fail
                     with EFBIG, as on a disk that is full for this process (no privileges needed)
    disk_full        a 64 KiB tmpfs mounted on the videos folder, filled up but for 8 KiB: ENOSPC
    read_only        a read-only tmpfs mounted on the videos folder: EROFS
The last two need the right to mount (root, as in the CI container); elsewhere they are skipped.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hyv.service.job_model import JobStatus
from tests.reliability.faults.conftest import MEDIUM, SMALL, Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 3
TMPFS_BYTES = 64 * 1024
ROOM_LEFT_BYTES = 8 * 1024  # less than one MEDIUM video (~14 KB)


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(workers=1)


@contextlib.contextmanager
def mounted(where: Path, options: str) -> Iterator[None]:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(where)], check=True)


@contextlib.contextmanager
def storage_fault(stack: Stack, variant: str) -> Iterator[None]:
    """The fault while inside; the storage as it was after."""
    videos = Path(stack.settings.data_dir) / "videos"
    if variant == "file_size_limit":
        pid = stack.pool_pid("w1")
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            yield
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    elif variant == "disk_full":
        with mounted(videos, f"size={TMPFS_BYTES}"):
            (videos / "filler").write_bytes(b"\0" * (TMPFS_BYTES - ROOM_LEFT_BYTES))
            yield
    else:
        with mounted(videos, "ro,size=64k"):
            yield


EXPECTED = {"file_size_limit": "EFBIG", "disk_full": "ENOSPC", "read_only": "EROFS"}


@pytest.mark.parametrize("variant", list(EXPECTED))
def test_storage_full_or_unwritable_fails_the_job_cleanly(
    stack: Stack, variant: str, record_faults: Callable[[int], None]
) -> None:
    pid = stack.pool_pid("w1")
    for _ in range(ROUNDS):
        with storage_fault(stack, variant):
            job = stack.submit(**MEDIUM)
            failed = stack.finished(job.id, 60)
            assert failed.status == JobStatus.FAILED, failed
            assert failed.error_code == "storage_error", (failed.error_code, failed.error_message)
            assert EXPECTED[variant] in (failed.error_message or ""), failed.error_message
            assert not stack.video_path(job.id).exists()
            assert not stack.video_path(job.id).with_suffix(".mp4.part").exists()  # no partial left
        assert stack.pool_pid("w1") == pid and stack.ready_workers() == 1  # the same process, ready
        after = stack.submit(**SMALL)
        stack.assert_completed(after.id, frames=SMALL["num_frames"], timeout_s=60)
    record_faults(ROUNDS)
