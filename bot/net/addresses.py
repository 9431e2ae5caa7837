"""Which IP addresses a result download may connect to: global unicast only.

The table is explicit rather than `ipaddress`'s `is_global`, whose answers changed between Python patch
releases, and it names each category so that the operator's log says why an address was refused. Forms
that embed an IPv4 address (6to4, NAT64) are judged by the address they embed; IPv4-mapped and
IPv4-compatible addresses are refused outright, since no public host resolves to them and a socket would
reach the embedded IPv4 address.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

_V4_REFUSED: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "this-network (unspecified)"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "reserved (documentation)"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("198.51.100.0/24", "reserved (documentation)"),
        ("203.0.113.0/24", "reserved (documentation)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (incl. broadcast)"),
    )
)

_V6_REFUSED: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), why)
    for net, why in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::/96", "IPv4-compatible"),
        ("::ffff:0:0:0/96", "IPv4-translated"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "reserved (discard)"),
        ("2001::/23", "reserved (IETF protocol assignments, incl. Teredo)"),
        ("2001:db8::/32", "reserved (documentation)"),
        ("3fff::/20", "reserved (documentation)"),
        ("5f00::/16", "reserved (segment routing)"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)

_NAT64 = IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = IPv6Network("2002::/16")
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")


def refusal_reason(address: str | IPv4Address | IPv6Address, *, allow_loopback: bool = False) -> str | None:
    """Why a download must not connect to `address`, or None when it is global unicast.

    `allow_loopback` lets 127.0.0.0/8 and ::1 through (tests, ALLOW_LOOPBACK_HTTP); nothing else. A string
    that is not an IP address (or carries a zone, `fe80::1%eth0`) is refused.
    """
    if isinstance(address, str):
        try:
            ip: IPv4Address | IPv6Address = ipaddress.ip_address(address)
        except ValueError:
            return "not an IP address"
    else:
        ip = address
    if isinstance(ip, IPv4Address):
        return _v4_reason(ip, allow_loopback)
    if ip.scope_id:
        return "scoped (link-local zone)"
    if ip == IPv6Address("::1"):
        return None if allow_loopback else "loopback"
    if ip in _NAT64:
        embedded = _v4_reason(IPv4Address(int(ip) & 0xFFFFFFFF), allow_loopback=False)
        return f"NAT64 of a {embedded} address" if embedded else None
    if ip in _SIX_TO_FOUR:
        assert ip.sixtofour is not None
        embedded = _v4_reason(ip.sixtofour, allow_loopback=False)
        return f"6to4 of a {embedded} address" if embedded else None
    for network, why in _V6_REFUSED:
        if ip in network:
            return why
    if ip not in _GLOBAL_UNICAST_V6:
        return "reserved (outside global unicast 2000::/3)"
    return None


def _v4_reason(ip: IPv4Address, allow_loopback: bool) -> str | None:
    for network, why in _V4_REFUSED:
        if ip in network:
            return None if allow_loopback and why == "loopback" else why
    return None
