"""Container health checks (Docker HEALTHCHECK, compose `healthcheck`, Kubernetes exec probes).

    python -m hyv.service.healthcheck api       # GET http://127.0.0.1:{port}/healthz answers 200
    python -m hyv.service.healthcheck worker    # this container has a worker beating "ready" in Redis

Exit status 0 = healthy, 1 = not (the reason on stderr). The port and the Redis URL are the
service's settings (HYV_PORT, HYV_REDIS_URL). A probe runs every few seconds, so this module stays
light: it imports the settings (pydantic, no torch) and, for the worker check only, redis-py.

A worker is healthy when one of its pool processes has loaded the model and beats in Redis:
`hyv:workers:{hostname}:{pid}` (hyv/service/worker_process.py) with `"ready": true`, where hostname is the
container's (Docker: the container id; Kubernetes: the pod name).
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request

from hyv.service.settings import Settings

WORKER_KEY_PREFIX = "hyv:workers:"


def check_api(timeout_s: float = 3.0, *, settings: Settings | None = None) -> str | None:
    """None when /healthz answers 200, else the reason."""
    settings = settings or Settings()
    url = f"http://127.0.0.1:{settings.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except (OSError, urllib.error.URLError) as exc:
        return f"{url}: {exc}"


def check_worker(
    hostname: str | None = None, timeout_s: float = 3.0, *, settings: Settings | None = None
) -> str | None:
    """None when a worker of this host beats ready in Redis, else the reason."""
    import redis

    url = (settings or Settings()).redis_url
    if not url:
        return "HYV_REDIS_URL is not set"
    hostname = hostname or socket.gethostname()
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        keys = list(client.scan_iter(match=f"{WORKER_KEY_PREFIX}{hostname}:*", count=100))
        beats = [json.loads(value) for value in (client.mget(keys) if keys else []) if value]
    except redis.RedisError as exc:
        return f"redis: {exc}"
    finally:
        client.close()
    if any(beat.get("ready") for beat in beats):
        return None
    if beats:
        return f"{len(beats)} worker process(es) on {hostname} beat, none has loaded the model yet"
    return f"no worker of {hostname} beats in Redis"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    role = argv[0] if argv else "api"
    if role == "api":
        problem = check_api()
    elif role == "worker":
        problem = check_worker()
    else:
        print(f"usage: python -m hyv.service.healthcheck [api|worker] (got {role!r})", file=sys.stderr)
        return 2
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
