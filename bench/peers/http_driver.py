"""Load driver for Restate: each caller POSTs ``/bench/<workflow>`` to the ingress and reads the result.

A minimal keep-alive HTTP/1.1 client on asyncio streams (one connection per caller) keeps the driver free of
third-party code. ``python -m bench.peers.http_driver --endpoint 127.0.0.1:8080 --concurrency 1 8 32``.
"""

from __future__ import annotations

import asyncio
import json
import os

from bench.load import STEPS, LoadResult, emit, parse_args, run_async


class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> bytes:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status = await self.reader.readline()
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            if k.lower() == "content-length":
                length = int(v)
            elif k.lower() == "transfer-encoding" and "chunked" in v:
                chunked = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                data += chunk[:-2]
        else:
            data = await self.reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"{status.decode().strip()}: {data[:200]!r}")
        return data


async def main() -> None:
    args = parse_args()
    host, _, port = args.endpoint.partition(":")
    steps = STEPS[args.workflow]
    conns: dict[int, Conn] = {}

    for c in args.concurrency:
        free = [Conn(host, int(port)) for _ in range(c)]

        async def one(i: int, free: list[Conn] = free) -> None:
            conn = free.pop()
            try:
                value = json.loads(await conn.post(f"/bench/{args.workflow}", str(i).encode()))
            except BaseException:
                conn.writer = None  # reconnect next time
                raise
            finally:
                free.append(conn)
            if value != i + steps:
                raise AssertionError(f"run {i}: got {value}, expected {i + steps}")

        if not conns:
            await one(-1)
            conns[0] = free[0]
        res = LoadResult("restate", args.workflow, steps, c, args.duration)
        await run_async(one, c, args.warmup, args.duration, res)
        emit(res)


if __name__ == "__main__":
    asyncio.run(main())
    os._exit(0)
