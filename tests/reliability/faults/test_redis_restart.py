"""Redis restarted (AOF on) while jobs are queued and running: every job completes afterwards, none
is lost, none runs twice at once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import kombu
import pytest
import redis

from hyv.service.broker import TRANSPORT
from hyv.service.launcher import RedisServer
from tests.reliability.faults.conftest import MEDIUM, Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 3
JOBS_PER_ROUND = 5  # two workers: two run, three wait in the queue


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(workers=2)


# (how Redis stops, seconds it stays down): a clean restart, a crash, and an outage longer than a
# running job's claim lease (1.5 s here): the claims lapse, the jobs are requeued, and the workers
# that ran them notice at their next step and stop.
VARIANTS = {"sigterm": ("sigterm", 0.5), "sigkill": ("sigkill", 0.5), "down_past_the_lease": ("sigkill", 3.0)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_redis_restart_with_jobs_queued_and_running(
    stack: Stack, variant: str, record_faults: Callable[[int], None]
) -> None:
    how, down_s = VARIANTS[variant]
    for _ in range(ROUNDS):
        jobs = [stack.submit(**MEDIUM, seed=i) for i in range(JOBS_PER_ROUND)]
        stack.wait_running([job.id for job in jobs], 2)
        assert stack.store.jobs.queue_depth("hyv-tiny") >= JOBS_PER_ROUND - 2
        stack.restart_redis(how, down_s)
        for job in jobs:
            stack.assert_completed(job.id, frames=MEDIUM["num_frames"])
    record_faults(ROUNDS)


def test_an_ack_that_fails_while_redis_is_down_frees_the_prefetch_slot(tmp_path: Path) -> None:
    """hyv.service.broker's fix, on its own: with kombu's Redis transport a failed ack keeps the
    consumer's only prefetch slot taken, and the worker never takes another message."""
    received: list[kombu.Message] = []
    with RedisServer(tmp_path / "redis", persist=True) as server:
        connection = kombu.Connection(server.url, transport=TRANSPORT)
        queue = kombu.Queue("hyv.test", routing_key="hyv.test")
        with connection.Producer() as producer:
            producer.publish({"n": 1}, routing_key="hyv.test", declare=[queue])
        channel = connection.channel()
        channel.basic_qos(0, 1, False)
        with kombu.Consumer(channel, [queue], callbacks=[lambda _body, m: received.append(m)]):
            connection.drain_events(timeout=10)
            assert len(received) == 1 and not channel.qos.can_consume()
            server.stop()
            with pytest.raises(redis.ConnectionError):
                received[0].ack()
            assert channel.qos.can_consume()  # the next message can come once Redis is back
        with contextlib.suppress(Exception):
            connection.release()
