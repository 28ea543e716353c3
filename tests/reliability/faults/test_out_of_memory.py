"""Out of memory during a job, forced by a limit: a worker with `job_memory_limit_mb` (on the CPU:
RLIMIT_DATA of its pool process, set once the model is loaded) gets a job that needs more. The job
fails with `out_of_memory`, the worker (the same process) completes the next job, again and again.
On a GPU the same setting caps PyTorch's allocator and torch.cuda.OutOfMemoryError is classified
the same way (hyv.service.job_failures, hyv.service.job_memory)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hyv.service.job_model import JobStatus
from tests.reliability.faults.conftest import SMALL, Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 5
LIMIT_MB = 200  # the tiny model: 32x32x5 needs ~40 MB, 64x64x9 ~110 MB, 128x128x17 ~370 MB
TOO_BIG = {"width": 128, "height": 128, "num_frames": 17, "steps": 2}


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(workers=1, job_memory_limit_mb=LIMIT_MB)


def test_a_job_over_the_memory_limit_fails_and_the_worker_recovers(
    stack: Stack, record_faults: Callable[[int], None]
) -> None:
    pid = stack.pool_pid("w1")
    for _ in range(ROUNDS):
        job = stack.submit(**TOO_BIG)
        failed = stack.finished(job.id, 60)
        assert failed.status == JobStatus.FAILED, failed
        assert failed.error_code == "out_of_memory", (failed.error_code, failed.error_message)
        assert "out of memory" in (failed.error_message or "")
        assert not stack.video_path(job.id).exists()
        assert stack.pool_pid("w1") == pid and stack.ready_workers() == 1  # same process, ready
        after = stack.submit(**SMALL)
        stack.assert_completed(after.id, frames=SMALL["num_frames"], timeout_s=60)
    medium = stack.submit(width=64, height=64, num_frames=9, steps=2)  # under the limit: fine
    stack.assert_completed(medium.id, frames=9, timeout_s=60)
    record_faults(ROUNDS)
