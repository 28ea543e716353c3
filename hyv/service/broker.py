"""The Redis broker transport of the workers: kombu's, with the acknowledgement fixed for a Redis
restart (`celery_app` selects it for redis:// brokers).

kombu's Redis `QoS.ack` first removes the message from Redis' unacked index and only then frees the
consumer's prefetch slot. When Redis is unreachable at that moment (a job ended while Redis was
restarting) the first step raises, the slot is never freed and, with a prefetch of one, the worker
never takes another message: alive, connected again, idle for good, with only "Couldn't ack" in its
log. Here the slot is freed whatever Redis answers. A message left in the unacked index is restored
after the visibility timeout and dropped by the job's claim (hyv.service.job_claims: the job is finished,
or another worker holds it), so nothing runs twice and nothing is lost.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

logger = logging.getLogger(__name__)

TRANSPORT = "hyv.service.broker:Transport"


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        except Exception:
            virtual.QoS.ack(self, delivery_tag)  # free the prefetch slot; Celery logs the error
            raise

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except Exception:
            virtual.QoS.ack(self, delivery_tag)  # the message stays in the unacked index: restored later
            raise


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


def transport_for(broker_url: str) -> str | None:
    """This transport for a plain redis:// broker; None (kombu's choice) for anything else, e.g.
    rediss:// (kombu turns TLS on from the URL's scheme only with its own transport name)."""
    return TRANSPORT if broker_url.startswith("redis://") else None
