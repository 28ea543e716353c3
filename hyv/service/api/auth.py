"""Bearer API keys: compared in constant time, never logged; a caller is known by its key's hash.

Without configured keys the API has no auth and must only be reachable from this machine:
`check_bind(host, api_keys)` refuses any other bind address, `hyv serve` binds 127.0.0.1 instead
with a warning (hyv.service.launcher.safe_host), and `create_app` logs the mode it runs in.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from hyv.service.api.errors import APIError
from hyv.service.job_model import owner_for_key

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """Who is calling: `owner` is the sha256 hex of the API key (or "anonymous" without auth)."""

    owner: str

    @property
    def label(self) -> str:
        """A short, non-secret name for logs and metrics."""
        return self.owner if self.owner == ANONYMOUS else f"key-{self.owner[:8]}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_keys: list[str]) -> None:
    """Raise if the server would be reachable from other machines without any API key."""
    if not api_keys and not is_loopback(host):
        raise ValueError(
            f"refusing to bind {host!r} without API keys: set HYV_API_KEYS (or --api-key) to serve "
            "other machines, or bind a loopback address such as 127.0.0.1"
        )


class KeyRing:
    """The configured keys, matched in constant time (every key is compared, match or not)."""

    def __init__(self, api_keys: list[str]) -> None:
        self._keys = [key.encode() for key in api_keys if key]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> Caller:
        if not self._keys:
            return Caller(ANONYMOUS)
        if not authorization:
            raise _unauthorized("missing API key: send it as 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'")
        candidate = token.strip().encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise _unauthorized("invalid API key")  # never echo the key
        return Caller(owner_for_key(candidate.decode()))


def _unauthorized(message: str) -> APIError:
    return APIError(401, "invalid_api_key", message, headers={"WWW-Authenticate": "Bearer"})


def authenticate_request(request: Request) -> Caller:
    """The request's caller (401 without a valid key), also kept as request.state.caller."""
    keyring: KeyRing = request.app.state.keyring
    caller = keyring.authenticate(request.headers.get("authorization"))
    request.state.caller = caller
    return caller


async def get_caller(request: Request) -> Caller:
    # A coroutine: FastAPI runs a plain `def` dependency in a worker thread, a hop per request.
    return authenticate_request(request)


CallerDep = Annotated[Caller, Depends(get_caller)]
