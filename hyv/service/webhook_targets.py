"""Where a webhook may go: the address policy that keeps `webhook_url` from reaching the server's
own network (SSRF).

A webhook target is refused when any address its host stands for is loopback, private (RFC 1918,
IPv6 unique-local), shared (CGNAT), link-local, multicast, reserved, unspecified, documentation or
benchmarking space, or a cloud metadata address, unless the operator's allow-list
(`HYV_WEBHOOK_ALLOWED_HOSTS`) names it. IPv6 forms that carry an IPv4 address (IPv4-mapped
`::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo) are judged by that address too.

Numeric hosts are read the way the C resolver reads them (inet_aton): `127.1`, `2130706433`,
`0x7f000001` and `0177.0.0.1` are all 127.0.0.1. Names are resolved with getaddrinfo and every
address is checked; the delivery then connects to one of the checked addresses (`Target.url_for`)
with the original Host header and TLS server name, so the name is never resolved a second time by
someone else (no DNS-rebinding window). Redirects are never followed (hyv.service.webhooks).

    resolve_target(url, allowed)   the checked Target, or TargetRefusedError naming why
    AllowList.parse(entries)       host names and IP addresses / CIDR networks the operator allows
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., list[tuple[Any, ...]]]

MAX_URL_LENGTH = 2048

# Where cloud providers serve instance metadata and credentials. An allow-list network that
# merely contains one of these does not open it: only an entry naming the address itself does.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.169.253",  # AWS DNS
        "fd00:ec2::254",  # AWS over IPv6
        "fd00:ec2::253",
        "100.100.100.200",  # Alibaba Cloud
    )
)

# Special-purpose networks (IANA registries), named; ipaddress's own flags are checked as well
# (refusal_reason), but their tables differ between Python patch releases, this one does not.
_REFUSED_V4: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this network' (0.0.0.0/8, reaches the local host)"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4, broadcast)"),
)
_REFUSED_V6: tuple[tuple[str, str], ...] = (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique-local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
_REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why) for net, why in _REFUSED_V4 + _REFUSED_V6
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# What a host name may contain once IDNA-encoded (underscores occur in real DNS names).
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?$")


class TargetRefusedError(ValueError):
    """The URL may not receive webhooks; the message names the URL and why."""


class TargetUnresolvedError(TargetRefusedError):
    """The URL's host name did not resolve (now): refused at submit, retried at delivery."""


_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _inet_aton_part(text: str) -> int | None:
    """One dotted part as inet_aton reads it: 0x.. hex, 0.. octal, else decimal; None if none."""
    if text[:2] in ("0x", "0X"):
        digits, base = text[2:], 16
    elif len(text) > 1 and text[0] == "0":
        digits, base = text[1:], 8
    else:
        digits, base = text, 10
    if not digits or not all(c in _DIGITS[base] for c in digits):
        return None
    return int(digits, base)


def numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host spells the way the C resolver reads it (inet_aton): one to
    four dotted parts in decimal, octal (leading 0) or hex (0x); the last part fills the bytes left
    (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`, `0x7f.0.0.1` are 127.0.0.1). None when the
    host is not such a number (then it is a name)."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or any(not p for p in parts):
        return None
    values = [_inet_aton_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    numbers = [v for v in values if v is not None]
    *head, last = numbers
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, byte in enumerate(head):
        value |= byte << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def literal_address(host: str) -> IPAddress | None:
    """The address a host is when it is an IP literal in any spelling (IPv6 without brackets, with or
    without a zone); None for a name."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.replace("%25", "%", 1))
        except ValueError:
            return None
    return numeric_ipv4(host)


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries and in what form (mapped, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]  # (server, client): the client is the one reached
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why a webhook may not go to this address (None: a public address, allowed)."""
    address = _without_zone(address)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is not None:
            form, inner = embedded
            inner_reason = refusal_reason(inner)
            if inner_reason is not None:
                return f"{form} {inner}: {inner_reason}"
    for network, why in _REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return why
    flags = (
        ("loopback", address.is_loopback),
        ("private", address.is_private),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("unspecified", address.is_unspecified),
        ("not a global address", not address.is_global),
    )
    return next((name for name, flag in flags if flag), None)


def _without_zone(address: IPAddress) -> IPAddress:
    """fe80::1%eth0 -> fe80::1: the zone says which interface, the class is what counts here."""
    return ipaddress.IPv6Address(int(address)) if isinstance(address, ipaddress.IPv6Address) else address


def normalize_host(host: str) -> str:
    """A host name as compared with the allow-list: lower case, no trailing dot."""
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True)
class AllowList:
    """What the operator lets webhooks reach although the policy refuses it: host names (exact, case
    and trailing dot ignored) and IP addresses or CIDR networks (any spelling of a numeric host)."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            kind, value = parse_allow_entry(entry)
            if kind == "host":
                hosts.add(str(value))
            else:
                networks.append(ipaddress.ip_network(value, strict=False))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return normalize_host(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        plain = _without_zone(address)
        if plain in METADATA_ADDRESSES:  # only an entry naming the address itself opens it
            return any(n.num_addresses == 1 and n.network_address == plain for n in self.networks)
        return any(plain.version == n.version and plain in n for n in self.networks)


def parse_allow_entry(entry: str) -> tuple[str, str]:
    """("network", "10.1.2.0/24") or ("host", "hooks.internal") for one allow-list entry; ValueError
    naming the entry when it is neither (a URL, a port, a wildcard...)."""
    text = entry.strip()
    address_text, _, prefix = text.partition("/")
    address = literal_address(address_text.strip("[]"))
    if address is not None:
        try:
            network = ipaddress.ip_network(f"{address}/{prefix}" if prefix else str(address), strict=False)
        except ValueError:
            raise ValueError(f"webhook allow-list entry {entry!r} is not a valid network") from None
        return "network", str(network)
    host = normalize_host(text)
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"webhook allow-list entry {entry!r} is not a valid host name") from None
    if not _HOST_NAME.match(ascii_host):
        raise ValueError(
            f"webhook allow-list entry {entry!r} is neither a host name nor an IP address or network "
            "(no scheme, port, path or wildcard)"
        )
    return "host", ascii_host


@dataclass(frozen=True)
class Target:
    """A webhook URL whose host was resolved and checked: connect only to `addresses`."""

    url: httpx.URL
    host: str  # the URL's host as sent in Host / TLS SNI (IDNA-encoded), or the literal
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        """What Host says: the URL's host and port as written (without credentials)."""
        return self.url.netloc.decode("ascii")

    @property
    def extensions(self) -> dict[str, Any]:
        """httpx request extensions: for https, the TLS server name (and the name the certificate is
        checked against) is the URL's host, not the address connected to."""
        if self.url.scheme == "https" and literal_address(self.host) is None:
            return {"sni_hostname": self.host}
        return {}

    def url_for(self, address: IPAddress) -> httpx.URL:
        """The URL with its host replaced by one checked address (the connection goes there)."""
        return self.url.copy_with(host=str(address))


def parse_webhook_url(url: str) -> httpx.URL:
    """The URL as httpx reads it (the same parser sends it), if it is an absolute http(s) URL with a
    host; TargetRefusedError naming the problem otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefusedError(f"webhook_url is {len(url)} characters, over the limit of {MAX_URL_LENGTH}")
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" or c == "\\" for c in url):
        raise TargetRefusedError(
            f"webhook_url {_shown(url)!r} contains whitespace, control characters or a backslash"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise TargetRefusedError(f"webhook_url {_shown(url)!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise TargetRefusedError(f"webhook_url must be an absolute http(s) URL, got {_shown(url)!r}")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise TargetRefusedError(f"webhook_url {_shown(url)!r} has an invalid port {parsed.port}")
    return parsed


def _shown(url: str) -> str:
    """The URL for messages and logs: credentials in it replaced by ***."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@]*@", r"\1***@", url)


def resolve_target(
    url: str, allowed: AllowList | Iterable[str] = (), resolver: Resolver = socket.getaddrinfo
) -> Target:
    """Parse the URL, resolve its host now (numeric spellings without DNS) and check every address.
    TargetRefusedError (a ValueError) names the URL and why; TargetUnresolvedError when the name does not
    resolve."""
    allow = allowed if isinstance(allowed, AllowList) else AllowList.parse(allowed)
    parsed = parse_webhook_url(url)
    host = parsed.raw_host.decode("ascii").lower()
    address = literal_address(host)
    if address is not None:
        addresses: tuple[IPAddress, ...] = (address,)
    else:
        if not _HOST_NAME.match(host):
            raise TargetRefusedError(f"webhook_url {_shown(url)!r}: {host!r} is not a valid host name")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            infos = resolver(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise TargetUnresolvedError(
                f"webhook_url {_shown(url)!r}: host {host!r} does not resolve ({exc})"
            ) from None
        found = [ipaddress.ip_address(str(info[4][0])) for info in infos]
        addresses = tuple(dict.fromkeys(found))
        if not addresses:
            raise TargetUnresolvedError(f"webhook_url {_shown(url)!r}: host {host!r} resolves to no address")
    host_allowed = allow.allows_host(host)
    for candidate in addresses:
        reason = refusal_reason(candidate)
        if reason is None or allow.allows_address(candidate):
            continue
        if host_allowed and _without_zone(candidate) not in METADATA_ADDRESSES:
            continue
        where = host if str(candidate) == host else f"{host} ({candidate})"
        raise TargetRefusedError(
            f"webhook_url {_shown(url)!r} is refused: {where} is {reason}; webhooks go to public addresses "
            "only, unless HYV_WEBHOOK_ALLOWED_HOSTS names the host or address"
        )
    return Target(parsed, host, addresses)
