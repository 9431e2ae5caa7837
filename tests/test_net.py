"""Result downloads reach only the public internet: the address policy, and its enforcement at connect time
(names resolving to private addresses, literal IPs, redirects)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import SecretStr

from bot.errors import DownloadError
from bot.generation.gateway import GatewayClient
from bot.net import GuardedResolver, RefusedAddressError, guarded_session, refusal_reason
from tests.fakes.fake_gateway import FakeGateway, Reply, make_png
from tests.fakes.tcp_probe import ConnectionProbe

REFUSED = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("169.254.169.254", "link-local"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.251", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fe80::1%2", "scoped"),
    ("fec0::1", "site-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001::1", "Teredo"),
    ("100::1", "discard"),
    ("4000::1", "outside global unicast"),
    # IPv4 embedded in IPv6
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:10.0.0.1", "IPv4-mapped"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),
    ("::127.0.0.1", "IPv4-compatible"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of a link-local"),
    ("64:ff9b::7f00:1", "NAT64 of a loopback"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:c0a8:101::1", "6to4 of a private"),
    ("2002:7f00:1::1", "6to4 of a loopback"),
    # not addresses at all
    ("localhost", "not an IP address"),
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_every_non_global_address_is_refused_with_its_category(address: str, why: str) -> None:
    reason = refusal_reason(address)
    assert reason is not None and why in reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_global_unicast_is_allowed(address: str) -> None:
    assert refusal_reason(address) is None
    assert refusal_reason(address, allow_loopback=True) is None


def test_loopback_is_allowed_only_when_asked_and_nothing_else_with_it() -> None:
    assert refusal_reason("127.0.0.1", allow_loopback=True) is None
    assert refusal_reason("::1", allow_loopback=True) is None
    still_refused = [a for a, _ in REFUSED if a not in ("127.0.0.1", "127.8.9.10", "::1")]
    assert all(refusal_reason(a, allow_loopback=True) is not None for a in still_refused)


class MappedResolver(AbstractResolver):
    """DNS as an attacker controls it: every name resolves to the addresses given."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_resolver_keeps_only_allowed_addresses_of_a_name() -> None:
    resolver = GuardedResolver(allow_loopback=False, inner=MappedResolver("10.0.0.5", "8.8.8.8", "::ffff:10.0.0.5"))
    assert [r["host"] for r in await resolver.resolve("cdn.example.com", 443)] == ["8.8.8.8"]
    only_private = GuardedResolver(allow_loopback=True, inner=MappedResolver("10.0.0.5", "fd00::5"))
    with pytest.raises(RefusedAddressError) as info:
        await only_private.resolve("cdn.example.com", 443)
    assert "10.0.0.5 is private" in str(info.value) and "fd00::5 is unique-local" in str(info.value)


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as fake:
        yield fake


def client_for(downloads: aiohttp.ClientSession, gw: FakeGateway, *, allow_loopback_http: bool) -> GatewayClient:
    return GatewayClient(
        downloads, gw.base_url, SecretStr(gw.api_key), allow_loopback_http=allow_loopback_http,
        download_session=downloads,
    )


@pytest.mark.parametrize("allow_loopback", [False, True])
async def test_a_public_name_resolving_to_a_private_address_is_never_connected(
    gw: FakeGateway, allow_loopback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # DNS rebinding: the name looks public; its answer points into the operator's network (here the probe on
    # 127.0.0.1, refused unless loopback is allowed). With loopback allowed the probe sees the connection,
    # which shows that the refusal above is what kept it at zero.
    async with ConnectionProbe() as probe:
        resolver = MappedResolver("127.0.0.1")
        async with guarded_session(allow_loopback=allow_loopback, resolver=resolver) as downloads:
            client = client_for(downloads, gw, allow_loopback_http=allow_loopback)
            with pytest.raises(DownloadError) as info:
                await client.download(f"https://images.example.com:{probe.port}/a.png")
        assert resolver.lookups and set(resolver.lookups) == {"images.example.com"}
        if allow_loopback:
            assert probe.connections >= 1
        else:
            assert probe.connections == 0
            assert "refused" in str(info.value.detail) and getattr(info.value, "final", False)
            assert "images.example.com" in caplog.text and "127.0.0.1 is loopback" in caplog.text


@pytest.mark.parametrize("literal", ["127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_a_literal_private_address_is_refused_at_connect_time(gw: FakeGateway, literal: str) -> None:
    async with ConnectionProbe() as probe, guarded_session(allow_loopback=False) as downloads:
        client = client_for(downloads, gw, allow_loopback_http=False)
        with pytest.raises(DownloadError):
            await client.download(f"https://{literal}:{probe.port}/a.png")
        assert probe.connections == 0


async def test_a_redirect_to_a_private_address_is_refused(gw: FakeGateway) -> None:
    # The first hop is allowed (loopback, as in tests); the redirect aims at an IPv4-mapped loopback address,
    # refused even then. The probe listens there, so a followed redirect would show.
    gw.files["a.png"] = make_png(8, 8)
    async with ConnectionProbe() as probe, guarded_session(allow_loopback=True) as downloads:
        gw.enqueue(Reply(302, headers={"Location": f"https://[::ffff:127.0.0.1]:{probe.port}/meta"}), method="FILE")
        client = client_for(downloads, gw, allow_loopback_http=True)
        with pytest.raises(DownloadError) as info:
            await client.download(f"{gw.root_url}/files/a.png")
        assert "IPv4-mapped" in info.value.detail
        assert probe.connections == 0
        assert sum(r.kind == "FILE" for r in gw.requests) == 1  # refused is final: not retried
        assert (await client.download(f"{gw.root_url}/files/a.png")).width == 8  # the allowed hop still works
