"""Signed webhooks when a job ends: `video.completed` / `video.failed` / `video.cancelled`.

The scheme is OpenAI's (Standard Webhooks): the POST carries

    webhook-id:         the event id (the same on every retry, so receivers can deduplicate)
    webhook-timestamp:  unix seconds of this attempt
    webhook-signature:  "v1," + base64(HMAC-SHA256(secret, f"{webhook-id}.{timestamp}.{body}"))

where the secret is `HYV_WEBHOOK_SECRET`, base64-decoded when it has the "whsec_" prefix (as
OpenAI's SDK does, so `openai.OpenAI().webhooks.unwrap(body, headers, secret=...)` verifies ours).
The body is `{"id": "evt_...", "object": "event", "type": "video.completed", "created_at": ...,
"data": <the video object of GET /v1/videos/{id}>}`.

Delivery is retried with exponential backoff (1, 2, 4... s, at most 60 s apart) on connection
errors, timeouts, names that do not resolve, 408, 429 and 5xx, up to `webhook_max_attempts`
attempts; other 4xx answers stop it, and so does a redirect (never followed).

Where a webhook may go is hyv.service.webhook_targets: each attempt resolves the URL's host again,
checks every address (no loopback, private, link-local, metadata... unless
`webhook_allowed_hosts` names it) and connects to a checked address, with the URL's own Host
header and TLS server name; a refused target stops the delivery.

The worker's one call when a job reaches a final state: `deliver_for_job(job, settings)` (returns at
once; delivery runs in a background thread).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx

from hyv.service.video_object import status_of, to_public
from hyv.service.webhook_targets import (
    AllowList,
    IPAddress,
    Resolver,
    Target,
    TargetRefusedError,
    TargetUnresolvedError,
    resolve_target,
)

if TYPE_CHECKING:
    from hyv.service.job_model import Job
    from hyv.service.settings import Settings

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 10.0
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
USER_AGENT = "hyvideo-serve-webhooks/1"


def check_webhook_url(url: str, allowed_hosts: Sequence[str] = ()) -> str:
    """The URL if it can receive webhooks now: an absolute http(s) URL whose host resolves to
    addresses the policy allows (hyv.service.webhook_targets); ValueError naming the problem
    otherwise. Resolves the host (blocking). Delivery checks again: DNS answers change."""
    resolve_target(url, allowed_hosts)
    return url


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """The webhook-signature header value for one attempt."""
    message = f"{webhook_id}.{timestamp}.{body}".encode()
    digest = hmac.new(secret_bytes(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: str, tolerance_seconds: int = 300) -> bool:
    """Check a delivery the way a receiver should (constant-time compare, replay window)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        webhook_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, webhook_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)


def job_event(job: Job) -> dict[str, Any]:
    """The event body for a finished job: its public video object under `data`."""
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": f"video.{status_of(job)}",
        "created_at": int(time.time()),
        "data": to_public(job).model_dump(mode="json"),
    }


def deliver(
    url: str,
    event: dict[str, Any],
    secret: str,
    max_attempts: int = 5,
    backoff_seconds: float = BACKOFF_BASE_SECONDS,
    timeout_seconds: float = TIMEOUT_SECONDS,
    allowed_hosts: Sequence[str] = (),
    resolver: Resolver = socket.getaddrinfo,
) -> bool:
    """POST the event until the receiver answers 2xx; True if it did. Blocks through the retries.
    Every attempt resolves the host with `resolver` and checks the target first (allowed_hosts: the
    operator's allow-list); the connection goes to a checked address, never to the name."""
    body = json.dumps(event, separators=(",", ":"))
    webhook_id = str(event["id"])
    allow = AllowList.parse(allowed_hosts)
    outcome = "not tried"
    # trust_env=False: no HTTP(S)_PROXY or .netrc, the connection goes to the checked address.
    with httpx.Client(timeout=timeout_seconds, follow_redirects=False, trust_env=False) as client:
        for attempt in range(1, max_attempts + 1):
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "webhook-id": webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(secret, webhook_id, timestamp, body),
            }
            try:
                target = resolve_target(url, allow, resolver)
                response = _post(client, target, body, headers)
                outcome = f"HTTP {response.status_code}"
                if response.is_success:
                    logger.info(
                        "webhook %s delivered (attempt %d)", event["type"], attempt, extra=_extra(event)
                    )
                    return True
                if response.is_redirect:
                    logger.warning(
                        "webhook %s answered %s to %s: redirects are not followed",
                        event["type"],
                        outcome,
                        response.headers.get("location", "(no Location)")[:200],
                        extra=_extra(event),
                    )
                    return False
                if response.status_code not in RETRY_STATUSES:
                    logger.warning(
                        "webhook %s refused with %s: not retried", event["type"], outcome, extra=_extra(event)
                    )
                    return False
            except TargetUnresolvedError as exc:
                outcome = str(exc)
            except TargetRefusedError as exc:
                logger.warning("webhook %s not sent: %s", event["type"], exc, extra=_extra(event))
                return False
            except httpx.HTTPError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            if attempt < max_attempts:
                delay = min(BACKOFF_MAX_SECONDS, backoff_seconds * 2 ** (attempt - 1))
                logger.info(
                    "webhook %s attempt %d failed (%s); retrying in %.1f s",
                    event["type"],
                    attempt,
                    outcome,
                    delay,
                    extra=_extra(event),
                )
                time.sleep(delay)
    logger.warning("webhook %s gave up after %d attempts (%s)", event["type"], max_attempts, outcome)
    return False


def _post(client: httpx.Client, target: Target, body: str, headers: dict[str, str]) -> httpx.Response:
    """POST to the first checked address that takes the connection (the next one on a connect
    error, as a resolver-following client would), never to the name itself."""
    headers = {**headers, "Host": target.host_header}
    *others, last = target.addresses

    def post(address: IPAddress) -> httpx.Response:
        url = target.url_for(address)
        return client.post(url, content=body, headers=headers, extensions=target.extensions)

    for address in others:
        try:
            return post(address)
        except httpx.ConnectError:
            continue
    return post(last)


def deliver_for_job(
    job: Job, settings: Settings, backoff_seconds: float = BACKOFF_BASE_SECONDS
) -> threading.Thread | None:
    """Start delivering the job's final-state webhook in a background thread (None if the job has no
    webhook_url or the server no secret). The worker calls this once when a job ends."""
    if not job.webhook_url:
        return None
    if not settings.webhook_secret:
        logger.warning(
            "job has a webhook_url but HYV_WEBHOOK_SECRET is not set: not sent", extra={"job_id": job.id}
        )
        return None
    event = job_event(job)
    thread = threading.Thread(
        target=deliver,
        args=(
            job.webhook_url,
            event,
            settings.webhook_secret,
            settings.webhook_max_attempts,
            backoff_seconds,
            TIMEOUT_SECONDS,
            settings.webhook_allowed_hosts,
        ),
        name=f"webhook-{job.id}",
        daemon=False,  # a worker shutting down finishes its deliveries first
    )
    thread.start()
    return thread


def _extra(event: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": event.get("data", {}).get("id"), "event_id": event.get("id")}
