"""The broker transport (hyv.service.broker) over TLS: a rediss:// broker gets the fixed transport,
reaches a TLS-only redis-server with its certificate checked, and a failed ack there frees the prefetch
slot as on plain Redis. The service's own Redis clients (sync and the asyncio one of the SSE route)
reach it too. The certificates are made here (tests/service/redis_tls.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from pathlib import Path

import kombu
import kombu.exceptions
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hyv.service.broker import TRANSPORT, Transport, broker_ssl, transport_for
from hyv.service.celery_app import make_celery
from hyv.service.job_model import Job
from hyv.service.job_store import JobStore
from hyv.service.launcher import RedisServer
from hyv.service.settings import Settings
from tests.service.redis_tls import make_redis_tls

NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    root = tmp_path_factory.mktemp("tls-redis")
    with RedisServer(root / "redis", persist=False, tls=make_redis_tls(root / "certs")) as server:
        yield server


def bare_url(server: RedisServer) -> str:
    """The server's rediss:// URL without TLS options: its certificate checked against the system CAs."""
    return f"rediss://127.0.0.1:{server.port}/0"


def test_redis_and_rediss_brokers_get_the_fixed_transport() -> None:
    assert transport_for("redis://127.0.0.1:6379/0") == TRANSPORT
    assert transport_for("rediss://:pw@redis.example:6380/0?ssl_cert_reqs=required") == TRANSPORT
    assert transport_for("sentinel://10.0.0.1:26379") is None
    assert transport_for("memory://") is None
    assert broker_ssl("redis://127.0.0.1:6379/0") is None
    assert broker_ssl("rediss://redis.example:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


@pytest.mark.servers
def test_the_tls_server_refuses_plain_text(tls_redis: RedisServer) -> None:
    assert tls_redis.url.startswith("rediss://")
    assert redis.Redis.from_url(tls_redis.url).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=tls_redis.port, socket_timeout=5, retry=NO_RETRY).ping()


@pytest.mark.servers
def test_celery_sends_over_tls_with_the_fixed_transport(tls_redis: RedisServer, tmp_path: Path) -> None:
    client = redis.Redis.from_url(tls_redis.url)
    client.delete("hyv.tls-test")
    app = make_celery(Settings(redis_url=tls_redis.url, data_dir=tmp_path))
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED  # from the URL's query
        app.send_task("hyv.generate", args=["video_x"], queue="hyv.tls-test", connection=connection)
    assert client.llen("hyv.tls-test") == 1
    client.delete("hyv.tls-test")


@pytest.mark.servers
def test_a_rediss_url_without_options_checks_the_certificate(tls_redis: RedisServer, tmp_path: Path) -> None:
    """The test CA is not among the system's: the broker refuses the server rather than trusting it."""
    app = make_celery(Settings(redis_url=bare_url(tls_redis), data_dir=tmp_path))
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        with pytest.raises(kombu.exceptions.OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
            connection.ensure_connection(max_retries=1, interval_start=0)
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis.Redis.from_url(bare_url(tls_redis), retry=NO_RETRY).ping()  # the service's other clients agree


@pytest.mark.servers
def test_the_events_stream_follows_a_job_over_tls(tls_redis: RedisServer, tmp_path: Path) -> None:
    store = JobStore.from_url(tls_redis.url, Settings(redis_url=tls_redis.url, data_dir=tmp_path))
    job = store.jobs.create(Job(model="hyv-tiny", request={"prompt": "p"}, prompt="p", num_frames=5))

    async def collect() -> list[str]:
        seen = []
        async for event in store.events.stream(job.id, poll_seconds=0.5):
            seen.append(event["event"])
            if len(seen) == 1:
                store.jobs.update(job.id, status="completed", progress=100)
        return seen

    assert asyncio.run(asyncio.wait_for(collect(), 10)) == ["queued", "completed"]


@pytest.mark.servers
def test_an_ack_that_fails_while_tls_redis_is_down_frees_the_prefetch_slot(tmp_path: Path) -> None:
    """As test_redis_restart's test of the same name, on a TLS-only redis-server."""
    received: list[kombu.Message] = []
    tls = make_redis_tls(tmp_path / "certs")
    with RedisServer(tmp_path / "redis", persist=True, tls=tls) as server:
        connection = kombu.Connection(server.url, transport=TRANSPORT)
        queue = kombu.Queue("hyv.test", routing_key="hyv.test")
        with connection.Producer() as producer:
            producer.publish({"n": 1}, routing_key="hyv.test", declare=[queue])
        channel = connection.channel()
        assert issubclass(channel.client.connection_pool.connection_class, redis.SSLConnection)
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
