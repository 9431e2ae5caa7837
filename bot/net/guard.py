"""Connect-time enforcement of `bot.net.addresses`, for the session that downloads result images.

Checking a URL's host before the request is not enough: a public-looking name can resolve to 10.0.0.5, or
resolve to a public address for the check and to 127.0.0.1 for the connection (DNS rebinding), and a
redirect can point anywhere. So the check sits where addresses are used, on every connection, redirects
included: the resolver drops every refused address of a name (aiohttp connects only to what the resolver
returned), and the socket factory refuses the address of every socket about to connect, which also covers
literal IPs (aiohttp does not resolve those).
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.net.addresses import refusal_reason


class RefusedAddressError(OSError):
    """A download would have connected to an address outside the public internet."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` (aiohttp's default), keeping only the addresses a download may reach."""

    def __init__(self, *, allow_loopback: bool, inner: AbstractResolver | None = None) -> None:
        self._allow_loopback = allow_loopback
        self._inner = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for result in results:
            reason = refusal_reason(result["host"], allow_loopback=self._allow_loopback)
            if reason is None:
                allowed.append(result)
            else:
                refused.append(f"{result['host']} is {reason}")
        if not allowed:
            raise RefusedAddressError(host, "resolves to " + (", ".join(refused) or "nothing"))
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(*, allow_loopback: bool) -> Any:
    """An aiohttp `socket_factory` that refuses to create a socket for a refused address."""

    def create(addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        host = str(sockaddr[0])
        scoped = family == socket.AF_INET6 and len(sockaddr) > 3 and sockaddr[3]
        reason = "scoped (link-local zone)" if scoped else refusal_reason(host, allow_loopback=allow_loopback)
        if reason is not None:
            raise RefusedAddressError(host, reason)
        return socket.socket(family, type_, proto)

    return create


def guarded_session(*, allow_loopback: bool, resolver: AbstractResolver | None = None) -> aiohttp.ClientSession:
    """A session that connects only to global unicast addresses (and loopback when `allow_loopback`).

    `trust_env=False`: a proxy from the environment would make the proxy, not this check, pick the address.
    `resolver` replaces the system's DNS (tests).
    """
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(allow_loopback=allow_loopback, inner=resolver),
        socket_factory=guarded_socket_factory(allow_loopback=allow_loopback),
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)


def refusal_of(exc: BaseException) -> RefusedAddressError | None:
    """The `RefusedAddressError` behind an aiohttp connection error, if that is what it was."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, RefusedAddressError):
        return exc.os_error
    return None
