"""The floor for server_throughput: a minimal asyncio Unix-socket server, same framing.

    python -m bench.floor_server --socket PATH --reply FILE.json [--uvloop]

Reads 4-byte big-endian length + msgpack frames with asyncio streams (as
agentd does), and answers every request with the same canned result (the
daemon's own `status` result, so reply sizes match). No validation, no
dispatch, no logging: what any asyncio server must pay at the least.
The issue's floor runs on the standard loop; with --uvloop it runs on the loop
agentd itself uses, so the two ratios separate the loop's gain from ours.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
from typing import Any

import msgpack

HEADER = struct.Struct(">I")


def make_handler(result: dict[str, Any]) -> Any:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                request = msgpack.unpackb(await reader.readexactly(length), raw=False)
                body = msgpack.packb({"v": 1, "id": request["id"], "ok": True, "result": result},
                                     use_bin_type=True)
                writer.write(HEADER.pack(len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return serve


async def serve(path: str, result: dict[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_unix_server(make_handler(result), path, backlog=1024)
    print(f"floor server listening on {path}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--reply", required=True, help="JSON file: the result to answer with")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as agentd does")
    args = parser.parse_args()
    with open(args.reply, encoding="utf-8") as handle:
        result = json.load(handle)
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.socket, result))
    else:
        asyncio.run(serve(args.socket, result))


if __name__ == "__main__":
    main()
