"""Webhook SSRF: a corpus of hostile `webhook_url`s (loopback, RFC 1918, link-local, cloud metadata,
IPv6 and IPv4-in-IPv6 forms, decimal/hex/octal spellings, names, redirects) is refused at submit by
the real API (real uvicorn, real Redis) and at delivery by the worker's delivery code, while a trap
receiver listening on loopback (IPv4 and IPv6, the port every corpus URL names) counts the requests
that reach it: none may. An allow-listed receiver still gets signed deliveries."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from hyv.service import webhooks
from hyv.service.job_model import Job
from hyv.service.settings import Settings
from hyv.service.webhook_targets import (
    AllowList,
    TargetRefusedError,
    TargetUnresolvedError,
    numeric_ipv4,
    parse_allow_entry,
    refusal_reason,
    resolve_target,
)
from tests.reliability.conftest import KEY_A, VALID, error_of
from tests.service.conftest_api import LiveServer, auth

pytestmark = pytest.mark.timeout(120)

SECRET = "test-webhook-secret"
TRAP_PORT = "{port}"  # replaced by the trap receiver's port

# Every URL must be refused. {port} is the loopback trap's port: a URL that got through would reach it.
HOSTILE_URLS: dict[str, str] = {
    # loopback, in every spelling the C resolver accepts
    "loopback": "http://127.0.0.1:{port}/internal-admin",
    "loopback-127/8": "http://127.0.0.2:{port}/",
    "loopback-top-of-127/8": "http://127.255.255.254:{port}/",
    "localhost": "http://localhost:{port}/",
    "localhost-upper-case": "http://LOCALHOST:{port}/",
    "localhost-trailing-dot": "http://localhost.:{port}/",
    "short-127.1": "http://127.1:{port}/",
    "short-127.0.1": "http://127.0.1:{port}/",
    "decimal": "http://2130706433:{port}/",
    "hex": "http://0x7f000001:{port}/",
    "hex-dotted": "http://0x7f.0x0.0x0.0x1:{port}/",
    "octal-dotted": "http://0177.0.0.1:{port}/",
    "octal-whole": "http://017700000001:{port}/",
    "octal-zero-padded": "http://00000000000177.1:{port}/",
    "zero": "http://0:{port}/",
    "unspecified": "http://0.0.0.0:{port}/",
    "credentials": "http://user:pw@127.0.0.1:{port}/",
    "userinfo-confusion": "http://example.com@127.0.0.1:{port}/",
    "backslash-confusion": "http://127.0.0.1:{port}\\@example.com/",
    "percent-encoded-host": "http://%31%32%37.0.0.1:{port}/",
    "https-loopback": "https://127.0.0.1:{port}/",
    # IPv6 and IPv4-in-IPv6
    "ipv6-loopback": "http://[::1]:{port}/",
    "ipv6-loopback-long": "http://[0:0:0:0:0:0:0:1]:{port}/",
    "ipv6-unspecified": "http://[::]:{port}/",
    "ipv4-mapped": "http://[::ffff:127.0.0.1]:{port}/",
    "ipv4-mapped-hex": "http://[::ffff:7f00:1]:{port}/",
    "ipv4-compatible": "http://[::127.0.0.1]:{port}/",
    "nat64": "http://[64:ff9b::7f00:1]:{port}/",
    "6to4": "http://[2002:7f00:1::1]:{port}/",
    "teredo": "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}/",
    "ipv6-unique-local": "http://[fc00::1]:{port}/",
    "ipv6-link-local": "http://[fe80::1]:{port}/",
    "ipv6-link-local-zone": "http://[fe80::1%25lo]:{port}/",
    "ipv6-multicast": "http://[ff02::1]:{port}/",
    # RFC 1918 and other non-global IPv4
    "rfc1918-10": "http://10.0.0.1/hook",
    "rfc1918-172.16": "http://172.16.0.1/hook",
    "rfc1918-172.31": "http://172.31.255.255:8080/hook",
    "rfc1918-192.168": "http://192.168.1.1/admin",
    "rfc1918-decimal": "http://3232235777/",
    "cgnat": "http://100.64.0.1/",
    "multicast": "http://224.0.0.1/",
    "broadcast": "http://255.255.255.255/",
    "reserved": "http://240.0.0.1/",
    "documentation": "http://192.0.2.1/",
    "benchmarking": "http://198.18.0.1/",
    # link-local and cloud metadata
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "metadata-trailing-dot": "http://169.254.169.254./latest/meta-data/",
    "metadata-decimal": "http://2852039166/latest/meta-data/",
    "metadata-hex": "http://0xa9fea9fe/latest/meta-data/",
    "metadata-ipv4-mapped": "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "metadata-nat64": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "metadata-aws-ipv6": "http://[fd00:ec2::254]/latest/meta-data/",
    "metadata-ecs": "http://169.254.170.2/v2/credentials",
    "metadata-alibaba": "http://100.100.100.200/latest/meta-data/",
    "link-local": "http://169.254.1.1/",
    # not http(s), no host
    "file": "file:///etc/passwd",
    "gopher": "gopher://127.0.0.1:{port}/_POST",
    "ftp": "ftp://127.0.0.1:{port}/",
    "no-host": "http:///hook",
    "relative": "/hook",
}
assert len(HOSTILE_URLS) >= 30

# The numeric spellings, as the C resolver (glibc inet_aton) reads them: numeric_ipv4 must agree.
SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.1",
    "0x7f.0x0.0x0.0x1",
    "0177.0.0.1",
    "017700000001",
    "00000000000177.1",
    "0",
    "10.1",
    "3232235777",
    "0xa9fea9fe",
    "255.255.255.255",
    "4294967295",
    # not numbers (names to the resolver)
    "4294967296",
    "256.0.0.1",
    "1.2.3.4.5",
    "127.0.0.09",
    "0x",
    "0xg",
    "1..1",
    "127.0.0.1.",
    ".127.0.0.1",
    "example.com",
    "",
]


class Recorder:
    """A loopback HTTP server that records every request (any method) and answers `status`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, status: int = 204, **headers: str) -> None:
        self.requests: list[tuple[str, str, dict[str, str], str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                recorder.requests.append((self.command, self.path, dict(self.headers.items()), body))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._record()

            def do_POST(self) -> None:
                self._record()

            def do_PUT(self) -> None:
                self._record()

            def log_message(self, *args: Any) -> None:
                pass

        server_class = ThreadingHTTPServer
        if ":" in host:

            class V6Server(ThreadingHTTPServer):
                address_family = socket.AF_INET6

            server_class = V6Server
        self.server = server_class((host, port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def trap() -> Iterator[list[Recorder]]:
    """Receivers on 127.0.0.1 and, where the machine has IPv6, on ::1, on the same port."""
    v4 = Recorder()
    traps = [v4]
    with contextlib.suppress(OSError):  # no IPv6 loopback: the IPv6 URLs are refused, only not trapped
        traps.append(Recorder("::1", v4.port))
    yield traps
    for recorder in traps:
        recorder.close()


def hostile(trap: list[Recorder]) -> dict[str, str]:
    return {name: url.replace(TRAP_PORT, str(trap[0].port)) for name, url in HOSTILE_URLS.items()}


def seen(trap: list[Recorder]) -> list[tuple[str, str, dict[str, str], str]]:
    return [request for recorder in trap for request in recorder.requests]


def event(kind: str = "video.completed") -> dict[str, Any]:
    return {"id": "evt_test", "object": "event", "type": kind, "created_at": 1, "data": {"id": "video_x"}}


# --- the policy --------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_numeric_hosts_are_read_like_the_c_resolver(spelling: str) -> None:
    try:
        expected: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(spelling))
    except OSError:
        expected = None
    assert numeric_ipv4(spelling) == expected


@pytest.mark.parametrize("name", list(HOSTILE_URLS))
def test_hostile_webhook_urls_are_refused_by_the_policy(name: str) -> None:
    url = HOSTILE_URLS[name].replace(TRAP_PORT, "8999")
    with pytest.raises(TargetRefusedError) as refused:
        resolve_target(url)
    message = str(refused.value)
    assert "webhook_url" in message and len(message) < 600, message


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.9.8.7", "private (RFC 1918)"),
        ("169.254.169.254", "a cloud metadata address"),
        ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback"),
        ("64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254: a cloud metadata address"),
        ("2002:c0a8:101::1", "6to4 192.168.1.1: private (RFC 1918)"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo 127.0.0.1: loopback"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("fe80::1", "link-local"),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
        ("2002:808:808::1", None),  # 6to4 of a public address
    ],
)
def test_refusal_reasons_name_the_class(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


def test_public_addresses_are_accepted_and_kept_as_checked() -> None:
    target = resolve_target("https://user:pw@8.8.8.8:8443/hooks?x=1")
    assert target.addresses == (ipaddress.IPv4Address("8.8.8.8"),)
    assert target.host_header == "8.8.8.8:8443"
    assert target.extensions == {}  # an IP literal: no server name to send
    assert str(target.url_for(target.addresses[0])) == "https://user:pw@8.8.8.8:8443/hooks?x=1"
    v6 = resolve_target("http://[2606:4700:4700::1111]/h")
    assert str(v6.url_for(v6.addresses[0])) == "http://[2606:4700:4700::1111]/h"


def resolver_for(answers: dict[str, list[str]]) -> Callable[..., list[tuple[Any, ...]]]:
    """A getaddrinfo stand-in for names this machine cannot resolve (it has no DNS): the answer
    shape is getaddrinfo's, so resolve_target handles it exactly as a real answer."""

    def resolve(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[tuple[Any, ...]] = []
        for address in answers[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return resolve


def test_every_resolved_address_is_checked_and_https_keeps_its_name() -> None:
    resolver = resolver_for(
        {"mixed.example": ["93.184.216.34", "127.0.0.1"], "public.example": ["93.184.216.34", "2606:2800::1"]}
    )
    with pytest.raises(TargetRefusedError, match=r"mixed\.example \(127\.0\.0\.1\) is loopback"):
        resolve_target("https://mixed.example/hook", resolver=resolver)
    target = resolve_target("https://Public.Example/hook", resolver=resolver)
    assert [str(a) for a in target.addresses] == ["93.184.216.34", "2606:2800::1"]
    assert target.host_header == "public.example"
    assert target.extensions == {"sni_hostname": "public.example"}  # TLS name and cert check: the name
    assert str(target.url_for(target.addresses[1])) == "https://[2606:2800::1]/hook"
    with pytest.raises(TargetUnresolvedError, match="does not resolve"):
        resolve_target("https://gone.example/hook", resolver=resolver)


def test_the_allow_list() -> None:
    allow = AllowList.parse(["127.0.0.1", "Hooks.Internal.", "10.0.0.0/8", "[::1]", "169.254.0.0/16"])
    assert resolve_target("http://127.1:9/", allow).addresses == (ipaddress.IPv4Address("127.0.0.1"),)
    assert resolve_target("http://[::1]:9/", allow).addresses == (ipaddress.IPv6Address("::1"),)
    assert resolve_target("http://10.20.30.40/", allow).addresses
    resolver = resolver_for({"hooks.internal.": ["192.168.5.5"], "other.internal": ["192.168.5.5"]})
    assert resolve_target("http://hooks.internal./h", allow, resolver).addresses
    with pytest.raises(TargetRefusedError, match="private"):
        resolve_target("http://other.internal/h", allow, resolver)
    with pytest.raises(TargetRefusedError, match="loopback"):
        resolve_target("http://127.0.0.2/", allow)
    # A network around a metadata address does not open it; naming the address does.
    assert resolve_target("http://169.254.1.1/", allow).addresses
    with pytest.raises(TargetRefusedError, match="metadata"):
        resolve_target("http://169.254.169.254/", allow)
    with pytest.raises(TargetRefusedError, match="metadata"):
        resolve_target("http://hooks.internal/", allow, resolver_for({"hooks.internal": ["169.254.169.254"]}))
    assert resolve_target("http://169.254.169.254/", ["169.254.169.254"]).addresses

    for bad in ["http://hooks.internal/", "hooks.internal:8080", "*.internal", "10.0.0.0/33", "a b"]:
        with pytest.raises(ValueError, match="allow-list entry"):
            parse_allow_entry(bad)


def test_the_allow_list_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYV_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1, Hooks.Internal ,10.0.0.0/8")
    assert Settings().webhook_allowed_hosts == ["127.0.0.1/32", "hooks.internal", "10.0.0.0/8"]
    monkeypatch.setenv("HYV_WEBHOOK_ALLOWED_HOSTS", '["::1", "localhost"]')
    assert Settings().webhook_allowed_hosts == ["::1/128", "localhost"]
    monkeypatch.setenv("HYV_WEBHOOK_ALLOWED_HOSTS", "http://hooks.internal/")
    with pytest.raises(ValueError, match=r"allow-list entry 'http://hooks\.internal/'"):
        Settings()
    monkeypatch.delenv("HYV_WEBHOOK_ALLOWED_HOSTS")
    assert Settings().webhook_allowed_hosts == []


# --- at submit: the real API -------------------------------------------------------------------


def test_hostile_webhook_urls_are_refused_at_submit(
    trap: list[Recorder], make_api_settings: Callable[..., Any], serve_app: Callable[[Any], LiveServer]
) -> None:
    server = serve_app(make_api_settings(webhook_secret=SECRET))
    refused: dict[str, str] = {}
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        for name, url in hostile(trap).items():
            response = client.post("/v1/videos", json={**VALID, "webhook_url": url})
            assert response.status_code == 422, (name, url, response.status_code, response.text[:300])
            error = error_of(response)
            assert error["param"] == "webhook_url", (name, error)
            refused[name] = error["message"]
        assert client.get("/v1/videos").json()["data"] == []  # nothing was queued
        healthy = client.post("/v1/videos", json={**VALID, "webhook_url": "https://8.8.8.8/hook"})
        assert healthy.status_code == 201, healthy.text
    assert "127.0.0.1 is loopback" in refused["loopback"]
    assert "2130706433 (127.0.0.1) is loopback" in refused["decimal"]
    assert "169.254.169.254 is a cloud metadata address" in refused["metadata"]
    assert (
        "does not resolve" in refused["localhost-trailing-dot"]
        or "loopback" in refused["localhost-trailing-dot"]
    )
    assert "http(s)" in refused["file"]
    assert "pw" not in refused["credentials"] and "***@127.0.0.1" in refused["credentials"]
    assert seen(trap) == []


def test_allow_listed_loopback_is_accepted_at_submit(
    make_api_settings: Callable[..., Any], serve_app: Callable[[Any], LiveServer]
) -> None:
    server = serve_app(make_api_settings(webhook_secret=SECRET, webhook_allowed_hosts=["127.0.0.1"]))
    with httpx.Client(base_url=server.url, headers=auth(KEY_A), timeout=30) as client:
        ok = client.post("/v1/videos", json={**VALID, "webhook_url": "http://127.0.0.1:9/hook"})
        assert ok.status_code == 201, ok.text
        other = client.post("/v1/videos", json={**VALID, "webhook_url": "http://127.0.0.2:9/hook"})
        assert other.status_code == 422 and "loopback" in error_of(other)["message"]


# --- at delivery: what the worker runs ---------------------------------------------------------


@pytest.mark.parametrize("name", list(HOSTILE_URLS))
def test_hostile_webhook_urls_are_never_delivered(trap: list[Recorder], name: str) -> None:
    url = hostile(trap)[name]
    before = len(seen(trap))
    assert not webhooks.deliver(url, event(), SECRET, max_attempts=2, backoff_seconds=0.01, timeout_seconds=2)
    assert len(seen(trap)) == before == 0


def test_the_worker_call_refuses_a_loopback_webhook(trap: list[Recorder]) -> None:
    """deliver_for_job (the worker's one call when a job ends), with the server's settings."""
    settings = Settings(webhook_secret=SECRET)
    for url in [f"http://127.0.0.1:{trap[0].port}/hook", f"http://localhost:{trap[0].port}/hook"]:
        job = Job(model="hyv-tiny", request={"prompt": "x"}, prompt="x", webhook_url=url)
        thread = webhooks.deliver_for_job(job, settings, backoff_seconds=0.01)
        assert thread is not None
        thread.join(30)
        assert not thread.is_alive()
    assert seen(trap) == []


def test_delivery_resolves_again_and_connects_to_the_checked_address(trap: list[Recorder]) -> None:
    """DNS rebinding: the name was public when the job was submitted and points at loopback when the
    job ends; and a name only the checked resolver knows still reaches its allowed receiver (the
    connection goes to a checked address, the next one when the first refuses the connection; nobody
    resolves the name a second time)."""
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])

    def rebinding(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    url = f"http://rebind.test:{trap[0].port}/hook"
    assert resolve_target(url, resolver=rebinding).addresses == (ipaddress.IPv4Address("93.184.216.34"),)
    assert not webhooks.deliver(
        url, event(), SECRET, max_attempts=2, backoff_seconds=0.01, resolver=rebinding
    )
    assert seen(trap) == []

    receiver = Recorder()
    try:
        # Nothing listens on 127.0.0.2: the delivery moves on to the next checked address.
        pinned = resolver_for({"hooks.test": ["127.0.0.2", "127.0.0.1"]})
        hook = f"http://hooks.test:{receiver.port}/hook"
        assert webhooks.deliver(hook, event(), SECRET, allowed_hosts=["hooks.test"], resolver=pinned)
    finally:
        receiver.close()
    method, path, headers, body = receiver.requests[0]
    assert (method, path, headers["Host"]) == ("POST", "/hook", f"hooks.test:{receiver.port}")
    assert webhooks.verify(SECRET, headers, body)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(trap: list[Recorder], status: int) -> None:
    """An allow-listed receiver answering a redirect to the (not allowed) trap: one request to the
    receiver, none to the trap, no retry."""
    receiver = Recorder("127.0.0.1", status=status, Location=f"http://127.0.0.2:{trap[0].port}/internal")
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        assert not webhooks.deliver(
            url, event(), SECRET, max_attempts=3, backoff_seconds=0.01, allowed_hosts=["127.0.0.1/32"]
        )
    finally:
        receiver.close()
    assert len(receiver.requests) == 1
    assert seen(trap) == []


def test_allow_listed_receiver_gets_signed_deliveries() -> None:
    receiver = Recorder()
    try:
        settings = Settings(webhook_secret=SECRET, webhook_allowed_hosts=["localhost"])
        job = Job(
            model="hyv-tiny",
            request={"prompt": "x"},
            prompt="x",
            webhook_url=f"http://localhost:{receiver.port}/hooks/video",
        )
        thread = webhooks.deliver_for_job(job, settings, backoff_seconds=0.01)
        assert thread is not None
        thread.join(30)
        assert webhooks.deliver(
            f"http://127.0.0.1:{receiver.port}/direct", event(), SECRET, allowed_hosts=["127.0.0.0/8"]
        )
    finally:
        receiver.close()
    assert len(receiver.requests) == 2
    (m1, p1, h1, b1), (m2, p2, h2, b2) = receiver.requests
    assert (m1, p1, h1["Host"]) == ("POST", "/hooks/video", f"localhost:{receiver.port}")
    assert webhooks.verify(SECRET, h1, b1) and not webhooks.verify("another-secret", h1, b1)
    assert json.loads(b1)["data"]["id"] == job.id
    assert (m2, p2) == ("POST", "/direct") and webhooks.verify(SECRET, h2, b2)
