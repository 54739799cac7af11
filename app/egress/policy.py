"""Which addresses a tenant's `http_call` may connect to (DESIGN §9.1).

Only public unicast addresses, unless `MESHHOOK_EGRESS_ALLOW` opens an exception. The decision
is taken on the address the worker actually connects to (see `transport.py`), never on how the
URL spelled it, so `2130706433`, `127.1`, `0x7f.1` or `[::ffff:127.0.0.1]` change nothing.

IPv6 addresses that carry an IPv4 address (IPv4-mapped, NAT64 64:ff9b::/96, 6to4) are judged by
the address they carry; the deprecated IPv4-compatible range (::/96), local-use NAT64
(64:ff9b:1::/48) and Teredo (2001::/32) are denied outright. Everything outside 2000::/3 (the
only IPv6 range allocated for global unicast) is denied.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_V4_DENIED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",  # RFC 1918
        "100.64.0.0/10",  # CGNAT shared space (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, incl. cloud metadata 169.254.169.254
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",  # documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. broadcast 255.255.255.255
    )
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_DENIED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and the deprecated IPv4-compatible form
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments: Teredo 2001::/32, benchmarking, ORCHID
        "2001:db8::/32",
        "3fff::/20",  # documentation
        "fc00::/7",  # unique local
        "fe80::/10",
        "fec0::/10",  # link-local, old site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, when it is a translation of one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def is_public_unicast(address: IPAddress) -> bool:
    """True only for an address any host on the Internet could reach: never loopback, private,
    link-local, CGNAT, multicast, broadcast, reserved, documentation or benchmark space, nor an
    IPv6 form that embeds one of those."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False  # zone-scoped addresses are link-local by construction
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public_unicast(inner)
        if address not in _V6_GLOBAL_UNICAST or any(address in n for n in _V6_DENIED):
            return False
        return True
    if any(address in n for n in _V4_DENIED):
        return False
    return address.is_global  # belt and braces: the stdlib's own registry of special ranges


@dataclass(frozen=True)
class AllowEntry:
    """One exception: a network, an exact host name or a `*.suffix`, optionally one port."""

    network: IPNetwork | None = None
    host: str | None = None
    suffix: str | None = None  # ".corp.example" for "*.corp.example"
    port: int | None = None

    def matches(self, host: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            candidates: list[IPAddress] = [address]
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                candidates.append(address.ipv4_mapped)
            return any(c.version == self.network.version and c in self.network for c in candidates)
        name = normalize_host(host)
        if self.host is not None:
            return name == self.host
        return self.suffix is not None and name.endswith(self.suffix) and len(name) > len(self.suffix)


def normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in egress allow entry {entry!r}")
    return int(text)


def parse_entry(entry: str) -> AllowEntry:
    """`10.0.0.0/8`, `127.0.0.1:9999`, `[::1]:8080`, `::1`, `api.corp.example`, `*.corp.example:443`."""
    text = entry.strip()
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed [ in egress allow entry {entry!r}")
        rest = text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected text after ] in egress allow entry {entry!r}")
            port = _parse_port(rest[1:], entry)
        text = text[1:end]
    elif text.count(":") == 1:
        text, port_text = text.split(":")
        port = _parse_port(port_text, entry)
    if not text:
        raise ValueError(f"empty egress allow entry {entry!r}")
    try:
        return AllowEntry(network=ipaddress.ip_network(text, strict=False), port=port)
    except ValueError:
        pass
    if "/" in text:
        raise ValueError(f"bad network in egress allow entry {entry!r}")
    name = normalize_host(text)
    label_ok = all(part and all(c.isalnum() or c in "-_" for c in part) for part in name.split("."))
    if name.startswith("*."):
        suffix = name[1:]
        if "*" in suffix or not all(
            part and all(c.isalnum() or c in "-_" for c in part) for part in suffix[1:].split(".")
        ):
            raise ValueError(f"bad host pattern in egress allow entry {entry!r}")
        return AllowEntry(suffix=suffix, port=port)
    if not label_ok:
        raise ValueError(f"bad host in egress allow entry {entry!r}")
    return AllowEntry(host=name, port=port)


@dataclass(frozen=True)
class EgressPolicy:
    allow: tuple[AllowEntry, ...] = ()

    @classmethod
    def from_setting(cls, spec: str | None) -> EgressPolicy:
        """Parse `MESHHOOK_EGRESS_ALLOW` (comma list); ValueError names the first bad entry."""
        entries = [e for e in (spec or "").split(",") if e.strip()]
        return cls(tuple(parse_entry(e) for e in entries))

    def allows(self, host: str, address: IPAddress, port: int) -> bool:
        """May a call to `host` (as the URL names it) connect to `address`:`port`?"""
        if is_public_unicast(address):
            return True
        return any(e.matches(host, address, port) for e in self.allow)
