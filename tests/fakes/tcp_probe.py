"""A TCP listener on 127.0.0.1 that counts connections and closes them: proof that nothing connected."""

from __future__ import annotations

import asyncio


class ConnectionProbe:
    """`async with ConnectionProbe() as probe:` then point a URL at `probe.port`; `probe.connections` counts."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ConnectionProbe:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()
