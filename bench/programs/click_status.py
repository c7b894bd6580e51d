"""The floor for `agentctl status`: a minimal click program sending the same request.

Same socket, same framing (4-byte big-endian length + msgpack map), same
request; imports click, msgpack and the standard library only. Run as a
script (``python bench/programs/click_status.py``), like a console script.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

import click
import msgpack

HEADER = struct.Struct(">I")


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise click.ClickException("agentd closed the connection")
        data += chunk
    return data


@click.command()
@click.option("--socket", "socket_path", envvar="AGENTD_SOCKET", required=True)
@click.option("--json", "as_json", is_flag=True)
def main(socket_path: str, as_json: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path)
        body = msgpack.packb({"v": 1, "id": 1, "cmd": "status", "args": {}}, use_bin_type=True)
        sock.sendall(HEADER.pack(len(body)) + body)
        (length,) = HEADER.unpack(read_exactly(sock, HEADER.size))
        reply = msgpack.unpackb(read_exactly(sock, length), raw=False)
    result = reply["result"]
    click.echo(repr(result) if as_json else f"agentd {result['version']}: {result['state']}")
    sys.exit(0 if result["state"] in ("READY", "PROCESSING") else 1)


if __name__ == "__main__":
    main(prog_name=os.path.basename(sys.argv[0]))
