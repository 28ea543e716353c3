"""The Redis broker transport of the workers: kombu's, with the acknowledgement fixed for a Redis
restart (`celery_app` selects it for redis:// and rediss:// brokers).

kombu's Redis `QoS.ack` first removes the message from Redis' unacked index and only then frees the
consumer's prefetch slot. When Redis is unreachable at that moment (a job ended while Redis was
restarting) the first step raises, the slot is never freed and, with a prefetch of one, the worker
never takes another message: alive, connected again, idle for good, with only "Couldn't ack" in its
log. Here the slot is freed whatever Redis answers. A message left in the unacked index is restored
after the visibility timeout and dropped by the job's claim (hyv.service.job_claims: the job is finished,
or another worker holds it), so nothing runs twice and nothing is lost.

TLS (rediss://) takes the same transport. kombu turns TLS on from the URL's scheme only when the
transport is its own, so `broker_ssl` gives Celery the TLS options: the URL's own (`ssl_ca_certs`,
`ssl_cert_reqs`, `ssl_certfile`, `ssl_keyfile`: kombu reads them from the query), else the server's
certificate checked against the system's CAs, as redis-py does for the service's other clients.
"""

from __future__ import annotations

import logging
import ssl
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
    """This transport for a redis:// or rediss:// broker; None (kombu's choice) for anything else."""
    return TRANSPORT if broker_url.startswith(("redis://", "rediss://")) else None


def broker_ssl(broker_url: str) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl` for this broker: None for plain Redis; for rediss:// a required,
    checked server certificate, which TLS options in the URL's query replace (kombu prefers them)."""
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED} if broker_url.startswith("rediss://") else None
